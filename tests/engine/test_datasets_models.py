import pytest
import torch

import kdnb


@pytest.mark.parametrize("name,shape,classes", [("digits", (64,), 10), pytest.param("mnist1d", (40,), 10, marks=pytest.mark.slow),
                                                ("synthetic", (20,), 4)])  # mnist1d: generated, seconds
def test_load_shapes_labels_and_determinism(name, shape, classes):
    train, val = kdnb.datasets.load(name, batch_size=16, seed=0)
    x, y = next(iter(train))
    assert x.shape[1:] == shape and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(train.dataset.tensors[1].max()) == classes - 1
    rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert len(train.dataset) + len(val.dataset) == len(rows(train.dataset.tensors[0]) | rows(val.dataset.tensors[0])) or name == "digits"
    assert not rows(train.dataset.tensors[0][:100]) & rows(val.dataset.tensors[0])
    again, _ = kdnb.datasets.load(name, batch_size=16, seed=0)
    assert torch.equal(next(iter(again))[0], x)
    other, _ = kdnb.datasets.load(name, batch_size=16, seed=1)
    assert not torch.equal(other.dataset.tensors[0][:16], train.dataset.tensors[0][:16])


def test_image_shapes():
    assert next(iter(kdnb.datasets.load("digits", flat=False)[0]))[0].shape[1:] == (1, 8, 8)
    assert next(iter(kdnb.datasets.load("mnist1d", flat=False)[0]))[0].shape[1:] == (1, 40)


def test_transfer_set_is_unlabeled_and_new():
    transfer = kdnb.datasets.transfer_set("mnist1d", num_samples=500)
    batch = next(iter(transfer))
    assert isinstance(batch, torch.Tensor) and batch.shape[1:] == (40,)
    train, _ = kdnb.datasets.load("mnist1d")
    assert not torch.isclose(transfer.dataset.x[:50, None], train.dataset.tensors[0][None, :, :]).all(-1).any()


@pytest.mark.parametrize("builder,x", [
    (lambda w: kdnb.models.mlp(64, [w, w], 10), torch.randn(3, 64)),
    (lambda w: kdnb.models.lenet_300_100(64, 10, scale=w / 100), torch.randn(3, 64)),
    (lambda w: kdnb.models.cnn1d(10, width=w), torch.randn(3, 1, 40)),
    (lambda w: kdnb.models.cnn_bn(10, width=w), torch.randn(3, 1, 8, 8)),
    (lambda w: kdnb.models.resnet_small(10, width=w), torch.randn(3, 1, 8, 8)),
    (lambda w: kdnb.models.mobile_cnn(10, width=w), torch.randn(3, 1, 16, 16)),
])
def test_models_are_one_family_at_two_sizes(builder, x):
    small, big = builder(8), builder(32)
    assert small(x).shape == big(x).shape == (3, 10)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 3 * count(small)
