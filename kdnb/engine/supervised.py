"""The verbs of plain supervised learning: `train` a model in place with hard labels, `evaluate` it.

Like `distill` and `prune` they live in the engine; `kdnb.api` only adds what a notebook wants (the
progress bar, the live chart) around them.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from kdnb.engine import checks, loop
from kdnb.engine.evaluate import evaluate as evaluate_model
from kdnb.engine.history import History
from kdnb.engine.objective import Supervised


def train(model: nn.Module, data: Iterable, val: Iterable | None = None, *, epochs: int = 5, loss=None,
          optimizer: loop.OptimizerSpec = None, lr: float = 1e-3, scheduler=None, amp: bool = False,
          grad_clip: float | None = None, device: str = "auto", seed: int | None = 0,
          callbacks: Iterable[object] = ()) -> History:
    checks.check_loss(loss)
    return loop.fit(model, data, val, epochs=epochs, objective=Supervised(loss) if loss is not None else None,
                    title="train", optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip,
                    device=device, seed=seed, callbacks=callbacks)


train.__doc__ = f"""Train ``model`` in place with hard labels and return its `History`.

    Args:
        model: any ``nn.Module`` that maps a batch of inputs to logits ``(batch, classes)``.
        data: training ``DataLoader`` of ``(inputs, labels)``.
        val: optional validation loader; val loss and accuracy are logged each epoch.
        epochs: passes over ``data``.
        loss: ``loss(logits, labels)``; cross-entropy by default. It may return
            ``(loss, {{"term": value}})`` to log extra terms.
{loop.settings_help()}
        progress: show a tqdm progress bar.
        plot: "auto" shows the live loss chart in a notebook; True forces it, False hides it.
        distributed: "auto" runs on every process of a torch.distributed group (under ``torchrun``):
            DistributedDataParallel, the data sharded, the same History on each rank; True requires
            such a group (an error otherwise); False trains each process alone on all the data.

    Returns:
        History: per-step loss, per-epoch train/val loss and accuracy, status ("completed",
        "interrupted" by the stop button, or "diverged" on a non-finite or exploding loss or exploding
        weights). Bad input raises a one-line `KdnbError` before anything changes; any error during the
        run puts ``model`` back exactly as it was given; the caller's random generators and loaders'
        shuffling are as they were when it returns (with a ``seed``).
    """


def evaluate(model: nn.Module, data: Iterable) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": top-1}`` of ``model`` over the labelled loader ``data``,
    in eval mode; the model's weights and mode are left as they were."""
    checks.check_model(model)
    checks.check_loader(data, "data")
    with checks.rng_preserved(data):  # evaluating draws every batch; the loader shuffles on as before
        return evaluate_model(model, data)
