"""`prune`: score, remove, fine-tune, on a copy of the model, following a schedule."""
from __future__ import annotations


from collections.abc import Iterable

import torch
from torch import nn

from kdnb.engine import checks
from kdnb.engine.device import model_device, resolve_device
from kdnb.engine.errors import KdnbError, suggest
from kdnb.engine.evaluate import evaluate
from kdnb.engine.events import Callback, RunState
from kdnb.engine.history import History
from kdnb.engine.objective import split_batch
from kdnb.engine.prune import estimate, schedules
from kdnb.engine.prune.groups import check_structured_support, keep_vectors, masks_from_keep, prunable_weights
from kdnb.engine.prune.result import PruneResult
from kdnb.engine.prune.scores import (SCOPES, check_criterion, check_sparsity, masks_at, removed_channels, score)
from kdnb.engine.prune.structured import remove_channels
from kdnb.engine.prune.unstructured import apply_masks, clone, current_masks, make_permanent

MARKER = "kdnb_pruned"  # attribute a pruned model carries: the list of prunings it went through


class _Sparsity(Callback):
    """Publishes the (fixed) sparsity of a fine-tuning run, so the history logs it per epoch."""

    def __init__(self, value: float):
        self.value = value

    def on_run_start(self, state: RunState) -> None:
        state.extra["sparsity"] = self.value


