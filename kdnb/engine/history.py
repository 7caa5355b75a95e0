"""What a run leaves behind: per-step loss terms, per-epoch metrics, and how it ended."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """Per-step and per-epoch records of one run.

    ``steps[name]`` holds one value per optimizer step ("loss" and every extra term a loss reports,
    e.g. "ce" and "kd"); ``epochs[name]`` one value per finished epoch ("train_loss", "train_acc",
    "val_loss", "val_acc", "time_s", and the epoch means of the step terms).
    ``status`` is "completed", "interrupted" (stop button), "stopped" (by a callback), "diverged" (a
    non-finite or exploding loss, or exploding weights; ``message`` names the step and what to try) or
    "failed" (an exception, after which the model was put back as it was given).
    """

    steps: dict[str, list[float]] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)
    status: str = "running"
    message: str = ""

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    @property
    def num_steps(self) -> int:
        return len(self.steps.get("loss", []))

    @property
    def num_epochs(self) -> int:
        return len(self.epochs.get("train_loss", []))

    def log_step(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.steps.setdefault(name, []).append(float(value))

    def log_epoch(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.epochs.setdefault(name, []).append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        if name in self.epochs:
            return self.epochs[name]
        if name in self.steps:
            return self.steps[name]
        known = sorted(set(self.epochs) | set(self.steps))
        raise KeyError(f"no record named {name!r}; this history has {', '.join(known) or 'nothing yet'}")

    def last(self, name: str, default: float | None = None) -> float | None:
        values = self.epochs.get(name) or self.steps.get(name)
        return values[-1] if values else default

    def plot(self, title: str = "train") -> Any:
        """A static matplotlib figure of this run (loss terms per step, accuracy per epoch), by `kdnb.plots`."""
        from kdnb.engine.results import draw

        return draw(self, title=title)

    def __repr__(self) -> str:
        parts = [f"epochs={self.num_epochs}", f"steps={self.num_steps}", f"status={self.status!r}"]
        for name in ("train_loss", "val_loss", "val_acc"):
            value = self.last(name)
            if value is not None and name in self.epochs:
                parts.append(f"{name}={value:.4f}")
        return "History(" + ", ".join(parts) + ")"
