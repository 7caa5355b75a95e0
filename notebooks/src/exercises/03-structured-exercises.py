# %% [markdown] tags=["stub-only"]
# # Exercises: deleting neurons
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: deleting neurons — solutions
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
# ## Exercise 1: delete hidden neurons
#
# Between `fc1 = Linear(6, 8)` and `fc2 = Linear(8, 3)` sit 8 hidden neurons. Keep only those in `keep`
# (a tensor of indices): build **new, smaller** layers. A neuron is a *row* of `fc1.weight`
# (out_features × in_features) with its bias, and a *column* of `fc2.weight`.

# %%
# NBVAL_CHECK_OUTPUT
def shrink_linear(fc1, fc2, keep):
    """New (fc1, fc2) with only the hidden neurons `keep`."""
    ### BEGIN SOLUTION
    new1, new2 = nn.Linear(fc1.in_features, len(keep)), nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    return new1, new2
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.shrink_linear(shrink_linear)


# %% [markdown]
# ## Exercise 2: what deleting saves
#
# Count the multiply-accumulates per sample of an MLP with layer widths `[inputs, hidden..., outputs]`
# (each `Linear(a, b)` does `a * b`). Then compare a 64-256-256-10 MLP with the same MLP after half of each
# hidden layer was deleted: the cost falls by much more than half. Why?

# %%
# NBVAL_CHECK_OUTPUT
def mlp_macs(widths):
    ### BEGIN SOLUTION
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.mlp_macs(mlp_macs)
