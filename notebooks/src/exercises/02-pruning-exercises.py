# %% [markdown] tags=["stub-only"]
# # Exercises: importance criteria
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: importance criteria — solutions
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
# ## Exercise 1: L1 importance
#
# Magnitude pruning (Han et al. 2015) scores each weight by $s_k = |w_k|$. Return one score per weight.

# %%
# NBVAL_CHECK_OUTPUT
def l1_importance(weight):
    ### BEGIN SOLUTION
    return weight.abs()
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.l1_importance(l1_importance)


# %% [markdown]
# ## Exercise 2: Taylor importance
#
# Removing $w_k$ changes the loss by about $g_k w_k$. Molchanov et al. (2019) score it by the square,
# averaged over batches: $s_k = w_k^2 \, \overline{g_k^2}$. You get `grad_sq` $= \overline{g_k^2}$ already averaged.

# %%
# NBVAL_CHECK_OUTPUT
def taylor_importance(weight, grad_sq):
    ### BEGIN SOLUTION
    return weight.pow(2) * grad_sq
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.taylor_importance(taylor_importance)


# %% [markdown]
# ## Exercise 3: Optimal Brain Damage
#
# At a minimum the gradient vanishes, and setting $w_k$ to zero raises the loss by about
# $s_k = \tfrac12 h_{kk} w_k^2$ (LeCun et al. 1990), with $h_{kk}$ the Hessian's diagonal.

# %%
# NBVAL_CHECK_OUTPUT
def hessian_importance(weight, hessian_diag):
    ### BEGIN SOLUTION
    return 0.5 * hessian_diag * weight.pow(2)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.hessian_importance(hessian_importance)


# %% [markdown]
# ## Exercise 4: Optimal Brain Surgeon's update
#
# OBD only removes. Optimal Brain Surgeon (Hassibi & Stork 1993) removes weight $q$ of one output row and moves
# the others to make up for it: $w \leftarrow w - \dfrac{w_q}{[H^{-1}]_{qq}}\, H^{-1} e_q$, where $H^{-1} e_q$
# is column $q$ of the inverse Hessian. For one layer with inputs $X$, $H = 2X^\top X$, and this is what
# `kdnb.prune(..., criterion="obs")` does row by row (tutorial 02). Return the new row; its $w_q$ must be 0.

# %%
# NBVAL_CHECK_OUTPUT
def obs_update(weight, inverse_hessian, q):
    ### BEGIN SOLUTION
    return weight - weight[q] / inverse_hessian[q, q] * inverse_hessian[:, q]
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.obs_update(obs_update)


# %% [markdown]
# ## Exercise 5: a magnitude mask
#
# Return a boolean mask of the weight's shape: `True` keeps a weight, `False` removes it. Remove the
# `round(sparsity * weight.numel())` weights of smallest magnitude. (`torch.topk` or `torch.kthvalue` help.)

# %%
# NBVAL_CHECK_OUTPUT
def magnitude_mask(weight, sparsity):
    ### BEGIN SOLUTION
    k = round(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
    return keep.view(weight.shape)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.magnitude_mask(magnitude_mask)
