"""Knowledge distillation: a frozen teacher's soft labels train a small student.

`distill` runs it (with fair baselines: scratch, hard pseudo-labels); `kd_objective` plugs Hinton's KD
into any `kdnb.engine.loop.fit` call (pruning's fine-tuning uses it); `losses` holds every formula,
`methods` the registry of methods (read it with `methods.METHODS` / `methods.names()`), `augment`
the augmentations of consistent teaching.
"""
from kdnb.engine.distill import augment, losses, methods
from kdnb.engine.distill.methods import METHODS, Method
from kdnb.engine.distill.objectives import Distillation, FrozenTeacher, kd_objective
from kdnb.engine.distill.result import DistillResult
from kdnb.engine.distill.run import distill

__all__ = ["distill", "kd_objective", "DistillResult", "Distillation", "FrozenTeacher", "METHODS", "Method",
           "methods", "losses", "augment"]
