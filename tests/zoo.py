"""A reference zoo of small replicas of the architectures people prune (no torchvision).

Each entry of `ZOO` is ``name -> (build, input shape)``; each replica keeps the block that makes its family
hard to prune structurally (grouped convs, squeeze-excite, concatenation, channel shuffle, LayerNorm2d,
layer scale, class tokens, attention with fused or separate q/k/v projections, grouped-query attention, tied
weights), at a width that runs in milliseconds.
"""
from __future__ import annotations

import torch
from torch import nn

from kdnb import models as M


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


def head(width: int, num_classes: int = 10) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]


def resnet_bottleneck(width: int = 16) -> nn.Sequential:
    """ResNet-50-style bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4) with projection shortcuts."""
    def block(cin, mid, stride):
        body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, 4 * mid, 1, act=False))
        shortcut = conv_bn(cin, 4 * mid, 1, stride, act=False) if stride != 1 or cin != 4 * mid else None
        return M.Residual(body, shortcut)
    return nn.Sequential(conv_bn(1, width), block(width, width, 1), block(4 * width, width, 1),
                         block(4 * width, 2 * width, 2), *head(8 * width))


def resnext(width: int = 32, groups: int = 4) -> nn.Sequential:
    """ResNeXt / RegNet blocks: the 3x3 conv is grouped (groups=4, neither 1 nor its channels)."""
    def block(cin, mid, cout, stride):
        body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=groups),
                             conv_bn(mid, cout, 1, act=False))
        shortcut = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None
        return M.Residual(body, shortcut)
    return nn.Sequential(conv_bn(1, width), block(width, width, width, 1), block(width, 2 * width, 2 * width, 2),
                         *head(2 * width))


