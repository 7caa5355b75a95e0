"""Reference networks. Widths are arguments, so a teacher and a student are one family at two sizes.

Every model is built from standard ``torch.nn`` layers plus the small classes here (`Residual`, the
transformer pieces), so kdnb.save can rebuild it without pickled code and Torch-Pruning's DependencyGraph
can trace it. Shape attributes that structured pruning changes (``SelfAttention.head_dim``, a class token's
``dim``) are read off the parameters, so a pruned model still describes itself.

- MLPs and CNNs: `mlp`, `lenet_300_100`, `cnn1d`, `cnn_bn`, `resnet_small`, `mobile_cnn`, `resnext_small`
  (grouped convs), `convnext_small` (depthwise 7x7, LayerNorm2d, layer scale); `resnet18` and `resnet50` at
  torchvision's sizes;
- transformers: `vit_tiny` (the 8x8 digits as 16 patches; trained on them in seconds on one CPU thread:
  bench/prune_zoo.py, bench/transformer.py) and `gpt_tiny` (a causal language model).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
from torch import nn

from kdnb.errors import KdnbError, is_integer, is_number

MAX_WIDTH = 1 << 20  # no reference network here needs a layer wider than a million units


@dataclass(frozen=True)
class RebuildRecipe:
    """How `kdnb.load` rebuilds a class without its user's code: the constructor ``arguments`` read off a saved
    instance (``bias``: whether it has one), the attributes that follow its tensors' shapes after structured
    pruning (``follows_shapes``), and a factory for a container whose constructor needs children (``empty``)."""

    arguments: tuple[str, ...] = ()
    follows_shapes: tuple[str, ...] = ()
    empty: Callable[[], nn.Module] | None = None


REBUILDABLE: dict[type[nn.Module], RebuildRecipe] = {}  # filled by @rebuildable; kdnb.engine.serialize reads it


def rebuildable(*arguments: str, follows_shapes: tuple[str, ...] = (),
                empty: Callable[[], nn.Module] | None = None) -> Callable[[type], type]:
    """Class decorator: `kdnb.load` may rebuild the class from a file (see `RebuildRecipe`). Every class here has it;
    a user's own module class may take it too."""

    def register(cls: type) -> type:
        REBUILDABLE[cls] = RebuildRecipe(arguments, follows_shapes, empty)
        return cls

    return register


