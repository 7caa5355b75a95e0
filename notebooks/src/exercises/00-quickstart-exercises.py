# %% [markdown] tags=["stub-only"]
# # Exercises: counting what pruning removes
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: counting what pruning removes — solutions
#
# One solution of each exercise; every check passes. Other correct answers exist.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import kdnb
from kdnb.exercises import check

torch.set_num_threads(1)


# %% [markdown]
# ## Exercise 1: sparsity
#
# The **sparsity** of a model is the fraction of its weights that are zero. kdnb counts the weights of
# `nn.Linear` and `nn.Conv` layers only (biases and BatchNorm parameters are few, and not pruned). Write
# `sparsity(model)`: zero weights / all weights, over those layers.

# %%
# NBVAL_CHECK_OUTPUT
def sparsity(model):
    """Fraction of zeros among the weights of the Linear and Conv layers of model."""
    ### BEGIN SOLUTION
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / sum(m.weight.numel() for m in layers)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.sparsity(sparsity)


# %% [markdown]
# ## Exercise 2: MACs of an MLP
#
# A `Linear(a, b)` layer does `a * b` multiply-accumulates (MACs) per sample. Write `mlp_macs(widths)` for an
# MLP whose layer widths are `[inputs, hidden..., outputs]`, e.g. `[64, 256, 256, 10]`.

# %%
# NBVAL_CHECK_OUTPUT
def mlp_macs(widths):
    """Multiply-accumulates per sample of an MLP with these layer widths."""
    ### BEGIN SOLUTION
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.mlp_macs(mlp_macs)
