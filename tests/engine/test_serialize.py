"""kdnb.save / kdnb.load: exact round trips without pickled code, compact sparse tensors, clear errors."""
from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize, prune

import kdnb
from kdnb import models
from kdnb.errors import KdnbError
from kdnb.engine.serialize import FORMAT_VERSION, file_size, read_metadata

BUILDERS = {
    "mlp": (lambda: models.mlp(64, [32, 16], 10, dropout=0.1), (5, 64)),
    "lenet_300_100": (lambda: models.lenet_300_100(64, 10, scale=0.2), (5, 64)),
    "cnn1d": (lambda: models.cnn1d(10, width=8), (5, 1, 40)),
    "cnn_bn": (lambda: models.cnn_bn(10, width=4), (5, 1, 8, 8)),
    "resnet_small": (lambda: models.resnet_small(10, width=4), (5, 1, 8, 8)),
    "mobile_cnn": (lambda: models.mobile_cnn(10, width=4), (5, 1, 8, 8)),
}


def trained_stats(net: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, then switch to eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(shape) * 2 + 1)
    return net.eval()


def round_trip(net: nn.Module, tmp_path, **load_kwargs) -> nn.Module:
    return kdnb.load(kdnb.save(net, tmp_path / "net.kdnb"), **load_kwargs)


def same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", BUILDERS)
def test_every_reference_model_is_rebuilt_without_code(name, tmp_path):
    build, shape = BUILDERS[name]
    torch.manual_seed(0)
    net = trained_stats(build(), shape)
    loaded = round_trip(net, tmp_path)
    assert type(loaded) is type(net) and loaded is not net
    assert str(loaded) == str(net)  # the same layers with the same settings
    assert not loaded.training
    assert same_outputs(net, loaded, shape)
    for key, tensor in net.state_dict().items():  # running stats and num_batches_tracked included
        assert torch.equal(tensor, loaded.state_dict()[key]), key


def test_file_loads_with_plain_weights_only_torch_load(tmp_path):
    path = kdnb.save(models.mlp(4, [3], 2), tmp_path / "m.kdnb")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "kdnb" and payload["version"] == FORMAT_VERSION


def test_mode_and_dtype_are_kept(tmp_path):
    net = models.mlp(8, [300], 3).double()
    net[2].eval()  # a mixed-mode model: training at the top, one submodule in eval
    loaded = round_trip(net, tmp_path)
    assert loaded.training and not loaded[2].training
    assert loaded[1].weight.dtype == torch.float64
    x = torch.randn(2, 8, dtype=torch.float64)
    assert torch.equal(net(x), loaded(x))


def test_sparse_tensors_are_exact_and_compact(tmp_path):
    layer = nn.Linear(100, 100)
    with torch.no_grad():
        w = torch.randn(100, 100)
        w[torch.rand(100, 100) < 0.9] = 0
        w[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        layer.weight.copy_(w)
    loaded = round_trip(layer, tmp_path)
    assert torch.equal(loaded.weight.isnan(), layer.weight.isnan())
    finite = ~layer.weight.isnan()
    assert torch.equal(loaded.weight[finite], layer.weight[finite])
    stored = torch.load(tmp_path / "net.kdnb", weights_only=True)["tensors"]["weight"]
    assert set(stored) == {"shape", "mask", "values"} and stored["mask"].dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_sparse_round_trip_other_dtypes(dtype, tmp_path):
    layer = nn.Linear(32, 32).to(dtype)
    with torch.no_grad():
        layer.weight[torch.rand(32, 32) < 0.8] = 0
    loaded = round_trip(layer, tmp_path)
    assert loaded.weight.dtype == dtype and torch.equal(loaded.weight, layer.weight)


def test_file_at_90_percent_sparsity_is_5x_smaller_than_dense(tmp_path):
    net = models.lenet_300_100(64, 10)
    weights = [(m, "weight") for m in net if isinstance(m, nn.Linear)]
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=0.9)
    path = kdnb.save(net, tmp_path / "sparse.kdnb")
    assert path.stat().st_size == file_size(net)
    assert file_size(net, compact=False) >= 5 * path.stat().st_size


def test_pruning_masks_are_folded_into_a_plain_model(tmp_path):
    torch.manual_seed(0)
    net = trained_stats(models.cnn_bn(10, width=4), (4, 1, 8, 8))
    prune.l1_unstructured(net[0], "weight", amount=0.7)
    prune.random_unstructured(net[3], "weight", amount=0.5)
    prune.l1_unstructured(net[3], "weight", amount=0.3)  # two masks on one weight: a PruningContainer
    loaded = round_trip(net, tmp_path)
    assert not any(name.endswith(("_orig", "_mask")) for name in loaded.state_dict())
    assert not loaded[0]._forward_pre_hooks
    assert same_outputs(net, loaded, (4, 1, 8, 8))


