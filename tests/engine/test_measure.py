"""kdnb.measure and kdnb.compare: counts against their formulas, the model left untouched, clear errors."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb import models
from kdnb.errors import KdnbError
from kdnb.engine.evaluate import evaluate
from kdnb.engine.serialize import file_size

FAST = {"repeats": 2, "warmup": 1}


def loader(n: int = 40, features: int = 8, classes: int = 3, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_macs_of_a_linear_are_in_times_out_per_sample():
    m = kdnb.measure(nn.Linear(20, 7), torch.randn(5, 20), **FAST)
    assert m.macs == 20 * 7 == m.nonzero_macs
    assert m.params == 20 * 7 + 7 and m.accuracy is None and m.batch_size == 5


def test_macs_of_a_conv_follow_the_formula():
    # out_channels * out_h * out_w * (in_channels / groups) * k_h * k_w per sample
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    m = kdnb.measure(conv, torch.randn(3, 4, 10, 10), **FAST)
    assert m.macs == 6 * 5 * 5 * (4 // 2) * 3 * 3


def test_sparsity_counts_on_a_hand_made_layer():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1, 0, 2], [0, 0, 0, 3], [4, 0, 5, 0]]))  # 7 zeros of 12
        layer.bias.copy_(torch.tensor([0.0, 1, 0]))  # 2 zeros of 3, not in `sparsity`
    m = kdnb.measure(layer, torch.randn(2, 4), **FAST)
    assert (m.params, m.nonzero_params) == (15, 15 - 9)
    assert m.sparsity == pytest.approx(7 / 12)
    assert m.overall_sparsity == pytest.approx(9 / 15)
    assert m.macs == 12 and m.nonzero_macs == 5  # Linear MACs x weight density (Blalock et al. 2020)


def test_pruning_masks_count_as_the_weights_they_make():
    net = models.mlp(8, [32], 3)
    prune.l1_unstructured(net[1], "weight", amount=0.75)
    m = kdnb.measure(net, torch.randn(2, 8), **FAST)
    assert m.params == 8 * 32 + 32 + 32 * 3 + 3  # weight_orig and weight_mask are not extra parameters
    assert m.sparsity == pytest.approx(0.75 * 256 / (256 + 96))
    assert m.nonzero_macs == 64 + 96


def test_accuracy_bytes_and_batch_size():
    torch.manual_seed(0)
    net, data = models.mlp(8, [16], 3), loader()
    m = kdnb.measure(net, data, **FAST)
    assert m.accuracy == evaluate(net, data)["accuracy"]
    assert m.batch_size == 16  # the loader's first batch
    assert m.bytes == file_size(net) and m.bytes_dense == file_size(net, compact=False)
    assert kdnb.measure(net, data, batch_size=32, **FAST).batch_size == 32  # drawn from two batches
    assert kdnb.measure(net, data, batch_size=100, **FAST).batch_size == 100  # rows repeated
    assert kdnb.measure(net, torch.randn(3, 8), batch_size=7, **FAST).batch_size == 7


def test_measure_leaves_the_model_untouched():
    torch.manual_seed(0)
    net = models.cnn_bn(3, width=4)
    net[1].eval()  # mixed modes must come back as they were
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    modes = [m.training for m in net.modules()]
    state = copy.deepcopy(net.state_dict())
    data = DataLoader(TensorDataset(torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))), batch_size=6)
    kdnb.measure(net, data, **FAST)
    assert [m.training for m in net.modules()] == modes
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN running stats too
    assert all(p.requires_grad for p in net.parameters())


def test_repr_is_deterministic_apart_from_the_latency_line():
    torch.manual_seed(0)
    net, data = models.mlp(8, [16], 3), loader()
    first, second = repr(kdnb.measure(net, data, **FAST)), repr(kdnb.measure(net, data, **FAST))
    *stable, latency = first.splitlines()
    assert stable == second.splitlines()[:-1]
    assert re.fullmatch(rf"latency +[0-9.]+ ms/batch \(batch 16, cpu, {torch.get_num_threads()} threads?\)(; NOISY: .*)?", latency)
    assert "MACs            176 per sample" in first
    html = kdnb.measure(net, data, **FAST)._repr_html_()
    assert "<table>" in html and "ms/batch" in html
    assert kdnb.measure(net, data, **FAST).as_dict()["params"] == 8 * 16 + 16 + 16 * 3 + 3


def test_compare_ratios_are_to_the_first_model():
    torch.manual_seed(0)
    big, small, data = models.mlp(8, [64], 3), models.mlp(8, [16], 3), loader()
    pruned = copy.deepcopy(big)
    prune.l1_unstructured(pruned[1], "weight", amount=0.5)
    result = kdnb.compare({"big": big, "small": small, "pruned": pruned}, data, **FAST)
    rows = result.as_dict()
    assert [row["model"] for row in result.rows] == ["big", "small", "pruned"]
    assert rows["big"]["params_x"] == rows["big"]["macs_x"] == rows["big"]["bytes_x"] == 1.0
    assert rows["small"]["params_x"] == pytest.approx(rows["big"]["nonzero_params"] / rows["small"]["nonzero_params"])
    assert rows["small"]["macs_x"] == pytest.approx((8 * 64 + 64 * 3) / (8 * 16 + 16 * 3))
    assert rows["pruned"]["macs_x"] == pytest.approx((8 * 64 + 64 * 3) / (8 * 32 + 64 * 3))
    assert rows["small"]["speedup"] == pytest.approx(rows["big"]["latency_ms"] / rows["small"]["latency_ms"])
    text = repr(result).splitlines()
    assert text[0].split() == ["model", "accuracy", "params", "nonzeros", "sparsity", "MACs", "nz", "MACs",
                               "bytes", "params", "x", "MACs", "x", "bytes", "x"]
    assert text[-1].startswith("latency  big ") and "small" in text[-1]
    again = repr(kdnb.compare({"big": big, "small": small, "pruned": pruned}, data, **FAST)).splitlines()
    assert again[:-1] == text[:-1]  # only the latency line varies
    assert "<table>" in result._repr_html_()


def test_measure_on_another_device_name_of_the_same_device():
    net = nn.Linear(3, 2)
    assert kdnb.measure(net, torch.randn(2, 3), device="cpu", **FAST).device == "cpu"


def test_bad_input_is_a_one_line_error():
    net, data = models.mlp(8, [16], 3), loader()
    cases = [
        (lambda: kdnb.measure("net", data), "model should be a torch.nn.Module"),
        (lambda: kdnb.measure(net, [1, 2, 3]), "input batches as tensors"),
        (lambda: kdnb.measure(net, [[[1.0] * 8]]), "input batches as tensors"),
        (lambda: kdnb.measure(net, 3.0), "DataLoader"),
        (lambda: kdnb.measure(net, DataLoader(TensorDataset(torch.randn(0, 8)), batch_size=4)), "empty"),
        (lambda: kdnb.measure(net, torch.randn(2, 5)), "model failed on an input batch of shape"),
        (lambda: kdnb.measure(net, loader(classes=5)), "labels out of range"),
        (lambda: kdnb.measure(net, data, repeats=0), "repeats should be a positive integer"),
        (lambda: kdnb.measure(net, data, warmup=-1), "warmup should be a non-negative integer"),
        (lambda: kdnb.measure(net, data, batch_size=0), "batch_size should be a positive integer"),
        (lambda: kdnb.measure(net, data, device="tpu9"), "device"),
        (lambda: kdnb.compare([net], data), "models should be a non-empty dict"),
        (lambda: kdnb.compare({}, data), "models should be a non-empty dict"),
        (lambda: kdnb.compare({"a": net}, data, repeat=3), "did you mean 'repeats'"),
        (lambda: kdnb.compare({"a": net, "b": "x"}, data), r"models\['b'\] should be a torch.nn.Module"),
    ]
    for call, match in cases:
        with pytest.raises(KdnbError, match=match) as error:
            call()
        assert "\n" not in str(error.value), str(error.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_a_model_on_cuda():
    torch.manual_seed(0)
    net = models.cnn_bn(3, width=4).cuda()
    data = DataLoader(TensorDataset(torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))), batch_size=6)
    state = copy.deepcopy(net.state_dict())
    on_gpu = kdnb.measure(net, data, **FAST)
    on_cpu = kdnb.measure(net, data, device="cpu", **FAST)
    assert on_gpu.device.startswith("cuda:") and on_cpu.device == "cpu"
    assert next(net.parameters()).device.type == "cuda"  # measuring on the CPU used a copy
    assert (on_gpu.params, on_gpu.macs, on_gpu.bytes) == (on_cpu.params, on_cpu.macs, on_cpu.bytes)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_shared_and_masked_layers_are_counted_once_each():
    shared = nn.Linear(16, 16)
    with torch.no_grad():
        shared.weight[:8] = 0  # half zeros
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(16, 16), nn.Linear(16, 16))
    prune.l1_unstructured(net[3], "weight", amount=0.5)
    prune.l1_unstructured(net[4], "weight", amount=0.5)  # same shape as net[3]: a distinct folded weight
    m = kdnb.measure(net, torch.randn(2, 16), **FAST)
    assert m.params == 3 * (16 * 16 + 16)
    assert m.macs == 4 * 16 * 16  # the shared layer runs twice
    assert m.nonzero_macs == 4 * 16 * 16 // 2


class Jittery(nn.Module):
    """A model whose passes take 0 or 20 ms in turn: a machine busy half of the time."""

    def __init__(self):
        super().__init__()
        self.fc, self.calls = nn.Linear(4, 2), 0

    def forward(self, x):
        self.calls += 1
        if self.calls % 2:
            import time
            time.sleep(0.02)
        return self.fc(x)


def test_latency_is_the_median_of_warmed_up_repeats_and_a_large_spread_is_flagged():
    net = Jittery()
    m = kdnb.measure(net, torch.randn(3, 4), repeats=9, warmup=2)
    assert net.calls >= 2 + 9  # warm-up and repeats (and the MACs count and shape check)
    assert m.latency_spread > 0.25 and m.latency_noisy
    assert "NOISY" in m.latency_line() and "measure again" in m.latency_line()
    comparison = kdnb.compare({"jittery": Jittery(), "plain": nn.Linear(4, 2)}, torch.randn(3, 4), repeats=9, warmup=2)
    assert "NOISY" in comparison.latency_line()
