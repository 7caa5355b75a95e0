"""Issue 14, classes 6 and 7: every damaged .kdnb file is one clean KdnbError raised before anything is
allocated or the user's skeleton is touched; tied weights stay one Parameter through save -> load."""
from __future__ import annotations

import copy
import io
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from badinput import assert_clean_error, assert_unchanged, snapshot
from torch import nn
from torch.nn.utils import parametrize, prune

import kdnb
from kdnb import models
from kdnb.engine import file_checks, serialize
from kdnb.engine.serialize import FORMAT_VERSION


def sparse_mlp() -> nn.Sequential:
    """A 64-32-10 MLP whose first weight is 90 % zeros, so the file holds a compact entry '1.weight'."""
    torch.manual_seed(0)
    net = models.mlp(64, [32], 10, dropout=0.1)
    with torch.no_grad():
        net[1].weight[torch.rand(32, 64) < 0.9] = 0
    return net


def saved(tmp_path, net: nn.Module | None = None):
    return kdnb.save(sparse_mlp() if net is None else net, tmp_path / "model.kdnb")


def edited(tmp_path, edit, net: nn.Module | None = None):
    """Save a model, change its payload with ``edit(payload)`` and write it back as torch.save would."""
    path = saved(tmp_path, net)
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def raw(tmp_path, change):
    """Save a model, then change the file's bytes with ``change(data) -> data``."""
    path = saved(tmp_path)
    path.write_bytes(change(path.read_bytes()))
    return path


def record_start(data: bytes, suffix: str) -> int:
    """Where the bytes of the zip record whose name ends with ``suffix`` begin (after its local header)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def flipped(data: bytes, at: int, count: int = 16) -> bytes:
    out = bytearray(data)
    for i in range(at, at + count):
        out[i] ^= 0xFF
    return bytes(out)


def compressed_copy(path):
    """The same records deflated (as a zip tool would re-pack them): torch.save never writes that."""
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in records:
            archive.writestr(name, data)
    return path


def other_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    return path


def payload_of(tmp_path, obj):
    path = tmp_path / "model.kdnb"
    torch.save(obj, path)
    return path


def cnn(tmp_path, edit):
    return edited(tmp_path, edit, models.cnn_bn(10, width=4))


def tied_net() -> nn.Sequential:
    net = models.mlp(64, [64, 64], 10)
    net[3].weight = net[1].weight
    return net


def node(payload, path: str = "") -> dict:
    found = payload["spec"]
    for name in path.split(".") if path else ():
        found = found["children"][name]
    return found


def nested(depth: int) -> dict:
    spec = {"class": "torch.nn.Identity", "config": {}, "training": True, "children": {}}
    for _ in range(depth):
        spec = {"class": "torch.nn.Sequential", "config": {}, "training": True, "children": {"0": spec}}
    return spec


def set_in(mapping: dict, key, value) -> None:
    mapping[key] = value


class Boom:
    """If load ever unpickled this, it would run code."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran')",))


def compact(payload) -> dict:
    return payload["tensors"]["1.weight"]