class ZeroSmall(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (w.abs() > 0.1)


def test_parametrizations_are_folded(tmp_path):
    net = models.mlp(16, [32], 4)
    parametrize.register_parametrization(net[1], "weight", ZeroSmall())
    loaded = round_trip(net, tmp_path)
    assert type(loaded[1]) is nn.Linear and not parametrize.is_parametrized(loaded[1])
    assert same_outputs(net, loaded, (3, 16))


def structurally_pruned(net: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    example = torch.randn(shape)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[last])
    pruner.step()
    return net


@pytest.mark.parametrize("name", ["resnet_small", "mobile_cnn", "mlp"])
def test_structurally_pruned_model_is_rebuilt_at_its_new_shapes(name, tmp_path):
    build, shape = BUILDERS[name]
    torch.manual_seed(0)
    net = structurally_pruned(trained_stats(build(), shape), shape)
    original = build()
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in original.parameters())
    loaded = round_trip(net, tmp_path)
    assert str(loaded) == str(net)
    assert same_outputs(net, loaded, shape)


class UserNet(nn.Module):
    """A user's own class: not rebuildable from the file, loads into a skeleton."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_user_class_needs_a_skeleton(tmp_path):
    torch.manual_seed(0)
    net = trained_stats(UserNet(), (4, 1, 6, 6))
    path = kdnb.save(net, tmp_path / "user.kdnb")
    with pytest.raises(KdnbError, match=r"model=UserNet\(") as error:
        kdnb.load(path)
    assert "\n" not in str(error.value)
    skeleton = UserNet()
    loaded = kdnb.load(path, model=skeleton)
    assert loaded is skeleton and not loaded.training
    assert same_outputs(net, loaded, (4, 1, 6, 6))


def test_structurally_pruned_user_class_resizes_its_skeleton(tmp_path):
    torch.manual_seed(0)
    net = structurally_pruned(trained_stats(UserNet(), (4, 1, 6, 6)), (4, 1, 6, 6))
    assert net.conv.out_channels == 4
    loaded = kdnb.load(kdnb.save(net, tmp_path / "user.kdnb"), model=UserNet())
    assert (loaded.conv.out_channels, loaded.bn.num_features, loaded.head.in_features) == (4, 4, 4)
    assert same_outputs(net, loaded, (4, 1, 6, 6))


def test_wrong_skeleton_is_a_one_line_error_and_left_untouched(tmp_path):
    path = kdnb.save(UserNet(), tmp_path / "user.kdnb")
    wrong = models.mlp(4, [3], 2)
    before = copy.deepcopy(wrong.state_dict())
    with pytest.raises(KdnbError, match="do not fit model=") as error:
        kdnb.load(path, model=wrong)
    assert "\n" not in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())


def test_shared_module_stays_shared(tmp_path):
    layer = nn.Linear(6, 6)
    net = nn.Sequential(layer, nn.ReLU(), layer)
    loaded = round_trip(net, tmp_path)
    assert loaded[0] is loaded[2]
    assert same_outputs(net, loaded, (2, 6))


def test_more_whitelisted_layers_round_trip(tmp_path):
    net_1d = nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding="valid", bias=False), nn.BatchNorm1d(4, momentum=None), nn.GELU("tanh"),
        nn.MaxPool1d(2, ceil_mode=True), nn.AvgPool1d(2, count_include_pad=False), nn.AdaptiveAvgPool1d(3),
        nn.Flatten(), nn.LayerNorm(12), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.2), nn.Identity(),
        nn.Dropout(0.3), nn.Linear(12, 5),
    ).eval()
    net_2d = nn.Sequential(
        nn.Conv2d(1, 3, (3, 1), padding=(1, 0), dilation=1, padding_mode="reflect"), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=1), nn.AvgPool2d(2, divisor_override=3), nn.AdaptiveAvgPool2d((None, 2)),
        nn.BatchNorm2d(3, affine=False), nn.Flatten(0),
    ).eval()
    for net, shape in [(net_1d, (3, 2, 30)), (net_2d, (1, 1, 9, 9))]:
        loaded = round_trip(net, tmp_path)
        assert str(loaded) == str(net)
        assert same_outputs(net, loaded, shape)
    if "bias" in inspect.signature(nn.BatchNorm1d).parameters:  # recent torch: BatchNorm without a bias
        net = nn.Sequential(nn.BatchNorm1d(4, bias=False)).eval()
        assert same_outputs(net, round_trip(net, tmp_path), (3, 4))
    container = nn.ModuleList([nn.Linear(2, 2), models.Residual(nn.Linear(2, 2), nn.Linear(2, 2))])
    loaded = round_trip(container, tmp_path)
    assert str(loaded) == str(container)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in container.state_dict().items())


def test_metadata_round_trip_and_bad_metadata(tmp_path):
    meta = {"accuracy": 0.9, "tags": ["kd", 1, None, True], "nested": {"t": 4.0}}
    path = kdnb.save(models.mlp(4, [3], 2), tmp_path / "m.kdnb", metadata=meta)
    assert read_metadata(path) == meta
    with pytest.raises(KdnbError, match=r"metadata\['x'\] is a Tensor"):
        kdnb.save(models.mlp(4, [3], 2), tmp_path / "m.kdnb", metadata={"x": torch.ones(1)})
    with pytest.raises(KdnbError, match="metadata should be a dict"):
        kdnb.save(models.mlp(4, [3], 2), tmp_path / "m.kdnb", metadata=[1])


class Boom:
    """If load ever unpickled this, it would run code."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran')",))