class SqueezeExcite(nn.Module):
    """x * gate(pool(x)) (Hu et al. 2018): the multiply couples the gate's outputs to x's channels."""

    def __init__(self, channels: int, reduced: int, gate: nn.Module):
        super().__init__()
        self.reduce, self.act = nn.Conv2d(channels, reduced, 1), nn.ReLU()
        self.expand, self.gate = nn.Conv2d(reduced, channels, 1), gate

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet MBConv: expand 1x1, depthwise kxk, optional SE, project 1x1."""

    def __init__(self, cin, cout, expand, kernel=3, stride=1, se=False, act=nn.ReLU6):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), act())
        self.se = SqueezeExcite(mid, max(1, cin // 4), nn.Hardsigmoid() if act is nn.Hardswish else nn.Sigmoid()) \
            if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


def mobilenet_v2(width: int = 16) -> nn.Sequential:
    return nn.Sequential(conv_bn(1, width), InvertedResidual(width, width, 4), InvertedResidual(width, 2 * width, 4, stride=2),
                         InvertedResidual(2 * width, 2 * width, 4), *head(2 * width))


def mobilenet_v3(width: int = 16) -> nn.Sequential:
    return nn.Sequential(conv_bn(1, width), InvertedResidual(width, width, 4, se=True, act=nn.Hardswish),
                         InvertedResidual(width, 2 * width, 4, kernel=5, stride=2, se=True, act=nn.Hardswish),
                         InvertedResidual(2 * width, 2 * width, 4, se=True, act=nn.Hardswish), *head(2 * width))


def efficientnet(width: int = 16) -> nn.Sequential:
    return nn.Sequential(conv_bn(1, width), InvertedResidual(width, width, 1, se=True, act=nn.SiLU),
                         InvertedResidual(width, 2 * width, 6, stride=2, se=True, act=nn.SiLU),
                         InvertedResidual(2 * width, 2 * width, 6, kernel=5, se=True, act=nn.SiLU), *head(2 * width))


class DenseLayer(nn.Module):
    """DenseNet: BN-ReLU-1x1-BN-ReLU-3x3, its output concatenated to its input."""

    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet(width: int = 16, growth: int = 8) -> nn.Sequential:
    layers, c = [nn.Conv2d(1, width, 3, 1, 1, bias=False)], width
    for _ in range(3):
        layers.append(DenseLayer(c, growth))
        c += growth
    transition = [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
    return nn.Sequential(*layers, *transition, nn.BatchNorm2d(c // 2), nn.ReLU(), *head(c // 2))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018): split channels, transform one half, concatenate, shuffle."""

    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=False),
                                    conv_bn(half, half, 1))

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        out = torch.cat([left, self.branch(right)], 1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def shufflenet_v2(width: int = 16) -> nn.Sequential:
    return nn.Sequential(conv_bn(1, width), ShuffleUnit(width), ShuffleUnit(width), *head(width))


def vit(dim: int = 32, heads: int = 4, depth: int = 2) -> nn.Module:
    """ViT with nn.MultiheadAttention (class token, position embedding: parameters the model owns)."""
    return M.vit_tiny(num_classes=10, image_size=8, patch_size=2, dim=dim, depth=depth, heads=heads,
                      torch_attention=True)


def gpt(vocab: int = 32, dim: int = 32, heads: int = 4, depth: int = 2, length: int = 8) -> nn.Module:
    """GPT-style causal language model with hand-written attention (qkv in one Linear)."""
    return M.gpt_tiny(vocab, length=length, dim=dim, depth=depth, heads=heads)


class HFAttention(nn.Module):
    """HF-style attention (LLaMA, Mistral, Qwen): separate q_proj, k_proj, v_proj and o_proj Linears, plain
    ``num_heads`` and ``head_dim`` attributes that the forward reads, torch's fused causal attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention (LLaMA-2/3, Mistral; Ainslie et al. 2023): ``num_key_value_heads`` < ``num_heads``,
    k_proj and v_proj with ``num_key_value_heads * head_dim`` outputs, each key/value head shared by a group of
    ``num_heads // num_key_value_heads`` query heads (``repeat_interleave`` before torch's fused attention)."""

    def __init__(self, dim: int, num_heads: int, num_key_value_heads: int):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = num_heads, num_key_value_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.k_proj, self.v_proj = (nn.Linear(dim, num_key_value_heads * self.head_dim, bias=False) for _ in range(2))
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def repeat_kv(self, states: torch.Tensor) -> torch.Tensor:
        """(b, kv heads, t, d) -> (b, heads, t, d): key/value head j for query heads j*group ... (j+1)*group-1."""
        return states.repeat_interleave(self.num_heads // self.num_key_value_heads, dim=1)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (self.repeat_kv(p(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2))
                for p in (self.k_proj, self.v_proj))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class GatedMLP(nn.Module):
    """LLaMA's SwiGLU MLP: down(silu(gate(x)) * up(x)); the product couples gate's and up's neurons."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_key_value_heads: int | None = None):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim)
        self.self_attn = HFAttention(dim, num_heads) if num_key_value_heads in (None, num_heads) else \
            GroupedQueryAttention(dim, num_heads, num_key_value_heads)
        self.post_attention_layernorm, self.mlp = nn.LayerNorm(dim), GatedMLP(dim, 2 * dim)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """A LLaMA-style causal language model (HF layout) whose output layer is tied to the token embedding
    (``lm_head.weight is embed_tokens.weight``, as ``tie_word_embeddings`` does); with ``num_key_value_heads``
    < ``num_heads`` its attention is grouped-query (LLaMA-2/3, Mistral)."""

    def __init__(self, vocab: int = 32, dim: int = 32, num_heads: int = 4, depth: int = 2,
                 num_key_value_heads: int | None = None):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.Sequential(*[DecoderLayer(dim, num_heads, num_key_value_heads) for _ in range(depth)])
        self.norm, self.lm_head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, tokens):
        return self.lm_head(self.norm(self.layers(self.embed_tokens(tokens))))


class LSTMClassifier(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 16):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(features, hidden, batch_first=True), nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


def cnn1d_grouped(width: int = 16) -> nn.Sequential:
    """The client's residual 1-D CNN with a Conv1d(groups=4) block."""
    def block(c):
        return M.Residual(nn.Sequential(nn.Conv1d(c, c, 3, padding=1, groups=4, bias=False), nn.BatchNorm1d(c), nn.ReLU(),
                                        nn.Conv1d(c, c, 1, bias=False), nn.BatchNorm1d(c)))
    return nn.Sequential(nn.Conv1d(1, width, 5, padding=2), nn.ReLU(), block(width), block(width),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, 10))


IMAGE = (8, 1, 16, 16)
ZOO = {
    "resnet_basic": (lambda: M.resnet_small(10, width=16), IMAGE),
    "resnet_bottleneck": (resnet_bottleneck, IMAGE),
    "resnext": (resnext, IMAGE),
    "mobilenet_v2": (mobilenet_v2, IMAGE),
    "mobilenet_v3": (mobilenet_v3, IMAGE),
    "efficientnet": (efficientnet, IMAGE),
    "densenet": (densenet, IMAGE),
    "shufflenet_v2": (shufflenet_v2, IMAGE),
    "convnext": (lambda: M.convnext_small(10, width=16, in_channels=1), IMAGE),
    "vit": (vit, (8, 1, 8, 8)),
    "vit_tiny": (lambda: M.vit_tiny(10, dim=32, heads=4), (8, 1, 8, 8)),
    "gpt": (gpt, "tokens"),
    "llama": (Llama, "tokens"),
    "llama_gqa": (lambda: Llama(num_heads=8, num_key_value_heads=4), "tokens"),
    "cnn1d_grouped": (cnn1d_grouped, (8, 1, 32)),
    "lstm": (LSTMClassifier, (8, 6, 8)),
}
REFUSED = {"lstm"}


def example(name: str, seed: int = 0) -> torch.Tensor:
    shape = ZOO[name][1]
    generator = torch.Generator().manual_seed(seed)
    if shape == "tokens":
        return torch.randint(0, 32, (8, 8), generator=generator)
    return torch.randn(shape, generator=generator)