# name: (make the damaged file from tmp_path, regex the one-line error must match)
DAMAGED = {
    # --- not a file, not a kdnb file ---
    "missing file": (lambda d: d / "nothing.kdnb", "no such file"),
    "a directory": (lambda d: d, "is a directory"),
    "empty file": (lambda d: raw(d, lambda b: b""), "is empty"),
    "random bytes": (lambda d: raw(d, lambda b: random.Random(0).randbytes(len(b))), "is not a kdnb file"),
    "a text file": (lambda d: raw(d, lambda b: b"hello, world\n"), "is not a kdnb file"),
    "pickle that runs code": (lambda d: raw(d, lambda b: pickle.dumps(Boom(), protocol=2)), "is not a kdnb file"),
    "a whole module saved by torch.save": (lambda d: payload_of(d, nn.Linear(2, 2)), "pickled Python objects"),
    "a plain state_dict": (lambda d: payload_of(d, nn.Linear(2, 2).state_dict()), "looks like a state_dict"),
    "a bare tensor": (lambda d: payload_of(d, torch.ones(3)), "is not a kdnb file"),
    "a list": (lambda d: payload_of(d, [1, 2, 3]), "is not a kdnb file"),
    "a zip of something else": (lambda d: other_zip(d / "model.kdnb"), "a zip archive, but not one torch.save"),
    "zip header then garbage": (lambda d: raw(d, lambda b: b"PK\x03\x04" + b"x" * 500), "truncated or its zip"),
    "a compressed zip": (lambda d: compressed_copy(saved(d)), "compressed records"),
    # --- truncated or changed bytes ---
    "truncated to 10%": (lambda d: raw(d, lambda b: b[: len(b) // 10]), "truncated or its zip"),
    "truncated to 50%": (lambda d: raw(d, lambda b: b[: len(b) // 2]), "truncated or its zip"),
    "truncated to 90%": (lambda d: raw(d, lambda b: b[: len(b) * 9 // 10]), "truncated or its zip"),
    "last byte missing": (lambda d: raw(d, lambda b: b[:-1]), "truncated or its zip"),
    "bytes flipped inside a tensor": (lambda d: raw(d, lambda b: flipped(b, record_start(b, "data/0") + 5)),
                                      "record 'archive/data/0' fails its CRC check"),
    "bytes flipped in the pickle": (lambda d: raw(d, lambda b: flipped(b, record_start(b, "data.pkl") + 40)),
                                    "record 'archive/data.pkl' fails its CRC"),
    # --- the top-level dict ---
    "format renamed": (lambda d: edited(d, lambda p: set_in(p, "format", "kdnbx")), "is not a kdnb file"),
    "format removed": (lambda d: edited(d, lambda p: p.pop("format")), "is not a kdnb file"),
    "version removed": (lambda d: edited(d, lambda p: p.pop("version")), "format version is None"),
    "version a string": (lambda d: edited(d, lambda p: set_in(p, "version", "1")), "format version is '1'"),
    "version a bool": (lambda d: edited(d, lambda p: set_in(p, "version", True)), "format version is True"),
    "version zero": (lambda d: edited(d, lambda p: set_in(p, "version", 0)), "format version is 0"),
    "version a float": (lambda d: edited(d, lambda p: set_in(p, "version", 1.0)), "format version is 1.0"),
    "version from the future": (lambda d: edited(d, lambda p: set_in(p, "version", FORMAT_VERSION + 1)),
                                "newer kdnb.*pip install -U kdnb"),
    "spec removed": (lambda d: edited(d, lambda p: p.pop("spec")), r"lacks \['spec'\]"),
    "tensors removed": (lambda d: edited(d, lambda p: p.pop("tensors")), r"lacks \['tensors'\]"),
    "metadata removed": (lambda d: edited(d, lambda p: p.pop("metadata")), r"lacks \['metadata'\]"),
    "tensors renamed": (lambda d: edited(d, lambda p: set_in(p, "weights", p.pop("tensors"))),
                        r"lacks \['tensors'\]; has unknown keys \['weights'\]"),
    "metadata a list": (lambda d: edited(d, lambda p: set_in(p, "metadata", [1])), "metadata is a list"),
    # --- the module tree ---
    "spec a list": (lambda d: edited(d, lambda p: set_in(p, "spec", [1])), "module at the top is a list"),
    "class removed": (lambda d: edited(d, lambda p: node(p, "1").pop("class")), "module at '1' has keys"),
    "class an int": (lambda d: edited(d, lambda p: set_in(node(p, "1"), "class", 5)), "has class 5"),
    "unknown class at the top": (lambda d: edited(d, lambda p: set_in(node(p), "class", "torch.nn.Bogus")),
                                 r"torch.nn.Bogus \(at the top\).*model=Bogus\("),
    "unknown class inside": (lambda d: edited(d, lambda p: set_in(node(p, "1"), "class", "mylib.Magic")),
                             r"mylib.Magic \(at '1'\)"),
    "config key removed": (lambda d: edited(d, lambda p: node(p, "1")["config"].pop("in_features")),
                           "Linear at '1' lacks config key 'in_features'"),
    "a default config key removed": (lambda d: cnn(d, lambda p: node(p, "0")["config"].pop("padding")),
                                     "Conv2d at '0' lacks config key 'padding'"),
    "bias flag and bias removed": (lambda d: edited(d, lambda p: (node(p, "1")["config"].pop("bias"),
                                                                  p["tensors"].pop("1.bias"))), "missing 1.bias"),
    "config key added": (lambda d: edited(d, lambda p: set_in(node(p, "1")["config"], "foo", 1)),
                         "config key 'foo'"),
    "config value a string": (lambda d: edited(d, lambda p: set_in(node(p, "1")["config"], "in_features", "64")),
                              "in_features='64', which is not an integer"),
    "config value a bool": (lambda d: edited(d, lambda p: set_in(node(p, "1")["config"], "bias", 1)),
                            "bias=1, which is not True or False"),
    "config size negative": (lambda d: edited(d, lambda p: set_in(node(p, "1")["config"], "in_features", -3)),
                             "cannot be built from its config"),
    "config size of a trillion": (lambda d: edited(d, lambda p: set_in(node(p, "1")["config"], "out_features",
                                                                       10**12)), "config makes it"),
    "config None for a Linear": (lambda d: edited(d, lambda p: set_in(node(p, "1"), "config", None)),
                                 "has config None"),
    "Dropout p out of range": (lambda d: edited(d, lambda p: set_in(node(p, "3")["config"], "p", 2.0)),
                               r"torch.nn.Dropout at '3' cannot be built"),
    "training a string": (lambda d: edited(d, lambda p: set_in(node(p, "1"), "training", "yes")),
                          "training='yes', not True/False"),
    "children a list": (lambda d: edited(d, lambda p: set_in(node(p), "children", [])), "children list"),
    "child name with a dot": (lambda d: edited(d, lambda p: set_in(node(p)["children"], "a.b", None)),
                              "child named 'a.b'"),
    "child name an int": (lambda d: edited(d, lambda p: set_in(node(p)["children"], 7, None)), "child named 7"),
    "alias to nothing": (lambda d: edited(d, lambda p: set_in(node(p)["children"], "2", {"alias": "9"})),
                         "refers to '9'"),
    "alias to an ancestor": (lambda d: edited(d, lambda p: set_in(node(p)["children"], "2", {"alias": ""})),
                             "refers to the top, which is not a module saved before it"),
    "a tree 150 deep": (lambda d: edited(d, lambda p: set_in(p, "spec", nested(150))), "deeper than 100"),
    # --- the tensors ---
    "tensors a list": (lambda d: edited(d, lambda p: set_in(p, "tensors", [])), "'tensors' is a list"),
    "entry a list": (lambda d: edited(d, lambda p: set_in(p["tensors"], "1.bias", [0.0] * 32)),
                     "entry '1.bias' is a list"),
    "entry a string": (lambda d: edited(d, lambda p: set_in(p["tensors"], "1.bias", "zeros")),
                       "entry '1.bias' is a str"),
    "tensor removed": (lambda d: edited(d, lambda p: p["tensors"].pop("4.weight")), "missing 4.weight"),
    "tensor renamed": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4.w", p["tensors"].pop("4.weight"))),
                       "missing 4.weight; unexpected 4.w"),
    "tensor added": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4.extra", torch.ones(1))),
                     "unexpected 4.extra"),
    "tensor name with an empty part": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4..weight", torch.ones(1))),
                                       "named '4..weight'"),
    "dense tensor of the wrong shape": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4.weight",
                                                                             torch.zeros(10, 33))),
                                        r"'4.weight' has shape \[10, 33\].*makes it \[10, 32\]"),
    "weight of integers": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4.weight",
                                                                torch.zeros(10, 32, dtype=torch.int64))),
                           "'4.weight' holds int64 but its layer needs floating-point values"),
    "a stride-0 view posing as a big weight": (
        lambda d: edited(d, lambda p: (set_in(p["tensors"], "4.weight", torch.zeros(1).expand(10, 10**9)),
                                       set_in(node(p, "4")["config"], "in_features", 10**9))),
        r"'4.weight' of shape \[10, 1000000000\] is a view of 4 bytes"),
    "sparse COO tensor": (lambda d: edited(d, lambda p: set_in(p["tensors"], "4.weight",
                                                               torch.zeros(10, 32).to_sparse())), "sparse_coo"),
    "BatchNorm counter as float": (lambda d: cnn(d, lambda p: set_in(p["tensors"], "1.num_batches_tracked",
                                                                     torch.tensor(3.0))),
                                   "holds float32 but its layer needs integer values"),
    "BatchNorm running mean as bool": (lambda d: cnn(d, lambda p: set_in(p["tensors"], "1.running_mean",
                                                                         torch.ones(4, dtype=torch.bool))),
                                       "holds bool but"),
    # --- compact (sparse) entries ---
    "compact without mask": (lambda d: edited(d, lambda p: compact(p).pop("mask")),
                             "compact entry '1.weight' has keys"),
    "compact with an extra key": (lambda d: edited(d, lambda p: set_in(compact(p), "x", 1)), "has keys"),
    "compact shape a string": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", "32x64")),
                               "shape '32x64', not a list"),
    "compact shape negative": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", [-32, -64])),
                               r"shape \[-32, -64\]"),
    "compact shape of bools": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", [True, 64])),
                               r"shape \[True, 64\]"),
    "compact shape of floats": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", [32.0, 64.0])),
                                r"shape \[32.0, 64.0\]"),
    "compact shape of 931 GiB": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", [10**6, 10**6])),
                                 "1,000,000,000,000 elements.*mask of 256 bytes"),
    "compact mask of floats": (lambda d: edited(d, lambda p: set_in(compact(p), "mask", compact(p)["mask"].float())),
                               "its mask is float32"),
    "compact mask 2-D": (lambda d: edited(d, lambda p: set_in(compact(p), "mask", compact(p)["mask"].view(16, 16))),
                         r"its mask is uint8 of shape \[16, 16\]"),
    "compact mask too short": (lambda d: edited(d, lambda p: set_in(compact(p), "mask", compact(p)["mask"][:-1])),
                               "mask of 255 bytes"),
    "compact mask a list": (lambda d: edited(d, lambda p: set_in(compact(p), "mask", [255])), "its mask is list"),
    "compact with a value dropped": (lambda d: edited(d, lambda p: set_in(compact(p), "values",
                                                                          compact(p)["values"][:-1])),
                                     "marks .* non-zeros in its mask but holds"),
    "compact values of integers": (lambda d: edited(d, lambda p: set_in(compact(p), "values",
                                                                        compact(p)["values"].long())),
                                   "its values is int64"),
    "compact values 2-D": (lambda d: edited(d, lambda p: set_in(compact(p), "values", compact(p)["values"][None])),
                           "its values is float32 of shape"),
    "compact entry consistent but transposed": (lambda d: edited(d, lambda p: set_in(compact(p), "shape", [64, 32])),
                                                r"'1.weight' has shape \[64, 32\] but its layer's config"),
    # --- tied weights ---
    "tied a list": (lambda d: edited(d, lambda p: set_in(p, "tied", [])), "'tied' is a list"),
    "tied to a missing tensor": (lambda d: edited(d, lambda p: set_in(p, "tied", {"4.weight": "9.weight"})),
                                 "'tied' maps '4.weight' to '9.weight'"),
    "tied in a chain": (lambda d: edited(d, lambda p: set_in(p, "tied", {"4.bias": "1.bias", "1.bias": "4.weight"})),
                        "'tied' maps"),
    "tied across shapes": (lambda d: edited(d, lambda p: set_in(p, "tied", {"4.bias": "1.bias"})),
                           "tied tensors '4.bias' and '1.bias' differ"),
    "tied parameter to buffer": (lambda d: cnn(d, lambda p: set_in(p, "tied", {"1.running_mean": "1.weight"})),
                                 "only one of them is a parameter"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_file_is_one_clean_error(case, tmp_path):
    make, match = DAMAGED[case]
    path = make(tmp_path)  # the 931 GiB and trillion-unit cases are refused by checks that run before allocating
    assert_clean_error(kdnb.load, path, match=match, names=str(path))


@pytest.mark.parametrize("case", ["truncated to 50%", "version a string", "compact shape of 931 GiB"])
def test_read_metadata_checks_the_file_too(case, tmp_path):
    make, match = DAMAGED[case]
    path = make(tmp_path)
    assert_clean_error(serialize.read_metadata, path, match=match, names=str(path))


def test_a_config_without_bias_loads_as_from_an_older_torch(tmp_path):
    """Norm layers gained a `bias` argument late; whether a layer has a bias, its tensors say."""
    net = sparse_mlp().eval()
    path = edited(tmp_path, lambda p: node(p, "1")["config"].pop("bias"), net)
    assert same_outputs(net, kdnb.load(path))


def test_every_config_argument_has_a_type_check():
    """A class `serialize.rebuildable` lists must say what its arguments are, or hand-edited configs slip through."""
    arguments = {arg for args in serialize.rebuildable().values() for arg in args}
    assert arguments <= file_checks.CONFIG_TYPES.keys(), arguments - file_checks.CONFIG_TYPES.keys()


class UserNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def sparse_user_net() -> UserNet:
    torch.manual_seed(0)
    net = UserNet(width=32)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.weight[:2] = 1.0  # 18 of 288 non-zero: a compact entry
    return net


SKELETON = {
    "huge compact shape": (lambda p: set_in(p["tensors"]["conv.weight"], "shape", [10**6, 10**6]), "mask of"),
    "compact values dropped": (lambda p: set_in(p["tensors"]["conv.weight"], "values",
                                                p["tensors"]["conv.weight"]["values"][:-1]), "non-zeros"),
    "config that lies about a resized layer": (
        lambda p: (set_in(p["tensors"], "head.weight", torch.zeros(3, 16)),
                   set_in(node(p, "head")["config"], "in_features", 8)), r"'head.weight' has shape \[3, 16\] but its"),
    "resized layer whose class differs": (
        lambda p: (set_in(p["tensors"], "head.weight", torch.zeros(3, 16)),
                   node(p, "head").update({"class": "torch.nn.Identity", "config": {}})),
        r"pass a fresh instance of the class that was saved"),
    "weight of integers": (lambda p: set_in(p["tensors"], "head.weight", torch.zeros(3, 32, dtype=torch.int32)),
                           "needs floating-point values"),
    "tensor removed": (lambda p: p["tensors"].pop("bn.running_var"), "do not fit model=.*missing bn.running_var"),
    "tied to a missing tensor": (lambda p: set_in(p, "tied", {"head.bias": "nothing"}), "'tied' maps"),
}


@pytest.mark.parametrize("case", SKELETON)
def test_a_damaged_file_leaves_the_skeleton_untouched(case, tmp_path):
    edit, match = SKELETON[case]
    path = edited(tmp_path, edit, sparse_user_net())
    skeleton = UserNet(width=32).eval()
    before = snapshot(skeleton)
    assert_clean_error(kdnb.load, path, model=skeleton, match=match, names=str(path))
    assert_unchanged(before, skeleton)


class RefusingNet(UserNet):
    """A skeleton whose own loading code raises after torch has resized and filled some layers."""

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        raise RuntimeError("this class refuses weights with a bias")


def test_a_skeleton_whose_loading_code_fails_gets_its_layers_back(tmp_path):
    torch.manual_seed(0)
    pruned = UserNet(width=4)  # as structured pruning leaves it: the skeleton's 8-wide layers must shrink
    path = kdnb.save(pruned, tmp_path / "pruned.kdnb")
    skeleton = RefusingNet()
    before = snapshot(skeleton)
    assert_clean_error(kdnb.load, path, model=skeleton, match="into model=: this class refuses", names=str(path))
    assert_unchanged(before, skeleton)
    assert skeleton.conv.out_channels == 8 and skeleton.head.in_features == 8


def test_meta_models_are_refused_on_save_and_as_skeletons(tmp_path):
    with torch.device("meta"):
        ghost = UserNet()
    assert_clean_error(kdnb.save, ghost, tmp_path / "g.kdnb", match="meta device.*to_empty", names="model")
    path = kdnb.save(UserNet(), tmp_path / "u.kdnb")
    before = snapshot(ghost)
    assert_clean_error(kdnb.load, path, model=ghost, match="meta device", names="model=")
    assert_unchanged(before, ghost)
    assert not (tmp_path / "g.kdnb").exists()


@pytest.mark.parametrize("seed", range(40))
def test_random_byte_damage_is_caught_or_harmless(seed, tmp_path):
    """Flip or cut a saved file anywhere: either a clean error or (a byte the zip never reads) the same model."""
    net = sparse_mlp().eval()
    path = saved(tmp_path, net)
    data, rng = path.read_bytes(), random.Random(seed)
    at = rng.randrange(len(data))
    path.write_bytes(data[:at] if seed % 4 == 0 else flipped(data, at, count=rng.randint(1, 8)))
    try:
        loaded = kdnb.load(path)
    except kdnb.KdnbError:
        assert_clean_error(kdnb.load, path, names=str(path))
        return
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), net(x))


