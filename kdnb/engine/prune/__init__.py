"""Pruning: score each weight or channel (`criteria`), remove the unimportant ones (masks, or deleting
channels with Torch-Pruning's DependencyGraph), fine-tune with the one training loop, following a schedule.

`prune` does it all; with data it re-solves the kept weights layer by layer (`reconstruct`).
`importance` scores once, then `masks_at` / `masked_model` mask at any sparsity (the
sparsity explorer). `sensitivity` prunes one layer at a time. `make_permanent` folds masks for inference;
`export` makes a fast inference copy (masks and BatchNorm folded, channels-last).
"""
from kdnb.engine.prune.options import Cut, PruneOptions, Rebuild, Schedule, Teacher
from kdnb.engine.prune.score.criteria import (CRITERIA, REGISTRY, Criterion, Statistic, hessian, l1, lamp, obs, random,
                                              register, slimming, taylor, taylor_group, wanda)
from kdnb.engine.prune.inference import export
from kdnb.engine.prune.pipeline import prune
from kdnb.engine.prune.rebuild.reconstruct import reconstruct
from kdnb.engine.prune.result import PruneResult, SensitivityResult
from kdnb.engine.prune.score.importance import importance
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.masks import masked_model, masks_at
from kdnb.engine.prune.sensitivity import sensitivity
from kdnb.engine.prune.cut.channels import fold_batchnorm
from kdnb.engine.prune.cut.masks import apply_masks, make_permanent
from kdnb.engine.prune.graph.pretrained import from_pretrained

__all__ = ["prune", "sensitivity", "make_permanent", "fold_batchnorm", "export", "importance", "masks_at",
           "masked_model", "apply_masks", "Scores", "PruneResult", "SensitivityResult", "CRITERIA", "REGISTRY",
           "reconstruct", "register", "Criterion", "Statistic", "PruneOptions", "Cut", "Rebuild", "Schedule",
           "Teacher", "l1", "lamp", "taylor", "taylor_group", "hessian", "obs", "wanda", "slimming", "random",
           "from_pretrained"]
