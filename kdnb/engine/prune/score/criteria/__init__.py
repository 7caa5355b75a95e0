"""Importance criteria: how much each weight (or channel) matters. Low score = pruned first.

A criterion is one formula function plus one `Criterion` record, its statistic a `Statistic` record beside it,
in one module of this package (one family each); importing the package registers them in `REGISTRY`
(`kdnb.engine.prune.score.registry`). A new criterion is one `register(Criterion(...))` call, in any file.

Element criteria score every element of a parameter tensor; structured pruning adds a channel's element
scores over every slice it owns (`kdnb.engine.prune.graph.groups`), or over the weights that read it only for the
criteria marked ``reads``. Channel criteria (``channel=True``) score
whole channels from a channel-level statistic.
"""
# importing each family registers its criteria, in this order (the order of the magics' help and the explorer)
from kdnb.engine.prune.score.criteria import magnitude, gradient, layer_inputs, consumers, batchnorm, baseline  # noqa
from kdnb.engine.prune.score.criteria.baseline import random
from kdnb.engine.prune.score.criteria.batchnorm import slimming, slimming_penalty
from kdnb.engine.prune.score.criteria.consumers import activation, thinet
from kdnb.engine.prune.score.criteria.gradient import hessian, taylor, taylor_group
from kdnb.engine.prune.score.criteria.layer_inputs import obs, wanda
from kdnb.engine.prune.score.criteria.magnitude import l1, lamp, lamp_normalise
from kdnb.engine.prune.score.registry import REGISTRY, Context, Criterion, Statistic, names, register

CRITERIA = names()  # the built-in criteria, for the imports that name the tuple

__all__ = ["REGISTRY", "CRITERIA", "Context", "Criterion", "Statistic", "register", "names", "l1", "lamp",
           "lamp_normalise", "taylor", "taylor_group", "hessian", "obs", "wanda", "thinet", "activation", "slimming",
           "slimming_penalty", "random"]