def mutations(payload: dict) -> list[tuple[dict, object]]:
    """Every (container, key) in the payload, to pick one to delete or retype."""
    found, stack = [], [payload]
    while stack:
        container = stack.pop()
        for key in list(container):
            found.append((container, key))
            if isinstance(container[key], dict):
                stack.append(container[key])
    return found


@pytest.mark.parametrize("seed", range(60))
def test_random_hand_edits_are_caught_or_harmless(seed, tmp_path):
    """Delete or retype one key anywhere in the file's dict: a clean KdnbError, or a model that loads."""
    rng = random.Random(seed)

    def edit(payload):
        container, key = rng.choice(mutations(payload))
        if rng.random() < 0.4:
            del container[key]
        else:
            container[key] = rng.choice([None, 0, -1, 2**40, 1.5, "x", [], {}, [1, "a"], True, torch.ones(2)])
    path = edited(tmp_path, edit, models.cnn_bn(10, width=4) if seed % 2 else None)
    try:
        kdnb.load(path)
    except kdnb.KdnbError:
        assert_clean_error(kdnb.load, path, names=str(path))


# ---- tied weights ----

def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def round_trip(net: nn.Module, tmp_path, **kwargs) -> nn.Module:
    return kdnb.load(kdnb.save(net, tmp_path / "tied.kdnb"), **kwargs)


