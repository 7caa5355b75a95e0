"""When to prune how much.

- "oneshot": prune to the target at once, then fine-tune.
- "iterative": ``steps`` rounds of prune-then-fine-tune; each round removes the same fraction of the
  weights still there, so round ``i`` of ``n`` reaches :math:`1 - (1 - s)^{i/n}` (Han et al. 2015;
  Frankle & Carbin 2019).
- "agp": gradual pruning during one fine-tuning run, by the cubic schedule of `agp` (Zhu & Gupta 2017),
  applied by the `AGP` subscriber to the loop's events.
- "auto" (`kdnb.prune`'s default, resolved by `resolve`): "agp" for single weights with fine-tuning at
  ``GRADUAL_FROM`` sparsity and above, "oneshot" otherwise.

bench/prune_sparsity.py (LeNet-300-100 on digits, 20 fine-tuning epochs): at 99 % agp keeps the accuracy where
one-shot pruning then fine-tuning does not, and more updates do better; below 95 % a one-shot cut re-solved on the
data keeps the accuracy too.

Whether a gradual step re-solves the kept weights (by default, `resolves`) depends on the training left after it:
a step followed by fewer than `RESOLVE_BELOW` epochs re-solves, the earlier ones only mask. Measured with hessian
agp by bench/prune_sparsity.py's harness (LeNet-300-100 at 99 %) and bench/prune_resolve.py (LeNet and cnn_bn):
masks only fall far behind at prune's default lr 1e-3, re-solving every step costs accuracy at lr 1e-2, and
re-solving the last steps does well at both; on a conv net re-solving beats masks, by most with short fine-tuning.
With 3 epochs (notebook 02) re-solving is what makes gradual pruning work. The numbers: docs/benchmarks.md.

An agp run of 10 epochs or more, of a model without normalisation layers, fine-tunes with decoupled weight decay by
default (`kdnb.engine.prune.schedule.decay`, measured by bench/prune_sparsity.py).
"""
from __future__ import annotations

from collections.abc import Callable

from kdnb.engine.events import Callback, RunState

SCHEDULES = ("auto", "oneshot", "iterative", "agp")
DEFAULT_STEPS = {"oneshot": 1, "iterative": 3, "agp": 30}
GRADUAL_FROM = 0.95  # "auto" prunes gradually from this sparsity on (with fine-tuning)
RESOLVE_BELOW = 10  # a gradual step followed by fewer fine-tuning epochs re-solves the kept weights by default
RAMP = 0.75  # the part of an agp run in which it prunes; the rest fine-tunes at the final sparsity


def resolve(schedule: str, sparsity: float, finetune: int, structured: bool, pattern: str | None) -> str:
    """The schedule "auto" stands for: "agp" when single weights are pruned to ``GRADUAL_FROM`` or more with
    fine-tuning (no N:M pattern), else "oneshot"; any other name is returned as given."""
    if schedule != "auto":
        return schedule
    gradual = finetune >= 1 and not structured and pattern is None and sparsity >= GRADUAL_FROM
    return "agp" if gradual else "oneshot"


def resolves(epochs_left: float) -> bool:
    """Whether a gradual step followed by ``epochs_left`` epochs of fine-tuning re-solves the kept weights by
    default: the training left cannot recover what masking alone loses (see the measurements above)."""
    return epochs_left < RESOLVE_BELOW


def epochs_left(schedule: str, finetune: int, steps: int, step: int) -> float:
    """Fine-tuning epochs that follow pruning step ``step`` (1-based) of ``steps``: "iterative" fine-tunes
    ``finetune`` epochs after each round, "agp" prunes in the first `RAMP` of its ``finetune`` epochs."""
    if schedule == "iterative":
        return float((steps - step + 1) * finetune)
    if schedule == "agp":
        return finetune * (1.0 - RAMP * step / steps)
    return float(finetune)


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
    the run (``1 - ramp``) to fine-tune at the final sparsity. ``update(s, k, n)`` re-scores and re-masks the
    model at sparsity ``s`` as update ``k`` of ``n``; the current sparsity is published as
    ``state.extra["sparsity"]`` (logged per epoch).
    A run with fewer optimizer steps in its ramp than ``steps`` prunes once per step (``updates``), so the
    final sparsity is always reached."""

    def __init__(self, final: float, steps: int, update: Callable[[float, int, int], float], initial: float = 0.0,
                 ramp: float = RAMP):
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
            state.extra["sparsity"] = self.update(target, state.step // self.dt, self.updates)
