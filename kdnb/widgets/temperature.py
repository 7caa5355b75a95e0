"""The temperature explorer: the teacher's soft labels softmax(z / T) for one sample, as T moves.

At T = 1 a confident teacher puts nearly all its probability on one class; raising T spreads it,
and the small probabilities it gives the *other* classes — which digits look alike to it — become
visible. Those are the "dark knowledge" a student learns from soft labels (Hinton et al. 2015).
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from kdnb.engine.checks import check_model, check_temperature
from kdnb.engine.distill.losses import soft_labels
from kdnb.errors import KdnbError
from kdnb.engine.evaluate import predict
from kdnb.engine.batches import batch_size, inputs_of
from kdnb.widgets._support import Explorer, png


def first_samples(samples: Any, limit: int) -> list[Any]:
    """Batches holding at least ``limit`` samples (inputs, and labels if any) from a tensor, an (x, y) pair, a
    Dataset or a DataLoader (its batches as `kdnb.engine.batches` reads them: mappings too)."""
    if isinstance(samples, torch.Tensor):
        return [samples[:limit]]
    if isinstance(samples, (tuple, list)) and samples and isinstance(samples[0], torch.Tensor):
        return [tuple(part[:limit] for part in samples)]
    if isinstance(samples, torch.utils.data.Dataset) and hasattr(samples, "__len__"):
        return [default_collate([samples[i] for i in range(min(limit, len(samples)))])]
    if hasattr(samples, "__iter__"):
        found, count = [], 0
        for batch in samples:
            found.append(batch)
            count += batch_size(*inputs_of(batch))
            if count >= limit:
                break
        if found:
            return found
    raise KdnbError(f"samples should be a tensor of inputs, an (inputs, labels) pair, a Dataset or a DataLoader, "
                    f"got {type(samples).__name__}")


class TemperatureExplorer(Explorer):
    """A slider for the temperature T and a sample chooser; bars show the teacher's soft labels
    softmax(z / T) for that sample, next to its ordinary output at T = 1.

    Args:
        teacher: the trained teacher ``nn.Module`` (run in eval mode, never changed).
        samples: inputs to choose from: a tensor, an (inputs, labels) pair, a Dataset or a DataLoader
            (e.g. the validation loader); the first ``max_samples`` are used.
        temperature: the slider's starting T.
        classes: names of the classes (default: their indices).
        max_samples: how many samples the chooser offers.

    Drive it from code with ``explorer.temperature.value = 8`` and ``explorer.sample.value = 3``
    (the widgets), or ``explorer.show(sample, temperature)`` (also without ipywidgets).
    """

    image: Any = None  # the widgets, set when ipywidgets is installed

    def __init__(self, teacher: torch.nn.Module, samples: Any, *, temperature: float = 4.0,
                 classes: Sequence[str] | None = None, max_samples: int = 32):
        check_model(teacher, "teacher")
        check_temperature(temperature)
        logits, labels = predict(teacher, first_samples(samples, max_samples))  # sequences: one row per token
        self.logits, self.labels = logits[:max_samples], (labels[:max_samples] if labels is not None else None)
        num_classes = self.logits.shape[1]
        self.classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise KdnbError(f"classes has {len(self.classes)} names but the teacher outputs {num_classes} classes")
        self.current = (0, float(temperature))
        self._figure: Any = None
        self._build_widget()

    def _build(self, widgets: Any) -> Any:
        self.temperature = widgets.FloatSlider(value=self.current[1], min=0.5, max=max(20.0, self.current[1]),
                                               step=0.5, description="T", readout_format=".1f",
                                               continuous_update=True, layout={"width": "420px"})
        options = [(self._sample_name(i), i) for i in range(len(self.logits))]
        self.sample = widgets.Dropdown(options=options, value=self.current[0], description="sample")
        self.numbers = widgets.HTML()
        self.image = widgets.Image(format="png", layout={"width": "760px"})
        for control in (self.temperature, self.sample):
            control.observe(lambda change: self.show(self.sample.value, self.temperature.value), names="value")
        self.show(*self.current)
        return widgets.VBox([widgets.HBox([self.temperature, self.sample]), self.numbers, self.image])

    def _sample_name(self, index: int) -> str:
        label = f" (class {self.classes[int(self.labels[index])]})" if self.labels is not None else ""
        return f"{index}{label}"

    def show(self, sample: int, temperature: float) -> str:
        """Show sample ``sample`` at temperature ``temperature``; returns the numbers as text."""
        if not 0 <= sample < len(self.logits):
            raise KdnbError(f"sample should be between 0 and {len(self.logits) - 1}, got {sample}")
        self.current = (int(sample), float(temperature))
        if self.image is not None:
            self.numbers.value = html.escape(self.text())
            self.image.value = png(self.figure())
        return self.text()

    def text(self) -> str:
        sample, temperature = self.current
        p = soft_labels(self.logits[sample], temperature)
        top = torch.argsort(p, descending=True)[:3].tolist()
        entropy = -float((p * torch.log2(p.clamp_min(1e-12))).sum())
        ranked = ", ".join(f"{self.classes[c]} {float(p[c]):.3f}" for c in top)
        return (f"sample {self._sample_name(sample)}, T = {temperature:.1f}: top classes {ranked}; "
                f"entropy {entropy:.2f} of {math.log2(len(p)):.2f} bits")

    def figure(self) -> Any:
        """Bars of softmax(z / T) for the current sample, with the T = 1 output outlined behind them
        (drawn by `kdnb.plots.temperature.SoftLabelFigure`, resized in place)."""
        sample, temperature = self.current
        if self._figure is None:
            from kdnb.plots.temperature import SoftLabelFigure  # matplotlib loads with the first picture

            self._figure = SoftLabelFigure(self.classes, labelled=self.labels is not None)
        true_class = int(self.labels[sample]) if self.labels is not None else None
        return self._figure.update(soft_labels(self.logits[sample], temperature).tolist(),
                                   soft_labels(self.logits[sample], 1.0).tolist(), temperature,
                                   f"teacher's class probabilities for sample {self._sample_name(sample)}",
                                   true_class)