def same_outputs(a: nn.Module, b: nn.Module, shape=(5, 64)) -> bool:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def sgd_steps(net: nn.Module, steps: int = 3) -> nn.Module:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 64, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net


def test_tied_sequential_keeps_one_parameter(tmp_path):
    torch.manual_seed(0)
    net = tied_net()
    assert n_params(net) == 4874
    loaded = round_trip(net, tmp_path)
    assert loaded[3].weight is loaded[1].weight
    assert n_params(loaded) == 4874  # was 8,970: two copies that trained apart
    assert same_outputs(net, loaded)


def test_a_file_from_before_ties_were_written_loads_tied(tmp_path):
    """Older files lack 'tied', but stored the tied weight once: that is enough to tie it again."""
    torch.manual_seed(0)
    net = tied_net()
    path = edited(tmp_path, lambda p: p.pop("tied"), net)
    loaded = kdnb.load(path)
    assert loaded[3].weight is loaded[1].weight and n_params(loaded) == 4874 and same_outputs(net, loaded)


def test_training_the_loaded_copy_keeps_it_tied_and_trains_like_the_original(tmp_path):
    torch.manual_seed(0)
    net = tied_net()
    loaded = sgd_steps(round_trip(net, tmp_path))
    sgd_steps(net)
    assert loaded[3].weight is loaded[1].weight
    for key, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key


