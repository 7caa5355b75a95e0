"""kdnb.export: each format round-trips each kind of pruned model, checks itself, and fails in one line
leaving nothing behind."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import kdnb
from kdnb.engine import export as export_module
from kdnb.errors import KdnbError

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

FILE_FORMATS = (".onnx", ".pt2", ".pt", ".safetensors")


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = kdnb.models.resnet_small(10, width=8)
    net.train()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        net(torch.randn(16, 1, 8, 8) * 2 + 1)
    return net.eval()


def _example() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _small_layers_pruned_hard_warn():
    """A width-8 ResNet at 90 % leaves some layers one weight: prune says so; that is not what these tests test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _pruned(kind: str) -> nn.Module:
    net, x = _net(), _example()
    if kind == "dense":
        return net
    if kind == "masked":
        return kdnb.prune(net, sparsity=0.9, criterion="l1", progress=False).model
    if kind == "folded":
        return kdnb.make_permanent(kdnb.prune(net, sparsity=0.9, criterion="l1", progress=False).model)
    if kind == "structured":
        return kdnb.prune(net, sparsity=0.5, structured=True, criterion="l1", example=x, progress=False).model
    return kdnb.prune(net, sparsity=0.5, pattern="2:4", criterion="l1", progress=False).model  # N:M


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("suffix", FILE_FORMATS)
def test_each_format_reloads_with_the_models_outputs_at_any_batch_size(tmp_path, suffix):
    net, x = _net(), _example()
    result = kdnb.export(net, tmp_path / f"net{suffix}", example=x)
    assert result.path == tmp_path / f"net{suffix}" and result.max_diff <= 1e-4
    assert result.bytes == sum(f.stat().st_size for f in result.files) > 0
    assert f"net{suffix}" in str(result) and "max abs diff" in str(result)
    batch = torch.randn(7, 1, 8, 8)  # neither the example's batch nor the check's
    if suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])
    elif suffix == ".pt2":
        got = torch.export.load(result.path).module()(batch)
    else:
        got = _outputs(kdnb.load(result.path, model=kdnb.models.resnet_small(10, width=8)), batch)
    assert torch.allclose(got, _outputs(net, batch), atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == sorted(f.name for f in result.files)  # nothing else left


def test_onnx_states_its_opset_and_a_batch_axis(tmp_path):
    result = kdnb.export(_net(), tmp_path / "net.onnx", example=_example()[:1])  # a batch of 1 still exports
    model = onnx.load(str(result.path))
    assert any(op.domain in ("", "ai.onnx") and op.version == export_module.OPSET for op in model.opset_import)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert f"opset {export_module.OPSET}" in str(result)


@pytest.mark.parametrize("kind", ["masked", "folded", "structured", "n:m"])
@pytest.mark.parametrize("suffix", [pytest.param(".onnx", marks=pytest.mark.slow), ".pt"])
def test_every_kind_of_pruned_model_exports_and_stays_as_it_was(tmp_path, kind, suffix):
    model, x = _pruned(kind), _example()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    masked = any(key.endswith("_mask") for key in before)
    result = kdnb.export(model, tmp_path / f"net{suffix}", example=x)
    assert result.max_diff <= 1e-4
    assert model.state_dict().keys() == before.keys() and masked == (kind in ("masked", "n:m"))  # masks kept
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    if suffix == ".pt":  # a plain state_dict without kdnb's masks, loaded into the user's own class, resized
        state = torch.load(result.path, weights_only=True)
        assert not any(key.endswith(("_orig", "_mask")) for key in state)
        reloaded = kdnb.load(result.path, model=kdnb.models.resnet_small(10, width=8))
        assert torch.allclose(_outputs(reloaded, x), _outputs(model, x), atol=1e-5)


def test_a_rebuildable_model_loads_back_from_its_state_dict_without_a_skeleton(tmp_path):
    model = _pruned("structured")
    kdnb.export(model, tmp_path / "net.safetensors", example=_example())
    assert torch.allclose(_outputs(kdnb.load(tmp_path / "net.safetensors"), _example()), _outputs(model, _example()),
                          atol=1e-5)


def test_the_check_catches_a_wrong_export_and_leaves_nothing(tmp_path, monkeypatch):
    onnx_format = export_module.FORMATS["onnx"]

    def write_then_corrupt(model, target, inputs):
        how = onnx_format.write(model, target, inputs)
        written = onnx.load(str(target))
        weight = max(written.graph.initializer, key=lambda tensor: len(tensor.raw_data))
        array = onnx.numpy_helper.to_array(weight).copy()
        array.flat[0] += 1.0
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(written, str(target))
        return how

    monkeypatch.setitem(export_module.FORMATS, "onnx", dataclasses.replace(onnx_format, write=write_then_corrupt))
    monkeypatch.setitem(export_module.SUFFIXES, ".onnx", export_module.FORMATS["onnx"])
    (tmp_path / "net.onnx").write_bytes(b"an older export")
    with pytest.raises(KdnbError, match=r"^the ONNX export differs from the model by .* at output 0 .*; export to "):
        kdnb.export(_net(), tmp_path / "net.onnx", example=_example())
    assert os.listdir(tmp_path) == ["net.onnx"] and (tmp_path / "net.onnx").read_bytes() == b"an older export"


class Gate(nn.Module):
    """Branches on the data: no exporter can turn that into one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_model_that_cannot_be_traced_is_one_line_naming_the_layer_and_leaves_nothing(tmp_path, suffix):
    net = nn.Sequential(nn.Linear(8, 8), Gate(), nn.Linear(8, 2)).eval()
    with pytest.raises(KdnbError, match=r"layer '1' \(Gate\) does not trace.*export to \.pt or \.safetensors") as error:
        kdnb.export(net, tmp_path / f"net{suffix}", example=torch.randn(3, 8))
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []
    assert kdnb.export(net, tmp_path / "net.pt", example=torch.randn(3, 8)).max_diff == 0  # what it suggests works


def test_bad_input_is_one_line_before_anything_is_written(tmp_path):
    net, x = _net(), _example()
    cases = [
        (dict(path=tmp_path / "net.tflite"), r"unknown suffix '\.tflite'; name the file \*\.onnx"),
        (dict(path=tmp_path / "net"), r"has no suffix"),
        (dict(path=tmp_path / "missing" / "net.onnx"), r"directory .*missing' does not exist; create it"),
        (dict(path=tmp_path), r"is a directory \(an export to a directory is for transformers models\); give a "
                              r"file name such as .*model\.onnx"),
        (dict(path=tmp_path / "net.onnx", format="tflite"), r"format='tflite' is not one kdnb exports"),
        (dict(path=tmp_path / "net", format="transformers"), r"needs a transformers model, got Sequential"),
        (dict(path=tmp_path / "net.onnx", example=[1, 2]), r"example should hold tensors whose first dimension"),
        (dict(path=tmp_path / "net.onnx", example=torch.randn(4, 3)), r"model fails on example \(RuntimeError"),
        (dict(path=tmp_path / "net.onnx", example=(x, torch.zeros(4).long())), r"looks like an \(inputs, labels\) "
                                                                              r"batch; pass example=batch\[0\]"),
        (dict(path=3), r"path should be a file name"),
    ]
    for kwargs, message in cases:
        arguments = {"example": x} | kwargs
        with pytest.raises(KdnbError, match=message):
            kdnb.export(net, **arguments)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.access("/sys", os.W_OK) and not os.path.ismount("/sys"), reason="needs a read-only folder")
def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    if not os.path.isdir("/sys"):
        pytest.skip("no /sys here")
    with pytest.raises(KdnbError, match=r"cannot write to directory '/sys'"):
        kdnb.export(_net(), "/sys/net.onnx", example=_example())


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    real = export_module.importlib.util.find_spec
    monkeypatch.setattr(export_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else real(name, *args))
    with pytest.raises(KdnbError, match=r"needs onnxruntime, which is not installed; .*pip install 'kdnb\[export\]'"):
        kdnb.export(_net(), tmp_path / "net.onnx", example=_example())


def test_import_kdnb_imports_no_exporter_or_model_library():
    code = ("import sys, kdnb, kdnb.api; kdnb.export; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript', 'transformers', 'safetensors') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=16, num_labels=3)
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": torch.tensor([0, 2])}
    return transformers, transformers.BertForSequenceClassification(config).eval(), batch


def test_a_transformers_model_saves_as_its_library_does_and_reloads_with_auto_model(tmp_path):
    transformers, bert, batch = _tiny_bert()
    result = kdnb.export(bert, tmp_path / "bert", example=batch)  # a batch: its labels are left out
    assert result.format == "transformers" and (tmp_path / "bert" / "config.json").is_file()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, bert(**inputs).logits, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["bert"]


@pytest.mark.slow
def test_a_transformers_model_runs_in_onnx_runtime_from_its_tokenizer_mapping(tmp_path):
    _, bert, batch = _tiny_bert()
    result = kdnb.export(bert, tmp_path / "bert.onnx", example=batch)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert {node.name for node in session.get_inputs()} == {"input_ids", "attention_mask"}
    assert result.max_diff <= 1e-4
    tokens = torch.randint(0, 100, (3, 5))  # another batch size and length
    got = session.run(None, {"input_ids": tokens.numpy(), "attention_mask": torch.ones_like(tokens).numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), bert(input_ids=tokens).logits, atol=1e-4)


def test_measure_times_the_export_in_onnx_runtime(tmp_path):
    net, x = _net(), _example()
    torch_time = kdnb.measure(net, x, repeats=3, warmup=1)
    ort_time = kdnb.measure(net, x, repeats=3, warmup=1, runtime="onnxruntime")
    assert torch_time.runtime == "torch" and ort_time.runtime.startswith("onnxruntime ")
    assert ort_time.latency_ms > 0 and "onnxruntime" in ort_time.latency_line()
    assert dataclasses.replace(ort_time, latency_ms=0, latency_spread=0, runtime="torch") == \
        dataclasses.replace(torch_time, latency_ms=0, latency_spread=0)  # only the timing differs
    table = str(kdnb.compare({"dense": net, "pruned": _pruned("folded")}, x, repeats=2, warmup=1,
                             runtime="onnxruntime"))
    assert "unstructured sparsity does not speed it up" in table
    with pytest.raises(KdnbError, match=r"runtime should be 'torch' or 'onnxruntime', got 'ort'"):
        kdnb.measure(net, x, runtime="ort")


def test_the_kdnb_export_line_magic_exports_a_notebook_variable_or_says_what_is_wrong(tmp_path, capsys):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kdnb")
    try:
        shell.user_ns.update(net=kdnb.models.mlp(8, [16], 3), val=[(torch.randn(4, 8), torch.zeros(4).long())])
        result = shell.run_line_magic("kdnb", f"export net {tmp_path}/net.pt --example 'val[0][0]'")
        assert result.path == tmp_path / "net.pt" and result.max_diff == 0
        shell.run_line_magic("kdnb", "export -h")
        assert "%kdnb export --example EXPR [--format NAME] MODEL PATH" in capsys.readouterr().out
        for line, message in [(f"export net {tmp_path}/n.onnx", "the following arguments are required: --example"),
                              (f"export nett {tmp_path}/n.onnx --example val", "name 'nett' is not defined"),
                              (f"export net {tmp_path}/n.xyz --example val[0][0]", "unknown suffix '.xyz'"),
                              ("exprot", "did you mean 'export'?")]:
            with pytest.raises(UsageError, match=message):
                shell.run_line_magic("kdnb", line)
        assert sorted(os.listdir(tmp_path)) == ["net.pt", "net.pt.json"]
    finally:
        shell.run_line_magic("unload_ext", "kdnb")
        InteractiveShell.clear_instance()


def test_the_sparsity_explorers_apply_exports_what_it_stores(tmp_path):
    pytest.importorskip("ipywidgets")
    from torch.utils.data import DataLoader, TensorDataset

    from kdnb.widgets import SparsityExplorer

    torch.manual_seed(0)
    x = torch.randn(32, 8)
    val = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    namespace: dict = {}
    explorer = SparsityExplorer(kdnb.models.mlp(8, [16], 2), val, namespace=namespace)
    explorer.slider.value = 0.5
    with pytest.raises(KdnbError, match="unknown suffix"):  # a bad path: nothing stored
        explorer.apply("small", export=tmp_path / "small.xyz")
    assert namespace == {}
    model = explorer.apply("small", export=tmp_path / "small.onnx")
    assert namespace["small"] is model and "exported small.onnx" in explorer.status.value
    assert sorted(os.listdir(tmp_path)) == ["small.onnx"]


def test_round_to_keeps_a_multiple_of_channels_in_every_layer_for_blocked_runtimes():
    net, x = _net(), _example()
    plain = kdnb.prune(net, sparsity=0.5, structured=True, criterion="l1", example=x, progress=False).model
    rounded = kdnb.prune(net, sparsity=0.5, structured=True, criterion="l1", example=x, round_to=4, progress=False)
    widths = [m.out_channels for m in rounded.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(width % 4 == 0 for width in widths)
    assert any(m.out_channels % 4 for m in plain.modules() if isinstance(m, nn.Conv2d))  # rounding changed something
    assert 0.3 < rounded.sparsity <= 0.5 + 1e-3  # a little short of the target, never over it by much
    with pytest.raises(KdnbError, match=r"round_to rounds the channels a structured cut keeps"):
        kdnb.prune(net, sparsity=0.5, round_to=4, progress=False)
