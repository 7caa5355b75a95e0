"""Adding a criterion touches one place: one `register` call brings its formula and a statistic no other criterion
reads, and every verb that reads the registry knows it (DESIGN.md: one registry per family of methods)."""

import pytest
import torch

import kdnb
from kdnb.engine.prune import Criterion, Statistic, register
from kdnb.engine.prune.score import criteria
from kdnb.errors import KdnbError


def row_share(weight: torch.Tensor, row_norm: torch.Tensor) -> torch.Tensor:
    r"""A weight's share of its output row: :math:`s_{ij} = |w_{ij}| / \lVert w_i \rVert_2`."""
    return weight.abs() / row_norm


@pytest.fixture
def registered():
    """The criterion "row_share" with its new statistic "row_norm", registered for one test."""
    reads = []

    def row_norms(ctx: criteria.Context) -> dict[str, tuple]:
        reads.append(ctx.structured)
        return {name: (w, w.reshape(len(w), -1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (w.dim() - 1)))
                for name, w in ctx.scored().items()}

    record = register(Criterion(name="row_share", formula=row_share, label="row share", colour="tab:brown",
                                statistic=Statistic(name="row_norm", estimate=row_norms), structured=False))
    yield record, reads
    del criteria.REGISTRY["row_share"]


def test_a_registered_criterion_with_a_new_statistic_prunes(registered):
    record, reads = registered
    net = kdnb.models.mlp(8, [16], 4)
    result = kdnb.prune(net, 0.5, criterion="row_share", progress=False, plot=False)
    assert reads == [False] and result.criterion == "row_share" and result.sparsity == pytest.approx(0.5, abs=0.01)
    weights = {n: p.detach() for n, p in net.named_parameters() if n.endswith("weight")}
    shares = {n: row_share(w, w.norm(dim=1, keepdim=True)) for n, w in weights.items()}
    removed = torch.cat([shares[n][~m.cpu()] for n, m in result.masks.items()])
    kept = torch.cat([shares[n][m.cpu()] for n, m in result.masks.items()])
    assert float(removed.max()) <= float(kept.min())  # one global ranking by the new score: the lowest shares went
    assert "row_share" in criteria.names(structured=False) and "row_share" not in criteria.names(structured=True)


def test_the_registry_reads_the_new_record_everywhere(registered):
    record, _ = registered
    with pytest.raises(KdnbError, match="scores single weights; use structured=False"):
        kdnb.prune(kdnb.models.mlp(8, [16], 4), 0.5, criterion="row_share", structured=True,
                   example=torch.randn(2, 8), progress=False, plot=False)
    with pytest.raises(KdnbError, match="registered already"):
        register(record)
    assert criteria.REGISTRY["row_share"].statistic.name == "row_norm" and not record.needs_data
