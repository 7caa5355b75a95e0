"""Every exercise check, by exercise name: ``from kdnb.exercises import check; check.kd_loss(my_kd_loss)``.

Each returns a `Report` that shows, case by case, what is right and what is wrong with a hint;
an unfilled stub (raising NotImplementedError, or returning ``...`` or None) reports "not done yet".
"""
from kdnb.exercises.distillation import gap_closure, kd_loss, soft_labels
from kdnb.exercises.library import next_token_loss
from kdnb.exercises.pipeline import compression, recovered_fraction
from kdnb.exercises.pruning import (hessian_importance, l1_importance, magnitude_mask, obs_update, sparsity,
                                    taylor_importance)
from kdnb.exercises.structured import mlp_macs, shrink_linear
from kdnb.exercises.transformer import block_macs, head_importance

__all__ = ["block_macs", "compression", "gap_closure", "head_importance", "hessian_importance", "kd_loss",
           "l1_importance", "magnitude_mask", "mlp_macs", "next_token_loss", "obs_update", "recovered_fraction",
           "shrink_linear", "soft_labels", "sparsity", "taylor_importance"]
