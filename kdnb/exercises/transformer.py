"""Checks for the transformer exercises: Minitron's head score, and what a transformer block costs.

A head matters as much as the activation it hands on (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation"); deleting heads and MLP neurons shrinks the matrices of a block, whose
multiply-accumulates `kdnb.measure` counts with torch.utils.flop_counter.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from kdnb.engine.prune.score import criteria
from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, as_tensor, attempt, close


def _head_outputs(seed: int, samples: int, tokens: int, heads: int, head_dim: int) -> torch.Tensor:
    return torch.randn(samples, tokens, heads * head_dim, generator=torch.Generator().manual_seed(seed))


def _minitron(outputs: torch.Tensor, heads: int) -> torch.Tensor:
    samples, tokens, _ = outputs.shape
    return criteria.activation([outputs.double().view(samples, tokens, heads, -1).norm(dim=-1)])


def head_importance(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Report:
    """Check ``fn(outputs, heads) -> scores``: ``outputs`` (samples, tokens, heads * head_dim) are the attention
    outputs that the output projection reads, head after head; the score of head ``h`` is Minitron's
    ``sqrt(sum_n (mean_t ||x[n, t, h]||_2) ** 2)``, the formula of kdnb's "activation" criterion."""
    report = Report("head_importance", checks=2)
    for seed, (samples, tokens, heads, head_dim) in enumerate([(6, 5, 4, 3), (3, 7, 2, 5)]):
        outputs = _head_outputs(seed, samples, tokens, heads, head_dim)
        what = f"head_importance(outputs of shape {tuple(outputs.shape)}, heads={heads})"
        value = attempt(report, fn, outputs.clone(), heads)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        mine = as_tensor(report, value, what, (heads,))
        if mine is None:
            continue
        expected = _minitron(outputs, heads)
        x = outputs.double()
        per_head = x.view(samples, tokens, heads, -1)
        mistakes = [
            (per_head.norm(dim=-1).sum(1).pow(2).sum(0).sqrt(), "sum over the tokens, not their mean: divide by T"),
            (per_head.norm(dim=-1).mean(1).sum(0), "the samples are aggregated by an L2 norm: sqrt(sum_n (...)**2)"),
            (per_head.norm(dim=-1).mean(1).pow(2).sum(0), "take the square root of the sum over samples"),
            (per_head.mean(1).norm(dim=-1).pow(2).sum(0).sqrt(),
             "take each token's norm over the head's dimensions first, then the mean over tokens"),
            (x.view(samples, tokens, -1, heads).norm(dim=2).mean(1).pow(2).sum(0).sqrt(),
             "the columns are head after head (0..head_dim-1 are head 0): view(samples, tokens, heads, head_dim)"),
        ]
        if close(mine, expected):
            report.ok(f"{what}: {', '.join(f'{v:.3f}' for v in expected.tolist())}")
        else:
            hint = next((h for wrong, h in mistakes if close(mine, wrong)), None)
            report.wrong(what, hint or f"expected {[round(v, 3) for v in expected.tolist()]}: per token the norm "
                         "over the head's dimensions, mean over tokens, then sqrt of the sum of squares over samples")
    return report


def block_macs(fn: Callable[[int, int, int, int, int], int]) -> Report:
    """Check ``fn(tokens, dim, heads, head_dim, hidden) -> MACs``: the multiply-accumulates of one pre-norm
    transformer block (`kdnb.models.TransformerBlock`: fused qkv, attention, proj, a 2-layer MLP) on one sequence,
    as `kdnb.measure` counts them (matrix products only; LayerNorm, softmax and GELU are not MACs)."""
    from kdnb.engine.measure import measure
    from kdnb.models import SelfAttention, TransformerBlock

    report = Report("block_macs", checks=3)
    for tokens, dim, heads, head_dim, hidden in ((17, 32, 4, 8, 64), (17, 20, 3, 8, 40), (5, 12, 2, 4, 24)):
        what = f"block_macs(tokens={tokens}, dim={dim}, heads={heads}, head_dim={head_dim}, hidden={hidden})"
        value = attempt(report, fn, tokens, dim, heads, head_dim, hidden)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        block = TransformerBlock(dim, heads)  # then the exercise's head_dim and hidden width
        block.attn = SelfAttention(dim, heads, head_dim)
        block.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        expected = measure(block, torch.zeros(1, tokens, dim), repeats=1, warmup=0).macs
        inner = heads * head_dim
        linears = tokens * (3 * dim * inner + inner * dim + 2 * dim * hidden)
        mine = as_number(value)
        if mine is None:
            report.wrong(what, f"return a number, got {type(value).__name__}")
        elif mine == expected:
            report.ok(f"{what} = {expected:,}, as kdnb.measure counts")
        elif mine == linears:
            report.wrong(what, "the attention itself multiplies too: q k^T and (softmax) v, tokens x tokens x "
                         "head_dim for each head, twice")
        elif mine == 2 * expected:
            report.wrong(what, "that is FLOPs (a multiply and an add each): MACs count each multiply-add once")
        elif mine == expected - 2 * tokens * dim * inner:
            report.wrong(what, "the qkv projection makes q, k AND v: 3 * heads * head_dim outputs per token")
        elif mine * tokens == expected or mine == expected // tokens:
            report.wrong(what, "every Linear runs once per token: multiply its in * out by the tokens")
        else:
            report.wrong(what, f"got {mine:,.0f}, expected {expected:,}: per token qkv dim*3*heads*head_dim, proj "
                         "heads*head_dim*dim, MLP 2*dim*hidden; plus 2*tokens*tokens*heads*head_dim for attention")
    return report
