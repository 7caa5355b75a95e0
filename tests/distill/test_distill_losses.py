"""The distillation losses against their formulas, and the properties the papers rely on."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.engine.distill import losses

seeds = st.integers(0, 2**31 - 1)
temperatures = st.floats(0.5, 20.0)
fast = settings(max_examples=25, deadline=None)


def logits(seed, n=8, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale, torch.randn(n, c, generator=g) * scale,
            torch.randint(0, c, (n,), generator=g))


@fast
@given(seeds, temperatures)
def test_kd_of_identical_logits_is_zero(seed, temperature):
    s, _, _ = logits(seed)
    assert losses.soft_kl(s, s.clone(), temperature).abs() < 1e-5


@fast
@given(seeds, temperatures, st.floats(0.0, 1.0))
def test_kd_is_nonnegative(seed, temperature, alpha):
    s, t, y = logits(seed)
    assert losses.soft_kl(s, t, temperature) >= -1e-6
    assert losses.kd(s, t, y, temperature, alpha) >= -1e-6


@fast
@given(seeds, temperatures, st.floats(0.0, 1.0))
def test_kd_matches_its_formula(seed, temperature, alpha):
    s, t, y = logits(seed)
    p_t, p_s = F.softmax(t / temperature, 1), F.softmax(s / temperature, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -F.log_softmax(s, 1)[torch.arange(len(y)), y].mean()
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl
    assert torch.allclose(losses.kd(s, t, y, temperature, alpha), expected, rtol=1e-4, atol=1e-5)


def test_hard_ce_skips_unlabelled_rows():
    s, t, y = logits(0)
    y[::2] = losses.UNLABELLED
    assert torch.allclose(losses.hard_ce(s, y), F.cross_entropy(s[1::2], y[1::2]))
    none = torch.full_like(y, losses.UNLABELLED)
    s.requires_grad_(True)
    zero = losses.hard_ce(s, none)
    zero.backward()  # still part of the graph
    assert zero.item() == 0.0


@given(seeds, temperatures, st.floats(0.0, 1.0))
@fast
def test_the_every_row_labelled_path_is_the_same_formula_value_and_gradient(seed, temperature, alpha):
    """``labelled=True`` (no transfer set: torch's plain mean CE) changes no value and no gradient."""
    s, t, y = logits(seed)
    for loss in (lambda **k: losses.kd(s, t, y, temperature, alpha, **k),
                 lambda **k: losses.pseudo_label(s, t, y, alpha, **k),
                 lambda **k: losses.hard_ce(s, y, (y.flip(0), alpha), **k)):
        s.requires_grad_(True)
        plain, fast_path = loss(), loss(labelled=True)
        grads = [torch.autograd.grad(value, s)[0] for value in (plain, fast_path)]
        assert torch.allclose(plain, fast_path, rtol=1e-5, atol=1e-6)
        assert torch.allclose(*grads, rtol=1e-5, atol=1e-6)


def soft_grad_norm(s, t, temperature, squared):
    s = s.clone().requires_grad_(True)
    term = losses.soft_kl(s, t, temperature)
    (term if squared else term / temperature**2).backward()
    return s.grad.norm().item()


@pytest.mark.parametrize("seed", range(5))
def test_t_squared_keeps_the_soft_gradient_scale(seed):
    s, t, _ = logits(seed, scale=1.0)
    with_t2 = [soft_grad_norm(s, t, T, squared=True) for T in (4.0, 8.0, 16.0)]
    without = [soft_grad_norm(s, t, T, squared=False) for T in (4.0, 8.0, 16.0)]
    assert max(with_t2) / min(with_t2) < 1.5  # roughly constant across T
    assert without[0] / without[-1] > 10  # without the factor it shrinks like 1/T^2 (16x here)


@fast
@given(seeds, temperatures)
def test_dkd_decomposition(seed, temperature):
    """KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD per sample (Zhao et al. 2022, eq. 7), here with T^2."""
    s, t, y = logits(seed, n=1)
    p_t_target = F.softmax(t / temperature, 1)[0, y[0]]
    kd = losses.soft_kl(s, t, temperature)
    decomposed = losses.tckd(s, t, y, temperature) + (1 - p_t_target) * losses.nckd(s, t, y, temperature)
    assert torch.allclose(kd, decomposed, rtol=1e-3, atol=1e-4 * temperature**2)


@fast
@given(seeds, temperatures, st.floats(0.0, 4.0), st.floats(0.0, 10.0))
def test_dkd_matches_its_formula(seed, temperature, alpha, beta):
    s, t, y = logits(seed)
    s, t = s.double(), t.double()  # the reference in float64: 1 - p[y] cancels badly in float32
    rows = torch.arange(len(y))
    p_s, p_t = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    b_s = torch.stack([p_s[rows, y], 1 - p_s[rows, y]], 1)
    b_t = torch.stack([p_t[rows, y], 1 - p_t[rows, y]], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * temperature**2
    others = torch.ones_like(s, dtype=torch.bool)
    others[rows, y] = False
    q_s = F.softmax((s / temperature)[others].view(len(y), -1), 1)
    q_t = F.softmax((t / temperature)[others].view(len(y), -1), 1)
    nckd = (q_t * (q_t.log() - q_s.log())).sum(1).mean() * temperature**2
    expected = alpha * tckd + beta * nckd
    assert torch.allclose(losses.dkd(s.float(), t.float(), y, temperature, alpha, beta).double(), expected,
                          rtol=1e-3, atol=1e-4)


@fast
@given(seeds)
def test_fitnets_is_the_mean_squared_error(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 6, 10, generator=g), torch.randn(4, 6, 10, generator=g)
    assert torch.allclose(losses.fitnets(a, b), ((a - b) ** 2).sum() / a.numel())


@fast
@given(seeds, st.integers(1, 6))
def test_attention_map_and_at_match_their_formulas(seed, channels):
    g = torch.Generator().manual_seed(seed)
    a_s, a_t = torch.randn(3, channels, 5, 4, generator=g), torch.randn(3, 7, 5, 4, generator=g)

    def q(a):
        summed = (a.abs() ** 2).sum(1).reshape(len(a), -1)
        return summed / summed.norm(dim=1, keepdim=True)

    assert torch.allclose(losses.attention_map(a_s), q(a_s), atol=1e-6)
    assert torch.allclose(losses.attention_map(a_s).norm(dim=1), torch.ones(3))
    expected = torch.stack([(q(a_s)[i] - q(a_t)[i]).norm() for i in range(3)]).mean()
    assert torch.allclose(losses.at(a_s, a_t), expected, atol=1e-6)
    assert losses.at(a_t, a_t.clone()) < 1e-6
    assert losses.at(a_s, a_t) <= 2 + 1e-6  # the distance of two unit vectors


def test_docstrings_state_formula_and_paper():
    for fn, paper in ((losses.kd, "Hinton"), (losses.soft_kl, "Hinton"), (losses.fitnets, "Romero"),
                      (losses.at, "Zagoruyko"), (losses.attention_map, "Zagoruyko"), (losses.dkd, "Zhao"),
                      (losses.tckd, "Zhao"), (losses.nckd, "Zhao")):
        assert paper in fn.__doc__ and "=" in fn.__doc__, fn.__name__
    assert "disagree" in losses.kd.__doc__


def test_alpha_weights_the_hard_labels():
    s, t, y = logits(1)
    assert math.isclose(losses.kd(s, t, y, 4.0, alpha=1.0).item(), F.cross_entropy(s, y).item(), rel_tol=1e-6)
    assert math.isclose(losses.kd(s, t, y, 4.0, alpha=0.0).item(), losses.soft_kl(s, t, 4.0).item(), rel_tol=1e-6)


@fast
@given(seeds, temperatures)
def test_soft_labels_equal_the_formula_and_flatten_as_t_grows(seed, temperature):
    z, _, _ = logits(seed)
    p = losses.soft_labels(z, temperature)
    by_hand = torch.exp(z / temperature) / torch.exp(z / temperature).sum(dim=1, keepdim=True)
    assert torch.allclose(p, by_hand, atol=1e-6)
    hotter = losses.soft_labels(z, temperature * 2)
    assert (hotter.max(dim=1).values <= p.max(dim=1).values + 1e-6).all()
