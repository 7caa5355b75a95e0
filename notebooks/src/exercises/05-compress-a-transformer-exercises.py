# %% [markdown] tags=["stub-only"]
# # Exercises: compress a transformer
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: compress a transformer — solutions
#
# One solution of each exercise; every check passes. Other correct answers exist.

# %%
import torch

import kdnb
from kdnb.exercises import check

torch.set_num_threads(1)


# %% [markdown]
# ## Exercise 1: how much does a head matter?
#
# `outputs` holds the attention outputs of one layer, shaped `(samples, tokens, heads * head_dim)`: the input
# of the output projection, head after head (columns `0..head_dim-1` are head 0). Minitron scores head $h$ by
#
# $$s_h = \Big(\sum_n \big(\tfrac{1}{T}\textstyle\sum_t \lVert x_{n,t,h} \rVert_2\big)^2\Big)^{1/2}$$
#
# the norm over the head's dimensions, the mean over the $T$ tokens, then the L2 norm over the samples. Return
# one score per head (tutorial 05 computes it with a forward hook).

# %%
# NBVAL_CHECK_OUTPUT
def head_importance(outputs, heads):
    ### BEGIN SOLUTION
    samples, tokens, _ = outputs.shape
    per_head = outputs.view(samples, tokens, heads, -1).norm(dim=-1)  # (samples, tokens, heads)
    return per_head.mean(1).pow(2).sum(0).sqrt()
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.head_importance(head_importance)


# %% [markdown]
# ## Exercise 2: what a transformer block costs
#
# Count the multiply-accumulates of one pre-norm transformer block on a sequence of `tokens` tokens of `dim`
# channels: the fused `qkv` Linear (`dim` to `3 * heads * head_dim`), the attention ($QK^\top$, then the
# attention weights times $V$: each `tokens x tokens x head_dim` per head), the output projection
# (`heads * head_dim` to `dim`) and the MLP (`dim` to `hidden` to `dim`). A Linear costs `in * out` per token;
# LayerNorm, softmax and GELU are not counted. The check compares with `kdnb.measure` on a real block. Then
# look at the numbers: the tutorial's pruning went from 4 heads and 64 neurons at 32 channels to 3 heads and
# 40 neurons at 20 channels. Which part shrank most?

# %%
# NBVAL_CHECK_OUTPUT
def block_macs(tokens, dim, heads, head_dim, hidden):
    ### BEGIN SOLUTION
    inner = heads * head_dim
    linears = tokens * (dim * 3 * inner + inner * dim + dim * hidden + hidden * dim)
    attention = 2 * tokens * tokens * inner  # q k^T and (softmax) v, for every head
    return linears + attention
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.block_macs(block_macs)

# %%
# NBVAL_CHECK_OUTPUT
# Run this once your block_macs passes: the cost of one block before and after the tutorial's pruning.
### BEGIN SOLUTION
before, after = block_macs(17, 32, 4, 8, 64), block_macs(17, 20, 3, 8, 40)
print(f"one block: {before:,} -> {after:,} MACs ({before / after:.2f}x fewer)")
### END SOLUTION
### STUB # before, after = block_macs(17, 32, 4, 8, 64), block_macs(17, 20, 3, 8, 40)
### STUB # print(f"one block: {before:,} -> {after:,} MACs ({before / after:.2f}x fewer)")
