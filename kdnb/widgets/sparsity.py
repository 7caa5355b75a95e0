"""The sparsity explorer: move a slider, see what pruning that much costs.

Scores are computed once per criterion (and mode) by `kdnb.engine.prune.importance`; a slider
move then costs one mask (`masks_at`: a sort of the scores) and one evaluation of the masked copy,
so the numbers follow the slider. The preview masks only: the reconstruction `kdnb.prune` does by default
with data re-solves every layer (a few tenths of a second on the tutorial MLP, seconds on a conv net), too
slow to follow a slider, so "apply" prunes with ``reconstruct=False`` and stores exactly what the preview
showed. The accuracy-vs-sparsity curve starts with a few points and fills in as
the slider visits values; the saved notebook keeps its picture.
"""
from __future__ import annotations

import copy
import html
import os
import warnings
from collections.abc import Iterable, MutableMapping
from typing import Any

import torch

from kdnb.engine.checks import check_loader, check_model, check_sparsity, first_batch, rng_preserved
from kdnb.errors import KdnbError, suggest
from kdnb.engine.evaluate import evaluate
from kdnb.engine.batches import example_of
from kdnb.engine.export import export as export_model
from kdnb.engine.prune.score import criteria
from kdnb.engine.prune.score.importance import importance
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.masks import masks_at
from kdnb.engine.prune.cut.masks import apply_masks
from kdnb.engine.measure import parameter_counts
from kdnb.engine.serialize import file_size
from kdnb.engine.table import Table
from kdnb.widgets._support import Explorer, png

MODES = {"unstructured": False, "structured": True}
NUMBERS_STYLE = ("<style>.kdnb-sparsity-numbers td, .kdnb-sparsity-numbers th {padding: 1px 10px}"
                 ".kdnb-sparsity-numbers td + td, .kdnb-sparsity-numbers th + th {text-align: right}</style>")
PREVIEW = (0.5, 0.8, 0.9, 0.95)  # sparsities measured when the explorer opens (a mask and an evaluation each)


def nonzero_params(model: torch.nn.Module) -> tuple[int, int]:
    """(non-zero, all) parameters of the model as `kdnb.save` would write it (masks folded)."""
    params, nonzero, _, _ = parameter_counts(model)
    return nonzero, params


