"""timm and torchvision networks as their libraries build them (random weights, small inputs), structured with data:
every family Torch-Pruning prunes, and the attention models. Marked ``zoo``: `make zoo` runs them in the environment
where timm and torchvision load; elsewhere they skip, saying why (kdnb's replicas in tests/zoo.py cover the
families in the main suite)."""
from __future__ import annotations

import importlib

import pytest
import torch

import kdnb

pytestmark = pytest.mark.zoo


def _library(name: str):
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - PyPI's torchvision beside the CPU torch fails with a RuntimeError
        pytest.skip(f"{name} cannot be imported here ({type(error).__name__}: {str(error).splitlines()[0][:80]}); "
                    "`make zoo` runs these tests in an environment where it can")


def _timm(name: str, **kw):
    return lambda: _library("timm").create_model(name, pretrained=False, num_classes=3, **kw)


def _torchvision(name: str, **kw):
    return lambda: getattr(_library("torchvision.models"), name)(num_classes=3, **kw)


MODELS = {  # name -> (build, image side)
    "tv_resnet18": (_torchvision("resnet18"), 32),
    "tv_mobilenet_v2": (_torchvision("mobilenet_v2"), 32),
    "tv_mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), 32),
    "tv_efficientnet_b0": (_torchvision("efficientnet_b0"), 32),
    "tv_regnet_x_400mf": (_torchvision("regnet_x_400mf"), 32),
    "tv_resnext50_32x4d": (_torchvision("resnext50_32x4d"), 32),
    "tv_densenet121": (_torchvision("densenet121"), 32),
    "tv_vgg11_bn": (_torchvision("vgg11_bn"), 32),
    "tv_googlenet": (_torchvision("googlenet", aux_logits=False, init_weights=False), 32),
    "tv_shufflenet_v2_x0_5": (_torchvision("shufflenet_v2_x0_5"), 32),
    # vit_b_16's own class and code at a small width (the full one, 86 M parameters, took 24 GB here: killed)
    "tv_vit_b_16_small": (lambda: _library("torchvision.models.vision_transformer").VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=3), 32),
    "tv_swin_t": (_torchvision("swin_t"), 32),
    "timm_resnet18": (_timm("resnet18"), 32),
    "timm_convnext_atto": (_timm("convnext_atto"), 32),
    "timm_vit_tiny": (_timm("vit_tiny_patch16_224", img_size=32), 32),
    "timm_deit_tiny": (_timm("deit_tiny_patch16_224", img_size=32), 32),
    "timm_swin_tiny": (_timm("swin_tiny_patch4_window7_224", img_size=32, window_size=1), 32),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_structured_with_data_deletes_channels_and_keeps_the_outputs(name):
    build, side = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    data = [(torch.randn(4, 3, side, side), torch.randint(0, 3, (4,))) for _ in range(2)]
    with torch.no_grad():
        expected = model(data[0][0]).shape
    # Taylor scores from the data's gradients, no re-solve: the graph and the deletion are under test here; what the
    # default with data costs on these sizes is bench/prune_real.py's (and the cost issue's)
    result = kdnb.prune(model, 0.5, structured=True, data=data, criterion="taylor", reconstruct=False)
    pruned = result.model.eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = pruned(data[0][0])
    assert out.shape == expected and bool(torch.isfinite(out).all())
