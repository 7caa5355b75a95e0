"""2:4 weights stored for sparse tensor cores: `export(semi_structured=True)`."""
import pytest
import torch
from torch import nn

import kdnb
from kdnb.engine.prune import export, prune
from kdnb.engine.prune.inference import two_four
from kdnb.errors import KdnbError

CUDA_8 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _two_four_mlp(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return prune(kdnb.models.mlp(width, [2 * width], width), 0.5, pattern="2:4", criterion="l1").model


def test_two_four_reads_the_pattern_of_each_group_of_four_inputs():
    assert two_four(torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]]))
    assert not two_four(torch.tensor([[1.0, 1, 2, 0, 0, 0, 0, 3]]))  # 3 non-zeros in the first four
    assert not two_four(torch.ones(2, 6))  # inputs not a multiple of 4
    pruned = _two_four_mlp()
    assert all(two_four(m.weight) for m in pruned.modules() if isinstance(m, nn.Linear))
    torch.manual_seed(0)
    unstructured = prune(kdnb.models.mlp(64, [128], 64), 0.5, criterion="l1").model
    assert not any(two_four(m.weight) for m in unstructured.modules() if isinstance(m, nn.Linear))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_semi_structured_on_a_cpu_names_the_gpu_it_needs_and_changes_nothing():
    model = _two_four_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KdnbError, match=r"CUDA GPU with sparse tensor cores.*model\.cuda\(\)\.half\(\)"):
        export(model, semi_structured=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_semi_structured_without_a_two_four_layer_says_to_prune_with_the_pattern():
    with pytest.raises(KdnbError, match=r"has none: prune it with .*pattern='2:4'"):
        export(kdnb.models.mlp(64, [128], 64), semi_structured=True)


def test_the_summary_of_a_pattern_prune_points_to_the_export():
    torch.manual_seed(0)
    net = kdnb.models.mlp(64, [128], 10)
    data = [(torch.randn(32, 64), torch.randint(0, 10, (32,)))]
    text = str(prune(net, 0.5, pattern="2:4", criterion="l1", val=data).summary())
    assert "export(semi_structured=True)" in text and "at dense speed" in text


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_8, reason="needs a CUDA GPU of compute capability 8.0+ (sparse tensor cores)")
def test_semi_structured_export_keeps_the_function_on_sparse_tensor_cores():
    from torch.sparse import SparseSemiStructuredTensor

    model = _two_four_mlp(128).cuda().half().eval()
    x = torch.randn(256, 128, device="cuda", dtype=torch.half)
    fast = export(model, semi_structured=True)
    assert all(isinstance(m.weight, SparseSemiStructuredTensor) for m in fast.modules() if isinstance(m, nn.Linear))
    with torch.inference_mode():
        assert torch.allclose(fast(x).float(), model(x).float(), atol=2e-2, rtol=1e-2)
