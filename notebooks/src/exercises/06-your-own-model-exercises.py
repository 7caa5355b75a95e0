# %% [markdown] tags=["stub-only"]
# # Exercises: your own model
#
# Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
# and the check under it says what is right and what is wrong, with a hint. Solutions are in the
# `solutions/` folder: try first!

# %% [markdown] tags=["solution-only"]
# # Exercises: your own model — solutions
#
# One solution of each exercise; every check passes. Other correct answers exist.

# %%
import torch
import torch.nn.functional as F

from kdnb.exercises import check

torch.set_num_threads(1)

# %% [markdown]
# ## Exercise 1: a language model's loss, token by token
#
# A causal language model (GPT-2, LLaMA) outputs logits of shape `(batch, tokens, vocab)`: at position `t` it
# predicts the token at `t + 1`. Its loss is the mean cross-entropy over the positions that count: each
# position's logits against the **next** token, leaving out the positions whose next token is padding
# (`attention_mask` 0 there). It is what HuggingFace computes from `labels`, and what `kdnb.measure` turns into
# a perplexity, `exp(loss)`.
#
# Hint: `logits[:, :-1]` are the predictions that have a next token, `input_ids[:, 1:]` those next tokens, and a
# boolean mask of shape `(batch, tokens - 1)` picks rows out of both.

# %%
# NBVAL_CHECK_OUTPUT
def next_token_loss(logits, input_ids, attention_mask):
    ### BEGIN SOLUTION
    counts = attention_mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][counts], input_ids[:, 1:][counts])
    ### END SOLUTION
    ### STUB raise NotImplementedError  # your code here

check.next_token_loss(next_token_loss)
