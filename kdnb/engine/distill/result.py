"""What `distill` returns: the distilled student, its history, the scratch baseline, and the verdict."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdnb.engine.results import Result
from kdnb.engine.history import History
from kdnb.engine.table import Table


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
        method, settings: the method and its temperature, alpha, beta, epochs, and baseline_epochs
            (the scratch run's epochs over the labelled data: as many steps as the distillation).
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
    _comparison: Any = field(default=None, compare=False)  # see Result.comparison

    @property
    def accuracy(self) -> dict[str, float | None]:
        """Final val accuracy of "teacher", "scratch" and "distilled" (None where not measured)."""
        scratch = self.baseline_history.last("val_acc") if self.baseline_history else None
        return {"teacher": self.teacher_accuracy, "scratch": scratch, "distilled": self.history.last("val_acc")}

    @property
    def agreement(self) -> dict[str, float | None]:
        """Final top-1 agreement with the teacher on val, of "scratch" and "distilled"."""
        scratch = self.baseline_history.last("val_agreement") if self.baseline_history else None
        return {"scratch": scratch, "distilled": self.history.last("val_agreement")}

    @property
    def gap_closure(self) -> float | None:
        """(distilled - scratch) / (teacher - scratch) in val accuracy: 1 = the student reached the
        teacher, 0 = no better than from scratch, < 0 = worse. None without a baseline, or when the
        scratch student already matches or beats the teacher (no gap to close)."""
        acc = self.accuracy
        if None in acc.values() or acc["teacher"] <= acc["scratch"]:
            return None
        return (acc["distilled"] - acc["scratch"]) / (acc["teacher"] - acc["scratch"])

    def _headline(self) -> str:
        s = self.settings
        weights = f"alpha={s['alpha']:g}" + (f", beta={s['beta']:g}" if self.method != "kd" else "")
        return (f"DistillResult: method={self.method!r}, T={s['temperature']:g}, {weights}, epochs={s['epochs']}, "
                f"{self.soft_labels}, status={self.history.status!r}")

    def _verdict(self) -> str:
        closure, acc = self.gap_closure, self.accuracy
        if closure is not None:
            return f"gap closure {100 * closure:.1f}% = (distilled - scratch) / (teacher - scratch), val accuracy"
        if self.baseline_history is None and self.history.status != "completed":  # stopped before any baseline
            return (f"gap closure: none, the run was {self.history.status} after {self.history.num_epochs} of "
                    f"{self.settings['epochs']} epochs, before a scratch baseline (baseline=True) could run")
        if self.baseline_history is None:
            return "gap closure: run with baseline=True (and val=) to compare with a student trained from scratch"
        if None in acc.values():
            return "gap closure: needs val= (labelled) to compare accuracies"
        return (f"gap closure: none to close, the scratch student ({100 * acc['scratch']:.1f}%) already matches "
                f"or beats the teacher ({100 * acc['teacher']:.1f}%)")

    def _scratch_note(self) -> list[str]:
        """The scratch run's budget, when it differs in epochs (a transfer set lengthens distillation)."""
        s = self.settings
        if self.baseline_history is None or s["baseline_epochs"] == s["epochs"]:
            return []
        return [f"scratch: {s['baseline_epochs']} epochs over the labelled data, the same number of steps"]

    def overview(self) -> Table:
        """Val accuracy and agreement with the teacher, per model, from the runs (no new measurement)."""
        acc, agree = self.accuracy, self.agreement
        rows = [["teacher", acc["teacher"], 1.0 if acc["teacher"] is not None else None]]
        if self.baseline_history is not None:
            rows.append(["scratch student", acc["scratch"], agree["scratch"]])
        rows.append(["distilled student", acc["distilled"], agree["distilled"]])
        notes = [self._verdict(), *self._scratch_note()] + ([self.history.message] if self.history.message else [])
        return Table(["model", "val accuracy", "agreement"], rows, title=self._headline(), notes=notes)

    def _compared(self) -> tuple[dict[str, nn.Module], Any]:
        models = {"teacher": self.teacher}
        if self.baseline is not None:
            models["scratch"] = self.baseline
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