def prune(
    model: nn.Module,
    sparsity: float,
    criterion: str = "l1",
    structured: bool = False,
    scope: str = "global",
    data: Iterable | None = None,
    val: Iterable | None = None,
    finetune: int = 0,
    schedule: str = "oneshot",
    steps: int | None = None,
    distill: bool = False,
    inplace: bool = False,
    example: torch.Tensor | None = None,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    callbacks: Iterable[object] = (),
    *,
    prune_again: bool = False,
    control: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.5,
    slimming_epochs: int = 2,
    slimming_l1: float = 1e-3,
    hessian_estimator: str = "fisher",
) -> PruneResult:
    """Prune ``model`` to ``sparsity`` by ``criterion``, optionally fine-tuning, and return a `PruneResult`.

    ``sparsity`` is the fraction of the *prunable weights* (the weights of every Linear and Conv layer;
    biases and BatchNorm parameters are not counted) that are removed, in both modes:

    - ``structured=False``: that many single weights are zeroed by masks (``torch.nn.utils.prune``), which
      stay fixed through fine-tuning; ``make_permanent(result.model)`` folds them for fast inference.
    - ``structured=True``: whole neurons/channels are deleted (Torch-Pruning's DependencyGraph finds the
      coupled layers: BatchNorm, next layers' inputs, residual branches, depthwise convs). Each channel
      takes a known number of weights with it, so channels are removed in ascending score (``scope=
      "global"``; l1 scores divided by their layer's mean first) or as the same fraction of every layer
      (``"local"``), the number of channels found by bisection, until the prunable-weight sparsity
      reaches ``sparsity``: the channel fraction follows from it (about ``1 - sqrt(1 - sparsity)`` for a
      chain of equal layers, since a weight goes when its input or its output channel goes). The
      classifier's outputs are kept; the sparsity reached is ``result.sparsity``.

    Args:
        model: a trained ``nn.Module``; left bit-identical unless ``inplace=True``.
        sparsity: fraction of prunable weights to remove, in [0, 1).
        criterion: "l1", "taylor", "hessian", "slimming" or "random" (`kdnb.engine.prune.criteria`).
        structured: delete channels (True) or zero single weights (False).
        scope: "global" (rank across layers) or "local" (the same sparsity in every layer).
        data: training ``DataLoader``: scores for taylor/hessian (all batches), slimming's L1 phase, fine-tuning,
            and (first batch) the example input for structured tracing.
        val: validation loader for accuracies in the history and the summary.
        finetune: fine-tuning epochs after pruning (per round for "iterative"; the whole run for "agp").
        schedule: "oneshot", "iterative" (``steps`` prune/fine-tune rounds) or "agp" (gradual pruning over
            ``steps`` updates during fine-tuning, Zhu & Gupta 2017); see `kdnb.engine.prune.schedules`.
        steps: rounds or updates (default 1 / 3 / 10 for oneshot / iterative / agp).
        distill: fine-tune with the unpruned model as teacher (Hinton KD, ``temperature``, ``alpha``).
        inplace: prune ``model`` itself instead of a copy.
        example: an input batch for structured tracing; by default the first batch of ``data``.
        lr: Adam's learning rate for fine-tuning (and slimming's phase).
        device: "auto", "cpu", "cuda"...; the result comes back on the model's original device.
        seed: seeds fine-tuning, the random criterion and Hutchinson's probes.
        callbacks: subscribers to every training run (titles "slimming", "finetune", "control").
        prune_again: allow pruning a model that is already a `prune` result (never by accident).
        control: also fine-tune an unpruned copy for the same epochs, the control of Blalock et al. 2020.
        slimming_epochs, slimming_l1: the L1-on-BatchNorm-scales training phase of network slimming.
        hessian_estimator: the hessian criterion's diagonal: "fisher" (empirical Fisher) or "hutchinson".

    Returns:
        PruneResult: ``.model``, ``.masks``, ``.sparsity``, ``.history``, ``.summary()``, ``.plot()``.
    """
    if isinstance(model, PruneResult):
        raise KdnbError("got a PruneResult; pass its .model (with prune_again=True) to prune it further")
    checks.check_model(model)
    sparsity = check_sparsity(sparsity)
    check_criterion(criterion, data, model, structured, hessian_estimator)
    if scope not in SCOPES:
        raise KdnbError(f"unknown scope {scope!r}; {suggest(str(scope), SCOPES)}")
    if schedule not in schedules.SCHEDULES:
        raise KdnbError(f"unknown schedule {schedule!r}; {suggest(str(schedule), schedules.SCHEDULES)}")
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise KdnbError(f"finetune should be a number of epochs (an integer >= 0), got {finetune!r}")
    steps = schedules.DEFAULT_STEPS[schedule] if steps is None else steps
    checks.check_positive("steps", steps, integer=True)
    if schedule == "oneshot" and steps != 1:
        raise KdnbError(f"schedule 'oneshot' prunes in one step, got steps={steps}; use schedule='iterative' or 'agp'")
    if schedule == "agp" and finetune < 1:
        raise KdnbError("schedule 'agp' prunes gradually during fine-tuning: set finetune >= 1 (epochs)")
    if (finetune or control) and data is None:
        raise KdnbError("fine-tuning needs data: pass data=train_loader, or finetune=0")
    if distill and not finetune:
        raise KdnbError("distill=True fine-tunes with the unpruned model as teacher: set finetune >= 1")
    for loader, what in ((data, "data"), (val, "val")):
        if loader is not None:
            checks.check_loader(loader, what)
    if getattr(model, MARKER, None) and not prune_again:
        last = getattr(model, MARKER)[-1]
        raise KdnbError(f"this model is already pruned (sparsity {last['sparsity']:.4f}, {last['criterion']}); "
                        "pass prune_again=True to prune it further")
    weights = prunable_weights(model)
    if structured:
        check_structured_support(model)
        if example is None and data is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
    if example is None and data is not None:
        example = split_batch(checks.first_batch(data))[0]
    total = sum(w.numel() for w in weights.values())

    home = model_device(model)
    run_device = resolve_device(device)
    dense = clone(model)
    work = make_permanent(model if inplace else clone(model)).to(run_device)
    callbacks = list(callbacks)
    runs: list[History] = []
    trajectory: list[dict[str, float | None]] = []

    def accuracy(net: nn.Module) -> float | None:
        return evaluate(net, val)["accuracy"] if val is not None else None

    if criterion == "slimming":
        estimate.slimming_phase(work, data, epochs=slimming_epochs, l1=slimming_l1, lr=lr,  # type: ignore[arg-type]
                                device=str(run_device), seed=seed, callbacks=callbacks)
    removed: dict[str, torch.Tensor] = {}

    def prune_to(target: float) -> float:
        """Re-score the current model and mask it at ``target``; returns the sparsity reached."""
        plain = make_permanent(clone(work))
        scores = score(plain, criterion, data, structured=structured,
                       example=example.to(model_device(plain)) if example is not None else None,
                       seed=seed, hessian_estimator=hessian_estimator)
        pruned = current_masks(work)
        if structured:
            removed.clear()
            removed.update(removed_channels(scores, target, scope, pruned))
            masks = masks_from_keep(keep_vectors(scores.groups, removed, scores.shapes), scores.shapes)
        else:
            masks = masks_at(scores, target, scope, pruned)
        apply_masks(work, masks)
        reached = _masked_sparsity(work, weights, total)
        trajectory.append({"target": target, "sparsity": reached, "val_acc": accuracy(work)})
        return reached

    def finetune_run(epochs: int, title: str, subscribers: list[object], net: nn.Module = work) -> History:
        from kdnb.engine.loop import fit

        objective = None
        if distill:
            from kdnb.engine.distill import kd_objective

            objective = kd_objective(clone(dense).eval(), temperature=temperature, alpha=alpha)
        return fit(net, data, val, epochs=epochs, lr=lr, objective=objective,  # type: ignore[arg-type]
                   device=run_device, seed=seed, callbacks=[*subscribers, *callbacks],
                   title=f"{title} ({'structured' if structured else 'unstructured'})")  # names the chart

    if schedule == "agp":
        runs.append(finetune_run(finetune, "finetune", [schedules.AGP(sparsity, steps, prune_to)]))
    else:
        targets = [sparsity] if schedule == "oneshot" else schedules.iterative_targets(sparsity, steps)
        for i, target in enumerate(targets):
            reached = prune_to(target)
            if finetune:
                title = "finetune" if len(targets) == 1 else f"finetune {i + 1}/{len(targets)}"
                runs.append(finetune_run(finetune, title, [_Sparsity(reached)]))
                trajectory[-1]["finetuned_acc"] = accuracy(work)
                if runs[-1].status != "completed":
                    break

    if structured:
        make_permanent(work)
        remove_channels(work, removed, example.to(model_device(work)))  # type: ignore[union-attr]
    reached = _structured_sparsity(work, total) if structured else _masked_sparsity(work, weights, total)
    control_model = None
    if control and finetune:
        control_model = clone(dense).to(run_device)
        finetune_run(finetune * (1 if schedule != "iterative" else steps), "control", [], net=control_model)
        control_model.to(home)
    work.to(home)
    record = {"sparsity": reached, "criterion": criterion, "structured": structured}
    setattr(work, MARKER, [*getattr(work, MARKER, []), record])
    return PruneResult(model=work, dense=dense, masks={} if structured else current_masks(work),
                       criterion=criterion, structured=structured, scope=scope, schedule=schedule, steps=steps,
                       target=sparsity, sparsity=reached, finetune=finetune, distill=distill,
                       history=_merge(runs), trajectory=trajectory, dense_accuracy=accuracy(dense), val=val,
                       example=example.cpu() if example is not None else None, control=control_model,
                       channels=_channels(dense, work) if structured else {})


