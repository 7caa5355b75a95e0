"""When to prune how much.

- "oneshot": prune to the target at once, then fine-tune.
- "iterative": ``steps`` rounds of prune-then-fine-tune; each round removes the same fraction of the
  weights still there, so round ``i`` of ``n`` reaches :math:`1 - (1 - s)^{i/n}` (Han et al. 2015;
  Frankle & Carbin 2019).
- "agp": gradual pruning during one fine-tuning run, by the cubic schedule of `agp` (Zhu & Gupta 2017),
  applied by the `AGP` subscriber to the loop's events.
- "auto" (`kdnb.prune`'s default, resolved by `resolve`): "agp" for single weights with fine-tuning at
  ``GRADUAL_FROM`` sparsity and above, "oneshot" otherwise.

bench/prune_sparsity.py (LeNet-300-100 on digits, 20 fine-tuning epochs, 3 seeds, dense 0.9833): at 99 %
one-shot pruning then fine-tuning reaches 0.874 (LAMP, re-solved), agp with 10 updates 0.970 and with 30
updates 0.981 (hessian, Adam lr 1e-2); below 95 % a one-shot cut re-solved on the data keeps the accuracy too.
Re-solving the kept weights at every gradual step depends on the fine-tuning budget: with 20 epochs it costs
accuracy (hessian agp at 99 %, 6 seeds: 0.966 re-solved vs 0.976 masked), with 3 epochs (notebook 02's MLP
64-256-256 at 99 %, lr 1e-3) it is what makes gradual pruning work (0.969 re-solved vs 0.53 masked; LAMP 0.91
vs 0.40). `RESOLVE_BELOW` sits between the two measured budgets; the crossover itself is not measured.
"""
from __future__ import annotations

from collections.abc import Callable

from kdnb.engine.events import Callback, RunState

SCHEDULES = ("auto", "oneshot", "iterative", "agp")
DEFAULT_STEPS = {"oneshot": 1, "iterative": 3, "agp": 30}
GRADUAL_FROM = 0.95  # "auto" prunes gradually from this sparsity on (with fine-tuning)
RESOLVE_BELOW = 10  # fine-tuning epochs under which a gradual schedule re-solves the kept weights by default


def resolve(schedule: str, sparsity: float, finetune: int, structured: bool, pattern: str | None) -> str:
    """The schedule "auto" stands for: "agp" when single weights are pruned to ``GRADUAL_FROM`` or more with
    fine-tuning (no N:M pattern), else "oneshot"; any other name is returned as given."""
    if schedule != "auto":
        return schedule
    gradual = finetune >= 1 and not structured and pattern is None and sparsity >= GRADUAL_FROM
    return "agp" if gradual else "oneshot"


def iterative_targets(sparsity: float, steps: int) -> list[float]:
    r"""Sparsity after each of ``steps`` rounds: :math:`s_i = 1 - (1 - s)^{i/n}`."""
    return [1.0 - (1.0 - sparsity) ** (i / steps) for i in range(1, steps + 1)]


def agp(t: int, final: float, initial: float, t0: int, n: int, dt: int) -> float:
    r"""Automated gradual pruning, Zhu & Gupta 2017, "To prune, or not to prune":

    .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,
       \quad t \in \{t_0, t_0 + \Delta t, \dots, t_0 + n\Delta t\}

    Fast pruning early, while there are many redundant weights; slow near the end.
    """
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


class AGP(Callback):
    """Subscriber that prunes ``steps`` times during a run following `agp`, then leaves the last quarter of
    the run (``1 - ramp``) to fine-tune at the final sparsity. ``update(s)`` re-scores and re-masks the model
    at sparsity ``s``; the current sparsity is published as ``state.extra["sparsity"]`` (logged per epoch).
    A run with fewer optimizer steps in its ramp than ``steps`` prunes once per step (``updates``), so the
    final sparsity is always reached."""

    def __init__(self, final: float, steps: int, update: Callable[[float], float], initial: float = 0.0,
                 ramp: float = 0.75):
        self.final, self.steps, self.update, self.initial, self.ramp = final, steps, update, initial, ramp
        self.dt, self.updates = 1, steps

    def on_run_start(self, state: RunState) -> None:
        slots = int(self.ramp * state.epochs * state.steps_per_epoch)  # 0: the loader's length is unknown
        self.updates = min(self.steps, slots) if slots else self.steps
        self.dt = max(1, slots // self.updates) if slots else 1
        state.extra["sparsity"] = self.initial

    def on_step_end(self, state: RunState) -> None:
        if state.step % self.dt == 0 and state.step <= self.updates * self.dt:
            target = agp(state.step, self.final, self.initial, 0, self.updates, self.dt)
            state.extra["sparsity"] = self.update(target)
