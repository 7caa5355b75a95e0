# %% [markdown] tags=["stub-only"]
# # Exercises: prune, then distil
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: prune, then distil — solutions
#
# One solution of each exercise; every check passes. Other correct answers exist.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import kdnb
from kdnb.exercises import check

torch.set_num_threads(1)

train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)
kdnb.train(teacher, train, val=val, epochs=8, progress=False, plot=False)
teacher.eval();


# %% [markdown]
# ## Exercise 1: how much came back?
#
# Pruning drops the accuracy from `original` to `pruned`; fine-tuning or distillation brings it back to
# `recovered`. Which share of the **lost** accuracy came back?

# %%
# NBVAL_CHECK_OUTPUT
def recovered_fraction(original_acc, pruned_acc, recovered_acc):
    ### BEGIN SOLUTION
    return (recovered_acc - pruned_acc) / (original_acc - pruned_acc)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.recovered_fraction(recovered_fraction)

# %% [markdown]
# ## Exercise 2: the whole pipeline
#
# Compress the teacher to **at most 10 % non-zero weights** while losing **at most 3 points** of accuracy.
# Use `kdnb.prune` and `kdnb.distill` (see tutorial 04).

# %%
# NBVAL_CHECK_OUTPUT
# Your pipeline: prune the teacher so that at most 10 % of its weights are non-zero, then recover the
# accuracy by distilling from the teacher. Put the final model in `compressed`.
### BEGIN SOLUTION
pruned = kdnb.prune(teacher, sparsity=0.92, criterion="l1", data=train, val=val, progress=False,
                    plot=False)
recovered = kdnb.distill(teacher, pruned.model, train, val=val, epochs=10, lr=3e-3, progress=False,
                         plot=False)
compressed = recovered.student
### END SOLUTION
### STUB compressed = None  # your code here

check.compression(compressed, teacher, val, max_weights=0.1, max_drop=0.03)