class SparsityExplorer(Explorer):
    """A slider from 0 to 99 % sparsity over ``model``: accuracy on ``val``, non-zero parameters and
    bytes on disk as it moves, and an accuracy-vs-sparsity curve per criterion that fills in.

    Args:
        model: a trained ``nn.Module`` (never changed: the explorer masks a copy).
        val: labelled validation ``DataLoader`` the accuracy is measured on.
        criterion: the starting criterion, a name of `kdnb.engine.prune.score.criteria.REGISTRY` ("l1", "lamp",
            "taylor", "hessian", "obs", "wanda", "random", ...; "thinet" and "taylor_group" score whole channels).
        data: training batches the data criteria ("taylor", "hessian", "obs", ...) are estimated on.
        structured: start with whole neurons/channels removed (True) instead of single weights.
        namespace: where "apply" stores the pruned model (default: the notebook's variables).

    Drive it from code: ``explorer.slider.value = 0.9``, ``explorer.criterion.value = "taylor"``,
    ``explorer.mode.value = "structured"``, ``explorer.name.value = "pruned"``, ``explorer.apply()``
    (which never overwrites a variable of yours: see `apply`);
    or ``explorer.at(0.9)`` (also without ipywidgets).
    """

    slider: Any = None  # the widgets, set when ipywidgets is installed

    def __init__(self, model: torch.nn.Module, val: Iterable, criterion: str = "l1", data: Iterable | None = None,
                 *, structured: bool = False, namespace: MutableMapping[str, Any] | None = None):
        check_model(model)
        check_loader(val, "val")
        if data is not None:
            check_loader(data, "data")
        self._check_criterion(criterion)
        self.model, self.val, self.data = model, val, data
        self.namespace = namespace
        with rng_preserved(data, val):  # the user's next epoch shuffles as if the explorer had not looked
            self.example = example_of(first_batch(data if data is not None else val))
        self.dense = {"accuracy": evaluate(model, val)["accuracy"], "bytes": file_size(model),
                      "nonzero": nonzero_params(model)[0]}
        self.curves: dict[tuple[str, bool], dict[float, float]] = {}
        self._scored: dict[tuple[str, bool], tuple[Scores, torch.nn.Module]] = {}
        self.setting = {"criterion": criterion, "structured": bool(structured), "sparsity": 0.0}
        self.numbers: dict[str, Any] = {}
        self.message = ""
        self._stored: set[str] = set()  # the names apply() stored models in: those it may store in again
        self.stored_as: str | None = None
        self._figure: Any = None
        self._lines: dict[tuple[str, bool], Any] = {}
        self._scores(criterion, bool(structured))  # a criterion that cannot start (no data) fails here, clearly
        for sparsity in PREVIEW:  # the curve starts with a few points, so even the saved picture has a shape
            self.at(sparsity)
        self._build_widget()
        self.at(0.0)

    def _check_criterion(self, criterion: str) -> None:
        if criterion not in criteria.REGISTRY:  # the registry: a criterion registered there shows up here
            raise KdnbError(f"unknown criterion {criterion!r}; {suggest(str(criterion), criteria.names())}")

    def _build(self, widgets: Any) -> Any:
        self.slider = widgets.FloatSlider(value=0.0, min=0.0, max=0.99, step=0.01, description="sparsity",
                                          readout_format=".0%", continuous_update=True, layout={"width": "460px"})
        self.criterion = widgets.Dropdown(options=criteria.names(), value=self.setting["criterion"],
                                          description="criterion")
        self.mode = widgets.ToggleButtons(options=list(MODES), value="structured" if self.setting["structured"]
                                          else "unstructured", style={"button_width": "105px"})
        self.table = widgets.HTML()
        self.image = widgets.Image(format="png", layout={"width": "640px"})
        self.name = widgets.Text(value=self._suggested_name(), description="store as", layout={"width": "220px"})
        self.button = widgets.Button(description="apply", button_style="primary", icon="scissors",
                                     tooltip="prune a copy of the model at this setting and store it in the variable")
        self.status = widgets.HTML()
        self.slider.add_class("kdnb-sparsity-slider")  # stable handles for browser tests and custom CSS
        self.table.add_class("kdnb-sparsity-numbers")
        self.slider.observe(lambda change: self.at(change["new"]), names="value")
        # what the widgets show, both of them: a criterion that failed in one mode is tried again in the other
        self.criterion.observe(lambda change: self.at(self.slider.value, criterion=change["new"],
                                                      structured=MODES[self.mode.value]), names="value")
        self.mode.observe(lambda change: self.at(self.slider.value, criterion=self.criterion.value,
                                                 structured=MODES[change["new"]]), names="value")
        self.button.on_click(lambda _: self._apply_clicked())
        return widgets.VBox([widgets.HBox([self.criterion, self.mode]), self.slider, self.table, self.image,
                             widgets.HBox([self.name, self.button]), self.status])

    def _scores(self, criterion: str, structured: bool) -> tuple[Scores, torch.nn.Module]:
        """Scores of a criterion and mode (computed once), with a masked working copy of the model."""
        key = (criterion, structured)
        if key not in self._scored:
            scores = importance(self.model, criterion, self.data, structured=structured, example=self.example)
            work = copy.deepcopy(scores.model)
            apply_masks(work, masks_at(scores, 0.0))
            self._scored[key] = (scores, work)
        return self._scored[key]

    def at(self, sparsity: float, criterion: str | None = None, structured: bool | None = None) -> dict[str, Any]:
        """Mask the copy at ``sparsity`` and measure it; returns (and shows) the numbers.

        A criterion that cannot run (taylor or hessian without ``data``, a channel criterion on single
        weights) leaves the numbers as they were and says why in ``message``.
        """
        criterion = self.setting["criterion"] if criterion is None else criterion
        structured = self.setting["structured"] if structured is None else bool(structured)
        self._check_criterion(criterion)
        sparsity = check_sparsity(float(sparsity))
        try:
            scores, work = self._scores(criterion, structured)
        except KdnbError as error:
            self.message = str(error)
            self._show()
            return self.numbers
        self.setting = {"criterion": criterion, "structured": structured, "sparsity": sparsity}
        with warnings.catch_warnings(record=True) as caught:  # shown once, next to the numbers, not per move
            warnings.simplefilter("always")
            apply_masks(work, masks_at(scores, sparsity))
        self.message = str(caught[0].message) if caught else ""
        with rng_preserved(self.val):
            accuracy = evaluate(work, self.val)["accuracy"]
        nonzero, total = nonzero_params(work)
        self.numbers = {"sparsity": sparsity, "accuracy": accuracy, "nonzero": nonzero, "params": total,
                        "bytes": file_size(work)}
        self.curves.setdefault((criterion, structured), {})[round(sparsity, 4)] = accuracy
        self._show()
        return self.numbers

    def _show(self) -> None:
        if self.slider is None:
            return
        self.table.value = self.html()
        self.image.value = png(self.figure())  # after the numbers, which the frontend already shows

    def html(self) -> str:
        """The numbers as the widget shows them: the setting on one line, the table, any message."""
        table = self.summary()
        title, table.title = table.title, ""  # above the table, on one line, not a caption as wide as the table
        return (f"{NUMBERS_STYLE}<div class='kdnb-sparsity-numbers'><div><b>{html.escape(title)}</b></div>"
                f"{table.to_html()}</div>"
                + (f"<div style='color:#b00'>{html.escape(self.message)}</div>" if self.message else ""))

    def summary(self) -> Table:
        n, d = self.numbers, self.dense
        mode = "structured" if self.setting["structured"] else "unstructured"
        rows = [["accuracy", f"{100 * n['accuracy']:.2f}%", f"{100 * d['accuracy']:.2f}%"],
                ["non-zero params", f"{n['nonzero']:,} ({100 * n['nonzero'] / max(n['params'], 1):.1f}%)",
                 f"{d['nonzero']:,}"],
                ["bytes (kdnb.save)", f"{n['bytes']:,}", f"{d['bytes']:,}"]]
        title = f"{self.setting['criterion']}, {mode}, sparsity {100 * n['sparsity']:.0f}% of prunable weights"
        return Table(["", "pruned", "dense"], rows, title=title)

    def text(self) -> str:
        return self.summary().to_text() + (f"\n{self.message}" if self.message else "")

    def figure(self) -> Any:
        """Accuracy against sparsity for every criterion and mode visited; the current setting marked.
        One figure, its lines moved in place, so a redraw stays cheap."""
        if self._figure is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self._figure = Figure(figsize=(6.4, 3.0), dpi=100)
            FigureCanvasAgg(self._figure)
            ax = self._figure.add_subplot()
            ax.axhline(100 * self.dense["accuracy"], color="0.5", ls=":", lw=1, label="dense model")
            self._current = ax.plot([], [], "o", ms=9, mfc="none", mec="black", mew=1.5, label="current")[0]
            ax.set_xlim(-2, 101)
            ax.set_ylim(0, 103)
            ax.set_xlabel("sparsity (% of prunable weights removed)")
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(alpha=0.25)
            self._figure.subplots_adjust(left=0.1, right=0.98, bottom=0.16, top=0.96)
        ax = self._figure.axes[0]
        for (criterion, structured), curve in self.curves.items():
            if (criterion, structured) not in self._lines:
                self._lines[criterion, structured] = ax.plot(
                    [], [], "--" if structured else "-", marker="o", ms=3, lw=1.2,
                    color=criteria.REGISTRY[criterion].colour,
                    label=f"{criterion}, {'structured' if structured else 'unstructured'}")[0]
                ax.legend(fontsize=8, loc="lower left", frameon=False)
            points = sorted(curve.items())
            self._lines[criterion, structured].set_data([100 * s for s, _ in points], [100 * a for _, a in points])
        self._current.set_data([100 * self.numbers["sparsity"]], [100 * self.numbers["accuracy"]])
        return self._figure

    def apply(self, name: str | None = None, *, replace: bool = False,
              export: str | os.PathLike | None = None) -> torch.nn.Module:
        """Prune a copy of the model at the current setting (`kdnb.engine.prune.prune`, one shot, no
        fine-tuning, ``reconstruct=False`` as the preview) and store it in the notebook as ``name`` (default:
        the name typed next to the button). Its accuracy is the one the preview showed; for the re-solved
        weights, call ``kdnb.prune(model, sparsity, criterion=..., data=...)`` itself.

        A notebook variable that this explorer did not make is never overwritten unless ``replace=True``:
        the model goes into the first free name (``pruned_2``, ...), and ``status`` says so.
        ``export="pruned.onnx"`` also writes it there with `kdnb.export` (checked on the explorer's example
        batch) before storing it. Returns the pruned model.
        """
        from kdnb.engine.prune import prune

        name = name if name is not None else (self.name.value if self.slider is not None else "pruned")
        if not name.isidentifier():
            raise KdnbError(f"{name!r} is not a valid variable name; type a name like 'pruned'")
        namespace = self._namespace()
        stored = self.free_name(name) if not replace else name
        result = prune(self.model, self.setting["sparsity"], criterion=self.setting["criterion"],
                       structured=self.setting["structured"], data=self.data, val=self.val, example=self.example,
                       reconstruct=False)
        exported = "" if export is None else f"; {html.escape(str(export_model(result.model, export, self.example)))}"
        namespace[stored] = result.model
        self._stored.add(stored)
        self.stored_as = stored
        note = "" if stored == name else f" (<code>{name}</code> holds a variable of yours: kept)"
        if self.slider is not None:
            self.status.value = f"stored the pruned model in <code>{stored}</code>{note}{exported}"
            self.name.value = self.free_name(name)  # the next apply does not replace this one either
        return result.model

    def free_name(self, name: str) -> str:
        """``name`` if it is free in the notebook (or holds a model this explorer stored), else ``name_2``, ..."""
        namespace, candidate, number = self._namespace(), name, 1
        while candidate in namespace and candidate not in self._stored:
            number += 1
            candidate = f"{name}_{number}"
        return candidate

    def _apply_clicked(self) -> None:
        self.status.value = "pruning..."
        try:
            self.apply()
        except KdnbError as error:  # a button has no traceback to show: say it next to the button
            self.status.value = f"<span style='color:#b00'>{error}</span>"

    def _suggested_name(self) -> str:
        """"pruned", or the first free "pruned_N" when the notebook already has a "pruned"."""
        try:
            return self.free_name("pruned")
        except KdnbError:  # no notebook: apply will say so
            return "pruned"

    def _namespace(self) -> MutableMapping[str, Any]:
        if self.namespace is None:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is None:
                raise KdnbError("apply stores the model in a notebook variable, but there is no notebook here; "
                                "pass namespace=globals() to SparsityExplorer")
            self.namespace = shell.user_ns
        return self.namespace
