"""The exercise checks: a correct answer passes, a stub is "not done yet", and each usual mistake gets
the hint that names it (never a bare False)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdnb
from kdnb.exercises import check


def stub(*args):
    raise NotImplementedError


def ellipsis(*args):
    ...  # noqa: the body a student has not written yet returns None


def kd_right(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T**2 * soft


def kd_with(mistake):
    def loss(s, t, y, T, alpha):
        ce = F.cross_entropy(s, y)
        log_ps, log_pt = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
        kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
        if mistake == "T^4":
            return alpha * ce + (1 - alpha) * T**4 * kl
        if mistake == "no T^2":
            return alpha * ce + (1 - alpha) * kl
        if mistake == "swapped alpha":
            return (1 - alpha) * ce + alpha * T**2 * kl
        if mistake == "reversed KL":
            return alpha * ce + (1 - alpha) * T**2 * F.kl_div(log_pt, log_ps, reduction="batchmean", log_target=True)
        if mistake == "no temperature":
            return alpha * ce + (1 - alpha) * T**2 * F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1),
                                                               reduction="batchmean", log_target=True)
        if mistake == "probabilities":  # F.kl_div given softmax where it wants log_softmax
            return alpha * ce + (1 - alpha) * T**2 * F.kl_div(log_ps.exp(), log_pt.exp(), reduction="batchmean")
        if mistake == "probabilities, default reduction":
            return alpha * ce + (1 - alpha) * T**2 * F.kl_div(log_ps.exp(), log_pt.exp())
        if mistake == "per sample":
            return (log_pt.exp() * (log_pt - log_ps)).sum(1)
        raise AssertionError(mistake)

    return loss


CASES = {
    "soft_labels": (lambda z, T: F.softmax(z / T, dim=1), [
        (lambda z, T: F.softmax(z, dim=1), "divide the logits by the temperature"),
        (lambda z, T: F.softmax(z / T, dim=0), "take the softmax over the classes, dim=1"),
        (lambda z, T: F.log_softmax(z / T, dim=1), "log-probabilities"),
        (lambda z, T: F.softmax(z * T, dim=1), "multiplied the logits by T"),
    ]),
    "kd_loss": (kd_right, [
        (kd_with("T^4"), "you multiplied by T^2 twice (the soft term is 16x too big)"),
        (kd_with("no T^2"), "multiply the KL by T^2, so its gradients keep their size whatever T"),
        (kd_with("probabilities"), "F.kl_div expects LOG-probabilities as its input"),
        (kd_with("probabilities, default reduction"), "F.kl_div expects LOG-probabilities as its input: pass "
                                                      "F.log_softmax(student / T, dim=1), not softmax; and "
                                                      "reduction='mean' divides by batch x classes"),
        (kd_with("swapped alpha"), "alpha weights the HARD-label term"),
        (kd_with("reversed KL"), "the KL is the wrong way round"),
        (kd_with("no temperature"), "divide both the student's and the teacher's logits by T"),
        (kd_with("per sample"), "return the batch mean"),
    ]),
    "gap_closure": (lambda t, s, d: (d - s) / (t - s) if t > s else None, [
        (lambda t, s, d: 100 * (d - s) / (t - s) if t > s else None, "not a percentage"),
        (lambda t, s, d: (s - d) / (t - s) if t > s else None, "the sign is flipped"),
        (lambda t, s, d: (d - s) / (t - s), "return None before dividing"),
    ]),
    "l1_importance": (lambda w: w.abs(), [
        (lambda w: w, "take the magnitude"),
        (lambda w: w.abs_(), "changed its input in place"),
        (lambda w: w.abs().sum(), "one score per weight"),
    ]),
    "taylor_importance": (lambda w, g2: w.pow(2) * g2, [
        (lambda w, g2: w * g2, "square the weight too"),
        (lambda w, g2: w.pow(2) * g2.pow(2), "grad_sq is already the squared gradient"),
    ]),
    "hessian_importance": (lambda w, h: 0.5 * h * w.pow(2), [
        (lambda w, h: h * w.pow(2), "has a 1/2"),
        (lambda w, h: 0.5 * h * w, "square the weight"),
    ]),
    "obs_update": (lambda w, inv, q: w - w[q] / inv[q, q] * inv[:, q], [
        (lambda w, inv, q: torch.where(torch.arange(len(w)) == q, 0.0, w).to(w.dtype), "only zeroes w_q"),
        (lambda w, inv, q: w + w[q] / inv[q, q] * inv[:, q], "the sign is flipped"),
        (lambda w, inv, q: w - w[q] * inv[:, q], "divide by [H^-1]_qq"),
    ]),
    "magnitude_mask": (lambda w, s: w.abs() > w.abs().flatten().kthvalue(round(s * w.numel())).values, [
        (lambda w, s: w.abs() <= w.abs().flatten().kthvalue(round(s * w.numel())).values, "fraction REMOVED"),
        (lambda w, s: w > w.flatten().kthvalue(round(s * w.numel())).values, "ranked by signed value"),
        (lambda w, s: w.abs() < w.abs().flatten().kthvalue(w.numel() - round(s * w.numel()) + 1).values,
         "kept the smallest weights"),
    ]),
    "sparsity": (lambda m: sum(int((l.weight == 0).sum()) for l in m if isinstance(l, nn.Linear))
                 / sum(l.weight.numel() for l in m if isinstance(l, nn.Linear)), [
        (lambda m: sum(int((p == 0).sum()) for p in m.parameters()) / sum(p.numel() for p in m.parameters()),
         "counted the biases"),
        (lambda m: sum(int((l.weight != 0).sum()) for l in m if isinstance(l, nn.Linear))
         / sum(l.weight.numel() for l in m if isinstance(l, nn.Linear)), "density"),
    ]),
    "mlp_macs": (lambda widths: sum(a * b for a, b in zip(widths, widths[1:])), [
        (lambda widths: sum(a * b + b for a, b in zip(widths, widths[1:])), "you counted the biases"),
        (lambda widths: 2 * sum(a * b for a, b in zip(widths, widths[1:])), "that is FLOPs"),
    ]),
    "recovered_fraction": (lambda o, p, r: (r - p) / (o - p), [
        (lambda o, p, r: r / o, "the LOST accuracy"),
        (lambda o, p, r: (o - r) / (o - p), "still missing"),
    ]),
}


def shrink_right(fc1, fc2, keep):
    new1, new2 = nn.Linear(fc1.in_features, len(keep)), nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep]), new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep]), new2.bias.copy_(fc2.bias)
    return new1, new2


def shrink_columns(fc1, fc2, keep):
    return nn.Linear(len(keep), fc1.out_features), fc2


def shrink_no_bias(fc1, fc2, keep):
    new1, new2 = shrink_right(fc1, fc2, keep)
    with torch.no_grad():
        new1.bias.zero_()
    return new1, new2


def shrink_in_place(fc1, fc2, keep):
    fc1.weight.data = fc1.weight.data[keep]
    return fc1, fc2


def heads_of(outputs, heads):
    return outputs.view(outputs.shape[0], outputs.shape[1], heads, -1).norm(dim=-1)


def block_right(tokens, dim, heads, head_dim, hidden):
    inner = heads * head_dim
    return tokens * (3 * dim * inner + inner * dim + 2 * dim * hidden) + 2 * tokens * tokens * inner


CASES["head_importance"] = (lambda o, h: heads_of(o, h).mean(1).pow(2).sum(0).sqrt(), [
    (lambda o, h: heads_of(o, h).sum(1).pow(2).sum(0).sqrt(), "not their mean: divide by T"),
    (lambda o, h: heads_of(o, h).mean(1).sum(0), "aggregated by an L2 norm"),
    (lambda o, h: o.view(o.shape[0], o.shape[1], h, -1).mean(1).norm(dim=-1).pow(2).sum(0).sqrt(),
     "each token's norm over the head's dimensions first"),
    (lambda o, h: o.view(o.shape[0], o.shape[1], -1, h).norm(dim=2).mean(1).pow(2).sum(0).sqrt(),
     "head after head"),
])
CASES["block_macs"] = (block_right, [
    (lambda t, d, h, hd, n: t * (3 * d * h * hd + h * hd * d + 2 * d * n), "the attention itself multiplies too"),
    (lambda *a: 2 * block_right(*a), "that is FLOPs"),
    (lambda t, d, h, hd, n: block_right(t, d, h, hd, n) - 2 * t * d * h * hd, "q, k AND v"),
    (lambda t, d, h, hd, n: block_right(t, d, h, hd, n) // t, "once per token"),
])


CASES["shrink_linear"] = (shrink_right, [
    (shrink_columns, "a hidden neuron is a ROW"),
    (shrink_no_bias, "keeps its bias"),
    (shrink_in_place, "build new nn.Linear layers"),
])


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_reference_answer_passes(name):
    report = getattr(check, name)(CASES[name][0])
    assert report.passed, report
    assert "Well done" in repr(report)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("body", [stub, ellipsis])
def test_an_unfilled_stub_is_not_done_yet(name, body):
    report = getattr(check, name)(body)
    assert not report.passed
    assert repr(report).startswith(f"{name}: not done yet"), report


@pytest.mark.parametrize("name, mistake, hint", [(name, fn, hint) for name, (_, wrong) in sorted(CASES.items())
                                                 for fn, hint in wrong])
def test_each_usual_mistake_gets_its_hint(name, mistake, hint):
    report = getattr(check, name)(mistake)
    assert not report.passed
    assert hint in " ".join(repr(report).split()), report  # the text wraps between words
    assert "hint:" in repr(report)
    assert hint in " ".join(report._repr_html_().split()).replace("&#x27;", "'")
    assert all(len(line) <= 100 for line in repr(report).splitlines())


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_exercise_counts_the_same_checks_whatever_the_answer(name):
    right, wrong = CASES[name]
    totals = {getattr(check, name)(answer).total for answer in [right, *(fn for fn, _ in wrong)]}
    assert len(totals) == 1, f"{name}: {totals} checks"


def test_the_report_is_coloured_html_with_a_text_fallback():
    passed, failed = check.soft_labels(CASES["soft_labels"][0]), check.soft_labels(lambda z, T: F.softmax(z, dim=1))
    assert "#2e7d32" in passed._repr_html_() and "#c62828" in failed._repr_html_()
    assert repr(failed).startswith("soft_labels: 1 of 3 checks pass")  # T=1 is right; T=4 wrong, the third waits
    assert "1 more check once the ones above pass" in repr(failed)


def test_a_crash_is_reported_with_the_error_and_the_input():
    report = check.soft_labels(lambda z, T: z.softmax(dim=3))
    assert not report.passed
    assert "IndexError" in repr(report) and "tensor(6, 10)" in repr(report)


def test_compression_checks_size_and_accuracy():
    train, val = kdnb.datasets.load("synthetic", batch_size=64, seed=0)
    torch.manual_seed(0)
    original = kdnb.models.mlp(20, [32], 4)
    kdnb.train(original, train, epochs=1, progress=False, plot=False)
    assert "not done yet" in repr(check.compression(None, original, val))
    assert "the original model itself" in repr(check.compression(original, original, val))

    sparse = kdnb.models.mlp(20, [32], 4)
    sparse.load_state_dict(original.state_dict())
    with torch.no_grad():
        for layer in (sparse[1], sparse[3]):
            small = layer.weight.abs() < layer.weight.abs().flatten().quantile(0.95)
            layer.weight[small] = 0
    report = check.compression(sparse, original, val, max_weights=0.1, max_drop=1.0)
    assert report.passed, report
    harsh = check.compression(sparse, original, val, max_weights=0.01, max_drop=1.0)
    assert "prune harder" in repr(harsh)
