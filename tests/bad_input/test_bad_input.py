"""Each bad input is a one-line KdnbError that names the problem, and the model is left untouched."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.errors import KdnbError


@pytest.fixture
def loaders():
    return kdnb.datasets.load("synthetic", batch_size=32)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return kdnb.models.mlp(20, [16], 4)


def call_fails(match, *args, **kwargs):
    with pytest.raises(KdnbError, match=match) as info:
        kdnb.train(*args, progress=False, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


def test_model_must_be_a_module(loaders):
    call_fails("should be a torch.nn.Module", "resnet", loaders[0])


@pytest.mark.parametrize("data", [torch.randn(10, 20), [1, 2, 3].__iter__(), 42])
def test_data_must_be_a_loader(net, data):
    call_fails("DataLoader", net, data)


def test_empty_loader(net):
    empty = DataLoader(TensorDataset(torch.randn(0, 20), torch.zeros(0, dtype=torch.long)), batch_size=4)
    call_fails("empty", net, empty)


def test_model_output_must_match_classes(loaders):
    wrong = kdnb.models.mlp(20, [16], 3)  # 4 classes in the data
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    call_fails("labels out of range", wrong, loaders[0])
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())


def test_model_input_size_mismatch(loaders):
    call_fails("input size", kdnb.models.mlp(64, [16], 4), loaders[0])


def test_labels_out_of_range(net):
    data = DataLoader(TensorDataset(torch.randn(8, 20), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])), batch_size=4)
    call_fails("labels out of range", net, data)


@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_epochs_positive(net, loaders, epochs):
    call_fails("epochs should be a positive integer", net, loaders[0], epochs=epochs)


@pytest.mark.parametrize("lr", [0, -0.1])
def test_lr_positive(net, loaders, lr):
    call_fails("lr should be a positive number", net, loaders[0], lr=lr)


def test_unknown_device(net, loaders):
    call_fails("unknown device 'gpu0'", net, loaders[0], device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(net, loaders):
    call_fails("no GPU", net, loaders[0], device="cuda")


def test_unknown_dataset():
    with pytest.raises(KdnbError, match="did you mean 'mnist1d'"):
        kdnb.datasets.load("mnist")