def _effective(module: nn.Module) -> torch.Tensor:
    orig, mask = getattr(module, "weight_orig", None), getattr(module, "weight_mask", None)
    return (orig * mask if mask is not None else module.weight).detach()


def _masked_sparsity(model: nn.Module, weights: dict[str, torch.Tensor], total: int) -> float:
    zeros = 0
    for name in weights:
        module_name = name.rpartition(".")[0]
        zeros += int((_effective(model.get_submodule(module_name)) == 0).sum())
    return zeros / total


def _structured_sparsity(model: nn.Module, total: int) -> float:
    return 1.0 - sum(w.numel() for w in prunable_weights(model).values()) / total


def _channels(before: nn.Module, after: nn.Module) -> dict[str, tuple[int, int]]:
    """(kept, original) output channels of every Linear/Conv layer that lost some."""
    result = {}
    for name, module in before.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            original = module.weight.shape[0]
            kept = after.get_submodule(name).weight.shape[0]
            if kept != original:
                result[name] = (kept, original)
    return result


def _merge(runs: list[History]) -> History:
    """One history of all fine-tuning runs, epochs numbered on from run to run."""
    merged = History()
    offset = 0
    for run in runs:
        for name, values in run.steps.items():
            merged.steps.setdefault(name, []).extend(values)
        for index in range(run.num_epochs):
            row = {name: values[index] for name, values in run.epochs.items() if index < len(values)}
            row["epoch"] = offset + index + 1
            merged.log_epoch(row)
        offset += run.num_epochs
        merged.status, merged.message = run.status, run.message
    if not runs:
        merged.status = "completed"
    return merged
