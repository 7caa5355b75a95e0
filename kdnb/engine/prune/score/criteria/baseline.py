"""The baseline every criterion must beat: random scores, drawn from the run's seed."""
from __future__ import annotations

import torch

from kdnb.engine.prune.score.registry import Context, Criterion, Statistic, register


def random(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""The baseline: :math:`s_k \sim U(0, 1)`, independent of the weights."""
    return torch.rand(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)


def _generator(ctx: Context) -> dict[str, tuple]:
    generator = torch.Generator()  # its own: the user's global RNG is never drawn from
    generator.manual_seed(ctx.seed) if ctx.seed is not None else generator.seed()  # seed=None: unseeded
    if ctx.structured:  # one draw per channel
        return {g.root: (torch.zeros(g.size, dtype=torch.float64), generator) for g in ctx.groups}
    return {n: (w, generator) for n, w in ctx.scored().items()}


GENERATOR = Statistic(name="generator", drawn=True, estimate=_generator)

register(Criterion(name="random", formula=random, statistic=GENERATOR, label="random", colour="tab:gray",
                   channel=True))
