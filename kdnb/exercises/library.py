"""Checks for the your-own-model exercises: a language model's loss, token by token, over the positions that
count, as `kdnb.engine.batches` reads sequence outputs and HuggingFace's causal LMs compute their loss."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, attempt


def _case(seed: int, batch: int, tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, tokens, vocab, generator=g)
    ids = torch.randint(0, vocab, (batch, tokens), generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[::2, tokens - 2:] = 0  # every other sequence ends in two padding positions
    return logits, ids, mask


def _next_token(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    counts = mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][counts].double(), ids[:, 1:][counts])


def next_token_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Report:
    """Check ``fn(logits, input_ids, attention_mask) -> loss``: a causal language model's mean cross-entropy,
    the logits at position t scored against the token at t + 1, over the positions whose next token is no
    padding (``attention_mask`` 1)."""
    report = Report("next_token_loss")
    for seed, (batch, tokens, vocab) in enumerate([(4, 6, 7), (3, 9, 5)]):
        logits, ids, mask = _case(seed, batch, tokens, vocab)
        what = f"next_token_loss(logits {tuple(logits.shape)}, input_ids {tuple(ids.shape)}, attention_mask)"
        value = attempt(report, fn, logits.clone(), ids.clone(), mask.clone())
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        mine = as_number(value)
        expected = float(_next_token(logits, ids, mask))
        everywhere = mask.new_ones(mask.shape)
        mistakes = [
            (float(F.cross_entropy(logits.reshape(-1, vocab)[mask.reshape(-1).bool()].double(),
                                   ids.reshape(-1)[mask.reshape(-1).bool()])),
             "the logits at t predict the NEXT token: compare logits[:, :-1] with input_ids[:, 1:]"),
            (float(_next_token(logits, ids, everywhere)),
             "leave out the positions whose next token is padding: keep attention_mask[:, 1:] == 1"),
            (float(F.cross_entropy(logits[:, :-1][mask[:, :-1].bool()].double(), ids[:, 1:][mask[:, :-1].bool()])),
             "the mask that counts is the next token's: attention_mask[:, 1:], not [:, :-1]"),
        ]
        if mine is None:
            report.wrong(what, f"return a number (a one-element tensor), got {type(value).__name__}")
        elif abs(mine - expected) < 1e-5:
            report.ok(f"{what} = {expected:.4f}")
        else:
            hint = next((h for wrong, h in mistakes if abs(mine - wrong) < 1e-5), None)
            report.wrong(what, hint or f"got {mine:.4f}, expected {expected:.4f}: the mean cross-entropy of "
                         "logits[:, :-1] against input_ids[:, 1:] where attention_mask[:, 1:] == 1")
    return report