class TiedNet(nn.Module):
    """A user's class whose second hidden layer reuses the first one's weight through an attribute."""

    def __init__(self, width: int = 64, tie: bool = True):
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.enc = nn.Linear(width, width)
        self.dec = nn.Linear(width, width)
        self.head = nn.Linear(width, 10)
        if tie:
            self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dec(torch.relu(self.enc(torch.relu(self.stem(x)))))))


@pytest.mark.parametrize("tie_in_skeleton", [True, False])
def test_user_class_with_a_tied_attribute_loads_tied(tie_in_skeleton, tmp_path):
    torch.manual_seed(0)
    net = TiedNet()
    loaded = round_trip(net, tmp_path, model=TiedNet(tie=tie_in_skeleton))
    assert loaded.dec.weight is loaded.enc.weight and n_params(loaded) == n_params(net)
    assert same_outputs(net, loaded)


def test_tied_compact_weight_stays_tied_and_is_stored_once(tmp_path):
    torch.manual_seed(0)
    net = tied_net()
    with torch.no_grad():
        net[1].weight[torch.rand(64, 64) < 0.9] = 0
    payload = torch.load(kdnb.save(net, tmp_path / "t.kdnb"), weights_only=True)
    assert isinstance(payload["tensors"]["1.weight"], dict) and payload["tied"] == {"3.weight": "1.weight"}
    loaded = kdnb.load(tmp_path / "t.kdnb")
    assert loaded[3].weight is loaded[1].weight and same_outputs(net, loaded)


