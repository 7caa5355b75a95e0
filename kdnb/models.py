"""Reference networks. Widths are arguments, so a teacher and a student are one family at two sizes.

Every model is built from standard ``torch.nn`` layers plus `Residual`, so kdnb.save can rebuild it
without pickled code and Torch-Pruning's DependencyGraph can trace it.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from kdnb.errors import KdnbError, is_integer, is_number

MAX_WIDTH = 1 << 20  # no reference network here needs a layer wider than a million units


class Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``: the add that couples channels for structured pruning."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _check_width(name: str, value: object) -> None:
    """A layer size: a positive integer of sane size (a typo like 10**9 would try to allocate gigabytes)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 < value <= MAX_WIDTH):
        raise KdnbError(f"{name} should be a positive integer (at most {MAX_WIDTH:,}), got {value!r}; "
                        f"pass e.g. {name}=64")


def _check_widths(**sizes: object) -> None:
    for name, value in sizes.items():
        _check_width(name, value)


def mlp(in_features: int, hidden: Sequence[int], num_classes: int, *, dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU stack: ``mlp(64, [256, 256], 10)`` has two hidden layers of 256 units."""
    _check_width("in_features", in_features)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise KdnbError(f"hidden should be a list of layer widths, got {hidden!r}; pass e.g. mlp({in_features!r}, "
                        f"[{hidden!r}], {num_classes!r})" if is_integer(hidden) else
                        f"hidden should be a list of layer widths, got {type(hidden).__name__}; pass e.g. [256, 256]")
    for index, units in enumerate(hidden):
        _check_width(f"hidden[{index}]", units)
    _check_width("num_classes", num_classes)
    if not (is_number(dropout) and 0.0 <= dropout < 1.0):
        raise KdnbError(f"dropout should be a number in [0, 1), got {dropout!r}; pass e.g. dropout=0.1")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet_300_100(in_features: int = 64, num_classes: int = 10, *, scale: float = 1.0) -> nn.Sequential:
    """The LeNet-300-100 MLP of LeCun et al. 1998 (the classic pruning benchmark of Han et al. 2015);
    ``scale`` multiplies both hidden widths."""
    if not (is_number(scale) and 0 < scale < 1e3):
        raise KdnbError(f"scale should be a positive number, got {scale!r}; pass e.g. scale=0.5")
    return mlp(in_features, [max(1, round(300 * scale)), max(1, round(100 * scale))], num_classes)


def cnn1d(num_classes: int = 10, *, width: int = 32, length: int = 40, in_channels: int = 1) -> nn.Sequential:
    """A 1-D CNN for MNIST-1D signals of shape (channels, length): three conv-ReLU blocks, then a Linear."""
    _check_widths(num_classes=num_classes, width=width, length=length, in_channels=in_channels)
    return nn.Sequential(
        nn.Conv1d(in_channels, width, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * ((length + 7) // 8), num_classes),
    )


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def cnn_bn(num_classes: int = 10, *, width: int = 32, in_channels: int = 1) -> nn.Sequential:
    """A small VGG-style 2-D CNN with BatchNorm: conv-BN-ReLU x4 (two strided), global pool, Linear."""
    _check_widths(num_classes=num_classes, width=width, in_channels=in_channels)
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w), nn.ReLU(),
        *_conv_bn(w, w), nn.ReLU(),
        *_conv_bn(w, 2 * w, stride=2), nn.ReLU(),
        *_conv_bn(2 * w, 2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * w, num_classes),
    )


def resnet_small(num_classes: int = 10, *, width: int = 16, in_channels: int = 1, blocks: int = 2) -> nn.Sequential:
    """A small ResNet (He et al. 2016): a stem, then per stage ``blocks`` basic residual blocks,
    the second stage at twice the width and half the resolution with a 1x1 projection shortcut."""
    _check_widths(num_classes=num_classes, width=width, in_channels=in_channels, blocks=blocks)
    layers: list[nn.Module] = [*_conv_bn(in_channels, width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(), *_conv_bn(cout, cout))
            shortcut = None
            if stride != 1 or cin != cout:
                shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            layers.append(Residual(body, shortcut))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def mobile_cnn(num_classes: int = 10, *, width: int = 32, in_channels: int = 1) -> nn.Sequential:
    """Depthwise-separable convolutions (MobileNet, Howard et al. 2017): depthwise convs couple
    their input and output channels one to one."""
    _check_widths(num_classes=num_classes, width=width, in_channels=in_channels)
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w), nn.ReLU(),
        *_conv_bn(w, w, groups=w), nn.ReLU(),          # depthwise
        nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),  # pointwise
        *_conv_bn(2 * w, 2 * w, stride=2, groups=2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * w, num_classes),
    )