@pytest.mark.parametrize("content, match", [
    (b"not a torch file at all", "is not a kdnb file"),
    ("state_dict", "looks like a state_dict"),
    ("pickle", "is not a kdnb file"),
    ("newer", "newer kdnb"),
    ("damaged", r"is damaged: tensor .weight. has shape \[3, 3\] but its layer.s config makes it \[2, 2\]"),
])
def test_files_that_are_not_kdnb_files(content, match, tmp_path):
    path = tmp_path / "bad.kdnb"
    if content == "state_dict":
        torch.save(nn.Linear(2, 2).state_dict(), path)
    elif content == "pickle":
        path.write_bytes(pickle.dumps(Boom(), protocol=2))
    elif content == "damaged":  # a spec that does not match its tensors
        kdnb.save(nn.Linear(2, 2), path)
        payload = torch.load(path, weights_only=True)
        payload["tensors"]["weight"] = torch.zeros(3, 3)
        torch.save(payload, path)
    elif content == "newer":
        torch.save({"format": "kdnb", "version": FORMAT_VERSION + 1, "spec": {}, "tensors": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(KdnbError, match=match) as error:
        kdnb.load(path)
    assert "\n" not in str(error.value)


def test_bad_arguments_are_one_line_errors(tmp_path):
    net = models.mlp(4, [3], 2)
    cases = [
        (lambda: kdnb.save("not a model", tmp_path / "m.kdnb"), "should be a torch.nn.Module"),
        (lambda: kdnb.save(net, 42), "path should be a file name"),
        (lambda: kdnb.save(net, tmp_path / "missing" / "m.kdnb"), "does not exist; create it first"),
        (lambda: kdnb.save(net, tmp_path), "is a directory"),
        (lambda: kdnb.load(tmp_path / "nothing.kdnb"), "no such file"),
        (lambda: kdnb.load(tmp_path), "is a directory"),
        (lambda: kdnb.load(kdnb.save(net, tmp_path / "m.kdnb"), model="net"), "model= should be a torch.nn.Module"),
    ]
    for call, match in cases:
        with pytest.raises(KdnbError, match=match) as error:
            call()
        assert "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["m.kdnb"]  # no partial files left behind


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_round_trip(tmp_path):
    net = trained_stats(models.resnet_small(10, width=4), (4, 1, 8, 8)).cuda()
    loaded = round_trip(net, tmp_path)
    assert next(loaded.parameters()).device.type == "cpu"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x.cuda()).cpu(), loaded(x), atol=1e-5)
        assert torch.equal(net.cpu()(x), loaded(x))


def test_a_class_registered_as_rebuildable_loads_without_its_code(tmp_path):
    """Models register what load may rebuild: a user's class decorated with @kdnb.models.rebuildable is
    rebuilt from the file (its arguments read off the saved instance), with no model= given."""
    from kdnb import models
    from kdnb.engine import serialize

    @models.rebuildable("width")
    class Scaled(torch.nn.Module):
        def __init__(self, width: int = 1):
            super().__init__()
            self.width = width
            self.scale = torch.nn.Parameter(torch.arange(width, dtype=torch.float32))

        def forward(self, x):
            return x * self.scale

    try:
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), Scaled(4))
        path = serialize.save(net, tmp_path / "scaled.kdnb")
        loaded = serialize.load(path)
        assert type(loaded[1]) is Scaled and loaded[1].width == 4
        x = torch.randn(2, 3)
        assert torch.equal(loaded(x), net(x))
    finally:
        del models.REBUILDABLE[Scaled]