@rebuildable(empty=lambda: Residual(nn.Identity()))
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


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """A residual block's projection (1x1 conv + BN) where its body changes the shape; None: identity."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


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
            layers.append(Residual(body, _shortcut(cin, cout, stride)))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _bottleneck(cin: int, mid: int, stride: int) -> Residual:
    """ResNet-50's bottleneck block (1x1 reduce, 3x3 at ``stride``, 1x1 expand to 4 x ``mid``), torchvision's v1.5."""
    cout = 4 * mid
    body = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                         *_conv_bn(mid, mid, stride), nn.ReLU(),
                         nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return Residual(body, _shortcut(cin, cout, stride))


def _imagenet_resnet(blocks: Sequence[int], bottleneck: bool, num_classes: int, in_channels: int,
                     width: int) -> nn.Sequential:
    """He et al. 2016's ImageNet ResNet: a 7x7/2 stem and 3x3/2 max-pool, four stages of residual blocks at
    ``width`` x 1, 2, 4, 8 (the first block of the last three strided), global pool, Linear."""
    _check_widths(num_classes=num_classes, in_channels=in_channels, width=width)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    cin = width
    for stage, count in enumerate(blocks):
        mid = width * 2 ** stage
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            if bottleneck:
                layers.append(_bottleneck(cin, mid, stride))
                cin = 4 * mid
            else:
                body = nn.Sequential(*_conv_bn(cin, mid, stride), nn.ReLU(), *_conv_bn(mid, mid))
                layers.append(Residual(body, _shortcut(cin, mid, stride)))
                cin = mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def resnet18(num_classes: int = 1000, *, in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """torchvision's ``resnet18`` layer for layer (11.69 M parameters at the defaults; basic blocks 2-2-2-2), as
    one ``nn.Sequential`` of `Residual` blocks: the size a practitioner prunes (bench/prune_scale.py)."""
    return _imagenet_resnet((2, 2, 2, 2), False, num_classes, in_channels, width)


def resnet50(num_classes: int = 1000, *, in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """torchvision's ``resnet50`` layer for layer (25.56 M parameters at the defaults; bottleneck blocks 3-4-6-3,
    stride in the 3x3 as v1.5), as one ``nn.Sequential`` of `Residual` blocks (bench/prune_scale.py)."""
    return _imagenet_resnet((3, 4, 6, 3), True, num_classes, in_channels, width)


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


# ---- grouped and ConvNeXt-style convolutional networks ----

def resnext_small(num_classes: int = 10, *, width: int = 32, groups: int = 4, in_channels: int = 1,
                  blocks: int = 1) -> nn.Sequential:
    """A small ResNeXt (Xie et al. 2017; RegNet's blocks are the same): residual bottlenecks whose 3x3
    convolution is grouped (``groups`` paths of ``width // groups`` channels), two stages."""
    layers: list[nn.Module] = [*_conv_bn(in_channels, width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            body = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 *_conv_bn(cout, cout, stride, groups=groups), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
            layers.append(Residual(body, _shortcut(cin, cout, stride)))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@rebuildable("normalized_shape", "eps", "elementwise_affine", "bias")
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, channels, height, width) tensor, as ConvNeXt uses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@rebuildable("shape")
class LayerScale(nn.Module):
    """``x * scale``, one learned scale per channel (CaiT, Touvron et al. 2021; ConvNeXt's gamma).
    ``shape`` is the scale's shape: ``(dim,)`` for tokens, ``(dim, 1, 1)`` for images."""

    def __init__(self, shape: Sequence[int] = (1,), init: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.full(tuple(shape), init))

    @property
    def shape(self) -> tuple[int, ...]:  # read off the parameter, so it follows structured pruning
        return tuple(self.scale.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@rebuildable()
class ConvNeXtBlock(Residual):
    """ConvNeXt block (Liu et al. 2022): depthwise 7x7, LayerNorm2d, 1x1 expand x4, GELU, 1x1 project,
    layer scale, added to the input."""

    def __init__(self, dim: int = 1):
        body = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), LayerNorm2d(dim),
                             nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1), LayerScale((dim, 1, 1)))
        super().__init__(body)
        self.act = nn.Identity()  # ConvNeXt adds without an activation


def convnext_small(num_classes: int = 10, *, width: int = 16, in_channels: int = 1, blocks: int = 1) -> nn.Sequential:
    """A small ConvNeXt: a 2x2 patchify stem, two stages of `ConvNeXtBlock` with a LayerNorm2d + strided
    2x2 conv downsampling between them, global pool, LayerNorm, Linear."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 2, stride=2), LayerNorm2d(width)]
    layers += [ConvNeXtBlock(width) for _ in range(blocks)]
    layers += [LayerNorm2d(width), nn.Conv2d(width, 2 * width, 2, stride=2)]
    layers += [ConvNeXtBlock(2 * width) for _ in range(blocks)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(2 * width), nn.Linear(2 * width, num_classes)]
    return nn.Sequential(*layers)


# ---- transformers ----

@rebuildable("dim", "num_heads", "head_dim", "causal", follows_shapes=("num_heads",))
class SelfAttention(nn.Module):
    """Multi-head self-attention written out (Vaswani et al. 2017): ``softmax(q k^T / sqrt(d)) v`` per head,
    q, k, v from one ``qkv`` Linear laid out as (3, heads, head_dim), the heads merged by ``proj``.

    Structured pruning removes whole heads: ``num_heads`` follows, ``head_dim`` is read off ``qkv``.
    """

    def __init__(self, dim: int = 1, num_heads: int = 1, head_dim: int = 1, causal: bool = False):
        super().__init__()
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    @property
    def dim(self) -> int:
        return self.qkv.in_features

    @property
    def head_dim(self) -> int:
        return self.qkv.out_features // (3 * self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if self.causal:
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(future, float("-inf"))
        y = att.softmax(-1) @ v                       # (batch, heads, length, head_dim)
        return self.proj(y.transpose(1, 2).reshape(batch, length, -1))


@rebuildable()
class TorchAttention(nn.Module):
    """``nn.MultiheadAttention`` as self-attention on (batch, length, dim) tokens. torch requires
    ``embed_dim == num_heads * head_dim``, so structured pruning narrows its embedding dimension
    (in multiples of ``num_heads``) rather than removing heads."""

    def __init__(self, dim: int = 1, num_heads: int = 1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


@rebuildable()
class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int = 1, heads: int = 1, mlp_ratio: int = 2, causal: bool = False,
                 torch_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TorchAttention(dim, heads) if torch_attention else SelfAttention(dim, heads, dim // heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@rebuildable()
class Tokens(nn.Module):
    """(batch, channels, *positions) -> (batch, positions, channels): patches become tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


@rebuildable("dim")
class ClassToken(nn.Module):
    """Prepends one learned token to the sequence (ViT's [class]; Dosovitskiy et al. 2021)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    @property
    def dim(self) -> int:
        return self.token.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


@rebuildable("length", "dim")
class PositionEmbedding(nn.Module):
    """Adds a learned embedding of each position (up to ``length``) to the tokens."""

    def __init__(self, length: int = 1, dim: int = 1):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(1, length, dim) * 0.02)

    @property
    def length(self) -> int:
        return self.embedding.shape[1]

    @property
    def dim(self) -> int:
        return self.embedding.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding[:, :x.shape[1]]


@rebuildable()
class VisionTransformer(nn.Module):
    """ViT: patches (a strided conv) -> tokens, a class token, position embeddings, transformer blocks,
    LayerNorm, and a Linear on the class token."""

    def __init__(self, num_classes: int = 10, image_size: int = 8, patch_size: int = 2, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_ratio: int = 2, in_channels: int = 1, torch_attention: bool = False):
        super().__init__()
        self.patches = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.tokens, self.cls = Tokens(), ClassToken(dim)
        self.pos = PositionEmbedding((image_size // patch_size) ** 2 + 1, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio, torch_attention=torch_attention)
                                      for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat images, as kdnb.datasets.load("digits") gives them
            side = int(round((x.shape[1] / self.patches.in_channels) ** 0.5))
            x = x.view(x.shape[0], self.patches.in_channels, side, side)
        x = self.blocks(self.pos(self.cls(self.tokens(self.patches(x)))))
        return self.head(self.norm(x[:, 0]))


def vit_tiny(num_classes: int = 10, *, image_size: int = 8, patch_size: int = 2, dim: int = 32, depth: int = 2,
             heads: int = 4, mlp_ratio: int = 2, in_channels: int = 1, torch_attention: bool = False) -> VisionTransformer:
    """A tiny ViT for the 8x8 digits: 2x2 patches (16 tokens + the class token), ``depth`` blocks of
    ``heads`` heads; ``torch_attention=True`` uses ``nn.MultiheadAttention`` instead of `SelfAttention`.

    ``kdnb.datasets.load("digits", image=True)``-shaped input (batch, 1, 8, 8); a flat 64-vector is
    reshaped to 8x8 first."""
    return VisionTransformer(num_classes, image_size, patch_size, dim, depth, heads, mlp_ratio, in_channels,
                             torch_attention)


@rebuildable()
class GPT(nn.Module):
    """A GPT-style causal language model (Radford et al. 2019): token and position embeddings, causal
    `TransformerBlock`s with hand-written attention, LayerNorm, a Linear to the vocabulary."""

    def __init__(self, vocab: int = 32, length: int = 8, dim: int = 32, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, dim), PositionEmbedding(length, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, causal=True) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.pos(self.embed(tokens)))))


def gpt_tiny(vocab: int = 32, *, length: int = 8, dim: int = 32, depth: int = 2, heads: int = 4) -> GPT:
    """A tiny causal transformer over ``vocab`` tokens: (batch, length) ids -> (batch, length, vocab) logits."""
    return GPT(vocab, length, dim, depth, heads)
