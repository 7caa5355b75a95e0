# %% [markdown] tags=["stub-only"]
# # Exercises: distillation
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: distillation — solutions
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
# ## Exercise 1: soft labels
#
# Soft labels are the teacher's probabilities softened by a temperature $T$:
# $p_i^T = \exp(z_i/T) / \sum_j \exp(z_j/T)$, for logits $z$ of shape (batch, classes).

# %%
# NBVAL_CHECK_OUTPUT
def soft_labels(logits, temperature):
    """softmax(logits / T) over the classes."""
    ### BEGIN SOLUTION
    return F.softmax(logits / temperature, dim=1)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.soft_labels(soft_labels)


# %% [markdown]
# ## Exercise 2: the distillation loss
#
# $$\mathcal{L} = \alpha\,\mathrm{CE}(y, s) + (1-\alpha)\,T^2\,\mathrm{KL}(p^T_t \,\|\, p^T_s)$$
#
# with the batch mean of each term. `F.kl_div(input, target)` computes $\mathrm{KL}(target \,\|\, \cdot)$
# and wants the student's **log**-probabilities as `input`; use `reduction="batchmean"`.

# %%
# NBVAL_CHECK_OUTPUT
def kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(teacher^T || student^T)."""
    ### BEGIN SOLUTION
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                    reduction="batchmean")
    return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * T**2 * soft
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.kd_loss(kd_loss)


# %% [markdown]
# ## Exercise 3: gap closure
#
# Did distillation help? Compare with the same student trained from scratch:
# gap closure $= (\text{distilled} - \text{scratch}) / (\text{teacher} - \text{scratch})$ in accuracy.
# When the scratch student is already as good as the teacher there is no gap: return `None`.

# %%
# NBVAL_CHECK_OUTPUT
def gap_closure(teacher_acc, scratch_acc, distilled_acc):
    """Share of the teacher-scratch gap that distillation closed (None when there is no gap)."""
    ### BEGIN SOLUTION
    if teacher_acc <= scratch_acc:
        return None
    return (distilled_acc - scratch_acc) / (teacher_acc - scratch_acc)
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.gap_closure(gap_closure)