def test_a_tied_file_is_smaller_than_an_untied_one():
    torch.manual_seed(0)
    tied = tied_net()
    untied = copy.deepcopy(tied)
    untied[3].weight = nn.Parameter(tied[1].weight.detach().clone())
    assert serialize.file_size(untied) - serialize.file_size(tied) >= 64 * 64 * 4


def test_tied_weight_masked_the_same_way_stays_tied(tmp_path):
    torch.manual_seed(0)
    net = tied_net()
    mask = torch.rand(64, 64) > 0.5
    prune.custom_from_mask(net[1], "weight", mask)
    prune.custom_from_mask(net[3], "weight", mask)
    loaded = round_trip(net, tmp_path)
    assert loaded[3].weight is loaded[1].weight and n_params(loaded) == 4874
    assert same_outputs(net, loaded)


def test_tied_weight_masked_differently_is_two_weights(tmp_path):
    """Two masks on one Parameter compute two weights: both are kept, and the outputs are the same."""
    torch.manual_seed(0)
    net = tied_net()
    prune.l1_unstructured(net[1], "weight", amount=0.5)
    prune.random_unstructured(net[3], "weight", amount=0.5)
    loaded = round_trip(net, tmp_path)
    assert loaded[3].weight is not loaded[1].weight
    assert same_outputs(net, loaded)


