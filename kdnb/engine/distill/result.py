"""What `distill` returns: the distilled student, its history, the scratch baseline, and the verdict."""
from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdnb.engine.results import Result
from kdnb.engine.history import History
from kdnb.engine.table import Table


@dataclass
class SeedRun:
    """One seed of ``distill(seeds=...)``: the final val accuracies and gap closures of that run."""

    seed: int
    accuracy: dict[str, float | None]
    gap_closure: float | None
    pseudo_gap_closure: float | None

    @classmethod
    def of(cls, seed: int, result: DistillResult) -> SeedRun:
        return cls(seed, result.accuracy, result.gap_closure, result.closure("pseudo"))


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample std, minimum) of ``values``; std 0 for a single value."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), min(values)


@dataclass(repr=False)
class DistillResult(Result):
    """The outcome of `kdnb.distill`.

    Attributes:
        student: the distilled student (a trained copy; the user's student is untouched).
        history: its run: per-step "loss" and each term ("ce", "kd", ...), per-epoch "val_acc",
            "val_agreement" (top-1 agreement with the teacher), "train_*" means, "time_s".
        teacher: the user's teacher, as given (never trained).
        baseline: with ``baseline=True``, the same student trained from the same initial weights
            on hard labels only, with the same budget; else None.
        baseline_history: its run, with the same per-epoch records.
        baselines, baseline_histories: every baseline trained, by name ("scratch", "pseudo": the
            teacher's top-1 class instead of its soft labels, on the same inputs and budget).
        method, settings: the method and its temperature, alpha, beta, epochs, baseline_epochs
            (the scratch run's epochs over the labelled data: as many steps as the distillation),
            steps, scheduler and augment (the budget and the views the summary states).
        seed_runs: with ``seeds=``, one `SeedRun` per seed (the models are the first seed's).
        soft_labels: where the soft labels came from ("cached soft labels" or "live teacher (why)").
        teacher_accuracy: the teacher's val accuracy (None without val).
    """

    student: nn.Module
    history: History
    teacher: nn.Module
    baseline: nn.Module | None
    baseline_history: History | None
    method: str
    settings: dict[str, Any]
    soft_labels: str
    teacher_accuracy: float | None
    val: Iterable | None = field(default=None)
    data: Iterable | None = field(default=None)
    baselines: dict[str, nn.Module] = field(default_factory=dict)
    baseline_histories: dict[str, History] = field(default_factory=dict)
    seed_runs: list[SeedRun] = field(default_factory=list)
    stopped: str | None = None  # with seeds=: where the stop button ended the seeds
    _comparison: Any = field(default=None, compare=False)  # see Result.comparison
    measure_with: Callable[..., Any] | None = field(default=None, compare=False)  # see Result.comparison

    @property
    def accuracy(self) -> dict[str, float | None]:
        """Final val accuracy of "teacher", "scratch", "pseudo" (with that baseline) and "distilled"
        (None where not measured)."""
        scratch = self.baseline_history.last("val_acc") if self.baseline_history else None
        acc = {"teacher": self.teacher_accuracy, "scratch": scratch}
        if "pseudo" in self.baseline_histories:
            acc["pseudo"] = self.baseline_histories["pseudo"].last("val_acc")
        acc["distilled"] = self.history.last("val_acc")
        return acc

    @property
    def agreement(self) -> dict[str, float | None]:
        """Final top-1 agreement with the teacher on val, of "scratch" and "distilled"."""
        agree = {name: run.last("val_agreement") for name, run in self.baseline_histories.items()}
        scratch = self.baseline_history.last("val_agreement") if self.baseline_history else None
        return {**agree, "scratch": scratch, "distilled": self.history.last("val_agreement")}

    @property
    def gap_closure(self) -> float | None:
        """(distilled - scratch) / (teacher - scratch) in val accuracy: 1 = the student reached the
        teacher, 0 = no better than from scratch, < 0 = worse. None without a baseline, or when the
        scratch student already matches or beats the teacher (no gap to close), or when a baseline it needs
        was interrupted."""
        return self.closure("distilled")

    def closure(self, model: str = "distilled") -> float | None:
        """The gap closure of ``model`` ("distilled" or "pseudo") over the scratch student (see `gap_closure`)."""
        acc = self.accuracy
        teacher, scratch, reached = acc["teacher"], acc["scratch"], acc.get(model)
        cut = [run for name, run in self.baseline_histories.items() if name in ("scratch", model)]
        if any(run.status == "interrupted" for run in cut):  # a half-trained baseline is no yardstick
            return None
        if None in (teacher, scratch, reached) or teacher <= scratch:
            return None
        return (reached - scratch) / (teacher - scratch)

    def seed_spread(self) -> dict[str, tuple[float, float, float]]:
        """With ``seeds=``: (mean, std, min) over the seeds of the gap closure ("distilled", "pseudo")
        and of the accuracy gains in points ("soft - scratch", "soft - pseudo") where measured."""
        out: dict[str, tuple[float, float, float]] = {}
        for name, values in (("distilled", [r.gap_closure for r in self.seed_runs]),
                             ("pseudo", [r.pseudo_gap_closure for r in self.seed_runs]),
                             ("soft - scratch", [_gain(r.accuracy, "scratch") for r in self.seed_runs]),
                             ("soft - pseudo", [_gain(r.accuracy, "pseudo") for r in self.seed_runs])):
            if values and None not in values:
                out[name] = spread(values)
        return out

    def _headline(self) -> str:
        s = self.settings
        weights = f"alpha={s['alpha']:g}" + (f", beta={s['beta']:g}" if self.method != "kd" else "")
        return (f"DistillResult: method={self.method!r}, T={s['temperature']:g}, {weights}, epochs={s['epochs']}, "
                f"{self.soft_labels}, status={self.history.status!r}")

    def _verdict(self) -> str:
        closure, acc = self.gap_closure, self.accuracy
        cut = {name: run for name, run in self.baseline_histories.items() if run.status == "interrupted"}
        if "scratch" in cut:  # a half-trained scratch student would inflate the gap closure
            return (f"gap closure: none, the scratch baseline was interrupted after {cut['scratch'].num_epochs} of "
                    f"{self.settings['baseline_epochs']} epochs (the distilled student ran to the end)")
        if closure is not None and len(self.seed_runs) > 1:
            return self._seed_verdict()
        if closure is not None:
            pseudo = self.closure("pseudo") if "pseudo" not in cut else None
            versus = f"; hard pseudo-labels {100 * pseudo:.1f}%" if pseudo is not None else ""
            versus += "; the pseudo-label baseline was interrupted" if "pseudo" in cut else ""
            return (f"gap closure {100 * closure:.1f}% = (distilled - scratch) / (teacher - scratch), "
                    f"val accuracy{versus}")
        if self.baseline_history is None and self.history.status != "completed":  # stopped before any baseline
            asked = self.settings.get("baselines", ("scratch",))
            why = (f"before the {' and '.join(asked)} baseline{'s' * (len(asked) > 1)} could run" if asked else
                   "(no baseline was asked for)")
            return (f"gap closure: none, the run was {self.history.status} after {self.history.num_epochs} of "
                    f"{self.settings['epochs']} epochs, {why}")
        if self.baseline_history is None:
            return "gap closure: run with baseline=True (and val=) to compare with a student trained from scratch"
        if None in acc.values():
            return "gap closure: needs val= (labelled) to compare accuracies"
        return (f"gap closure: none to close, the scratch student ({100 * acc['scratch']:.1f}%) already matches "
                f"or beats the teacher ({100 * acc['teacher']:.1f}%)")

    def _seed_verdict(self) -> str:
        """Gap closure over the seeds, mean +- std (min), and whether the gains stand out of the noise."""
        found = self.seed_spread()
        seeds = ", ".join(str(r.seed) for r in self.seed_runs)
        mean, std, low = found["distilled"]
        text = f"gap closure over seeds {seeds}: {100 * mean:.1f} +- {100 * std:.1f}% (min {100 * low:.1f}%)"
        for name, words in (("soft - scratch", "distilled vs scratch"), ("soft - pseudo", "soft vs hard labels")):
            if name in found:
                gain, gain_std, _ = found[name]
                noise = " -- within noise" if abs(gain) <= gain_std else ""
                text += f"; {words} {100 * gain:+.1f} +- {100 * gain_std:.1f} pp{noise}"
        return text

    def _scratch_note(self) -> list[str]:
        """The budget (epochs, steps, schedule, augmentation), and the scratch run's epochs when they
        differ (a transfer set lengthens distillation)."""
        s = self.settings
        notes = [self.stopped] if self.stopped else []
        if "steps" in s:
            views = f", {s['augment']}" if s.get("augment") else ""
            fair = "; every baseline: the same steps, optimizer, schedule and views" if self.baselines else ""
            notes.append(f"budget: {s['epochs']} epochs = {s['steps']:,} steps, {s['scheduler']}{views}{fair}")
        if self.baseline_history is not None and s["baseline_epochs"] != s["epochs"]:
            notes.append(f"scratch: {s['baseline_epochs']} epochs over the labelled data, the same number of steps")
        return notes

    def overview(self) -> Table:
        """Val accuracy and agreement with the teacher, per model, from the runs (no new measurement)."""
        acc, agree = self.accuracy, self.agreement
        rows = [["teacher", acc["teacher"], 1.0 if acc["teacher"] is not None else None]]
        if self.baseline_history is not None:
            rows.append(["scratch student", acc["scratch"], agree["scratch"]])
        if "pseudo" in acc:
            rows.append(["pseudo-label student", acc["pseudo"], agree["pseudo"]])
        rows.append(["distilled student", acc["distilled"], agree["distilled"]])
        notes = [self._verdict(), *self._scratch_note()] + ([self.history.message] if self.history.message else [])
        return Table(["model", "val accuracy", "agreement"], rows, title=self._headline(), notes=notes)

    def _compared(self) -> tuple[dict[str, nn.Module], Any]:
        models = {"teacher": self.teacher}
        if self.baseline is not None:
            models["scratch"] = self.baseline
        if "pseudo" in self.baselines:
            models["pseudo"] = self.baselines["pseudo"]
        models["distilled"] = self.student
        return models, self.val if self.val is not None else self.data

    def _home(self) -> nn.Module:
        return self.student

    def summary(self, **measure_kwargs: Any) -> Table:
        """Teacher / scratch / distilled side by side: accuracy, agreement, params, MACs, bytes; latency
        on the last line (the only number that varies run to run). Measured once, by `comparison`."""
        comparison = self.comparison(**measure_kwargs)
        agree = self.agreement
        rows = []
        for row in comparison.rows:
            agreement = 1.0 if row["model"] == "teacher" else agree.get(row["model"])
            rows.append([row["model"], row["accuracy"], agreement, row["params"], row["macs"], row["bytes"],
                         "-" if row["params_x"] is None else f"{row['params_x']:.2f}x"])
        where = "val" if self.val is not None else "the training data (no val given)"
        notes = [self._verdict(), *self._scratch_note(),
                 f"accuracy on {where}; agreement: top-1 agreement with the teacher on val; "
                 "params x: teacher's params / this model's", comparison.latency_line()]
        return Table(["model", "accuracy", "agreement", "params", "MACs", "bytes", "params x"], rows,
                     title=self._headline(), notes=notes)


def _gain(accuracy: dict[str, float | None], over: str) -> float | None:
    """Distilled minus ``over``'s val accuracy, or None where one is missing."""
    if accuracy.get(over) is None or accuracy.get("distilled") is None:
        return None
    return accuracy["distilled"] - accuracy[over]
