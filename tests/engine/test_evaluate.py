"""evaluate/predict run in eval mode and give every submodule its own mode back."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdnb.engine.device import eval_mode
from kdnb.engine.evaluate import evaluate, predict


def test_each_submodule_gets_its_own_mode_back():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    model[1].eval()  # a frozen BatchNorm inside a model in training mode
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))), batch_size=8)
    seen = []
    model[3].register_forward_pre_hook(lambda module, args: seen.append(model.training or model[1].training))
    evaluate(model, data)
    predict(model, data)
    with eval_mode(model):
        model(torch.randn(2, 4))
    assert seen == [False] * 5
    assert model.training and not model[1].training and model[0].training


def test_public_evaluate_checks_its_input_and_matches_the_engine():
    import pytest

    import kdnb

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))), batch_size=8)
    assert kdnb.evaluate(model, data) == evaluate(model, data)
    with pytest.raises(kdnb.KdnbError, match="data should be a torch DataLoader"):
        kdnb.evaluate(model, torch.randn(16, 4))
    with pytest.raises(kdnb.KdnbError, match="model should be a torch.nn.Module"):
        kdnb.evaluate("net", data)