def test_tied_model_pruned_by_kdnb_round_trips(tmp_path):
    torch.manual_seed(0)
    pruned = kdnb.prune(tied_net(), sparsity=0.5).model
    loaded = round_trip(pruned, tmp_path)
    assert same_outputs(pruned, loaded)
    tied = serialize._payload(pruned, compact=False, metadata={})["tied"]  # tied iff both masks agree
    assert (loaded[3].weight is loaded[1].weight) == ("3.weight" in tied)


class ZeroSmall(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (w.abs() > 0.05)


def test_tied_weight_parametrized_on_one_side(tmp_path):
    torch.manual_seed(0)
    net = tied_net()
    parametrize.register_parametrization(net[1], "weight", ZeroSmall())
    loaded = round_trip(net, tmp_path)
    assert not parametrize.is_parametrized(loaded[1]) and same_outputs(net, loaded)


def test_tied_float64_model(tmp_path):
    torch.manual_seed(0)
    net = tied_net().double()
    loaded = round_trip(net, tmp_path)
    assert loaded[3].weight is loaded[1].weight and loaded[1].weight.dtype == torch.float64
    x = torch.randn(5, 64, dtype=torch.float64)
    assert torch.equal(net(x), loaded(x))


def test_shared_buffer_stays_shared(tmp_path):
    net = nn.Sequential(nn.BatchNorm1d(8), nn.ReLU(), nn.BatchNorm1d(8))
    net[2].running_mean = net[0].running_mean
    net(torch.randn(16, 8))
    loaded = round_trip(net, tmp_path)
    assert loaded[2].running_mean is loaded[0].running_mean
    loaded(torch.randn(16, 8))
    assert loaded[2].running_mean is loaded[0].running_mean


def test_structurally_pruned_model_keeps_its_untouched_tie(tmp_path):
    """Torch-Pruning shrinks the convolutions; the tied 16x16 head layers keep their shape and their tie."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(),
                        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    net[11].weight = net[9].weight
    keep = [net[7], net[9], net[11], net[13]]
    tp.pruner.MetaPruner(net, torch.randn(2, 1, 8, 8), importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=0.5, ignored_layers=keep).step()
    assert net[0].out_channels == 4 and net[11].weight is net[9].weight
    loaded = round_trip(net, tmp_path)
    assert str(loaded) == str(net) and loaded[11].weight is loaded[9].weight
    assert n_params(loaded) == n_params(net) and same_outputs(net, loaded, shape=(3, 1, 8, 8))


def test_shrunk_tied_user_model_resizes_its_skeleton_and_reties(tmp_path):
    """Structured pruning of a tie removes the same units from the one weight both layers use; a fresh
    (unpruned, 64-wide) skeleton is resized to 32 and its two layers tied again."""
    torch.manual_seed(0)
    full, keep = TiedNet(), torch.arange(0, 64, 2)
    net = TiedNet(width=32)
    with torch.no_grad():
        net.stem.weight.copy_(full.stem.weight[keep]), net.stem.bias.copy_(full.stem.bias[keep])
        net.enc.weight.copy_(full.enc.weight[keep][:, keep])
        net.enc.bias.copy_(full.enc.bias[keep]), net.dec.bias.copy_(full.dec.bias[keep])
        net.head.weight.copy_(full.head.weight[:, keep]), net.head.bias.copy_(full.head.bias)
    loaded = round_trip(net, tmp_path, model=TiedNet())
    assert loaded.dec.weight is loaded.enc.weight and loaded.enc.in_features == 32
    assert n_params(loaded) == n_params(net)
    assert same_outputs(net, loaded)
    sgd_steps(loaded)
    assert loaded.dec.weight is loaded.enc.weight


# ---- the harness itself: it must catch each thing it promises to check ----

def small_loader(generator: bool = True) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(32, 64), torch.randint(0, 10, (32,)))
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True,
                                       generator=torch.Generator().manual_seed(0) if generator else None)


def negative_zero(net: nn.Module) -> None:
    """0.0 -> -0.0: equal as numbers, different bits (a restore through arithmetic could do this)."""
    row, col = (net[1].weight == 0).nonzero()[0].tolist()
    net[1].weight.data[row, col] = -0.0


CHANGES = {
    "a weight's value": lambda net, _: net[1].weight.data[0, 0].add_(1),
    "a zero's sign": lambda net, _: negative_zero(net),
    "a Parameter replaced by an equal copy": lambda net, _: setattr(net[1], "weight",
                                                                  nn.Parameter(net[1].weight.detach().clone())),
    "a gradient left behind": lambda net, _: net(torch.randn(2, 64)).sum().backward(),
    "requires_grad switched off": lambda net, _: net[1].bias.requires_grad_(False),
    "a submodule's training flag": lambda net, _: net[3].eval(),
    "a forward hook left behind": lambda net, _: net[1].register_forward_hook(lambda *a: None),
    "a pre-hook left behind": lambda net, _: net.register_forward_pre_hook(lambda *a: None),
    "a backward hook left behind": lambda net, _: net[4].register_full_backward_hook(lambda *a: None),
    "a pruning mask left behind": lambda net, _: prune.l1_unstructured(net[4], "weight", amount=0.5),
    "a parametrization left behind": lambda net, _: parametrize.register_parametrization(net[4], "weight",
                                                                                         ZeroSmall()),
    "the dtype": lambda net, _: net.double(),
    "a global forward hook": lambda net, _: nn.modules.module.register_module_forward_hook(lambda *a: None),
    "the loader's generator advanced": lambda net, loader: next(iter(loader)),
    "the loader's data": lambda net, loader: loader.dataset.tensors[0].mul_(2),
}


@pytest.mark.parametrize("change", CHANGES)
def test_assert_unchanged_sees(change):
    torch.manual_seed(0)
    net, loader = sparse_mlp(), small_loader()
    before = snapshot(net, loader)
    handles = nn.modules.module._global_forward_hooks.copy()
    try:
        CHANGES[change](net, loader)
        with pytest.raises(AssertionError):
            assert_unchanged(before, net, loader)
    finally:
        for key in set(nn.modules.module._global_forward_hooks) - set(handles):
            del nn.modules.module._global_forward_hooks[key]


def test_assert_unchanged_sees_the_global_rng_a_generatorless_loader_shuffles_with():
    net, loader = sparse_mlp(), small_loader(generator=False)
    before = snapshot(net, loader)
    assert_unchanged(before, net, loader)
    next(iter(loader))
    with pytest.raises(AssertionError, match="global torch RNG"):
        assert_unchanged(before, net, loader)


def test_assert_unchanged_accepts_an_untouched_model_with_nan():
    net, loader = sparse_mlp(), small_loader()
    net[1].weight.data[0, 0] = float("nan")
    before = snapshot(net, loader)
    with torch.no_grad():
        net.eval()(torch.randn(2, 64))
    net.train()
    assert_unchanged(before, net, loader)


def raise_from_inside_torch():
    """A KdnbError whose innermost frame sits in torch/ (as a leak through a torch callback would)."""
    fake = str(Path(torch.__file__).parent / "nn" / "fake_module.py")
    exec(compile("raise KdnbError('bad lr; pass lr=0.1')", fake, "exec"), {"KdnbError": kdnb.KdnbError})


def three_lines() -> None:
    raise kdnb.KdnbError("bad lr\nreally\nbad\npass lr=0.1")


@pytest.mark.parametrize("fn, kwargs", [
    (lambda: None, {}),                                                    # nothing raised
    (lambda: torch.zeros(2) @ torch.zeros(3), {}),                        # a raw torch error
    (lambda: {}["x"], {}),                                                 # a plain Python error
    (three_lines, {}),                                                     # 4 lines
    (lambda: (_ for _ in ()).throw(kdnb.KdnbError("lr is bad")), {}),      # no fix
    (lambda: (_ for _ in ()).throw(kdnb.KdnbError("bad; pass 0.1")), {"names": "lr"}),  # argument not named
    (raise_from_inside_torch, {}),                                         # raised inside torch
    (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), {}),              # an interrupt where an error was due
])
def test_assert_clean_error_refuses(fn, kwargs):
    with pytest.raises(AssertionError):
        assert_clean_error(fn, **kwargs)


def test_assert_clean_error_takes_an_interrupt_where_stated():
    def stopped():
        raise KeyboardInterrupt
    assert isinstance(assert_clean_error(stopped, expect=KeyboardInterrupt, fix=None), KeyboardInterrupt)
