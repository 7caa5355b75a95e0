"""Pruning: score each weight or channel (`criteria`), remove the unimportant ones (masks, or deleting
channels with Torch-Pruning's DependencyGraph), fine-tune with the one training loop, following a schedule.

`prune` does it all. `importance` scores once, then `masks_at` / `masked_model` mask at any sparsity (the
sparsity explorer). `sensitivity` prunes one layer at a time. `make_permanent` folds masks for inference;
`export` makes a fast inference copy (masks and BatchNorm folded, channels-last).
"""
from kdnb.engine.prune.criteria import CRITERIA, hessian, l1, random, slimming, taylor
from kdnb.engine.prune.inference import export
from kdnb.engine.prune.pipeline import prune
from kdnb.engine.prune.result import PruneResult, SensitivityResult
from kdnb.engine.prune.scores import Scores, importance, masked_model, masks_at
from kdnb.engine.prune.sensitivity import sensitivity
from kdnb.engine.prune.structured import fold_batchnorm
from kdnb.engine.prune.unstructured import apply_masks, make_permanent

__all__ = ["prune", "sensitivity", "make_permanent", "fold_batchnorm", "export", "importance", "masks_at",
           "masked_model", "apply_masks", "Scores", "PruneResult", "SensitivityResult", "CRITERIA", "l1", "taylor",
           "hessian", "slimming", "random"]
