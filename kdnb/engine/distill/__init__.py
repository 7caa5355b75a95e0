"""Knowledge distillation: a frozen teacher's soft labels train a small student.

`distill` runs it (with an optional scratch baseline); `kd_objective` plugs Hinton's KD into any
`kdnb.engine.loop.fit` call (pruning's fine-tuning uses it); `losses` holds every formula.
"""
from kdnb.engine.distill.objectives import Distillation, FrozenTeacher, kd_objective
from kdnb.engine.distill.result import DistillResult
from kdnb.engine.distill.run import distill

__all__ = ["distill", "kd_objective", "DistillResult", "Distillation", "FrozenTeacher"]
