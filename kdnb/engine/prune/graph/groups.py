"""Coupled channels, found by Torch-Pruning's DependencyGraph, as plain data.

Deleting output channel ``c`` of a layer also deletes row ``c`` of its BatchNorm, column ``c`` of the
next layer, and the matching channel of every branch added to it (residuals) or depthwise-convolved
after it. Torch-Pruning traces those couplings; here each coupled group becomes a `ChannelGroup`: the
list of tensor slices (parameter, dimension, positions) that every channel owns. Scoring a channel
(sum of its slices' scores), counting the weights it takes along, and masking it are then simple
tensor indexing, independent of the graph; `kdnb.engine.prune.cut.channels` deletes them with the graph.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import warnings
from copy import deepcopy

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine.device import eval_mode

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)  # layers whose weights count towards sparsity
BATCHNORM = nn.modules.batchnorm._BatchNorm
NORMS = (BATCHNORM, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
# Layers Torch-Pruning's pruner functions resize (parameters owned by other modules, such as a class token,
# are "unwrapped parameters" to it: it narrows their last non-singleton dimension with the channels).
STRUCTURED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *NORMS, nn.Embedding, nn.MultiheadAttention,
                     nn.PReLU)
_QKV_NAMES = ("qkv", "c_attn", "in_proj", "Wqkv", "query_key_value")  # one Linear laid out (3, heads, head_dim)
_SEPARATE_NAMES = (("q", "q_proj", "query"), ("k", "k_proj", "key"), ("v", "v_proj", "value"))  # HF-style q, k, v
_OUT_NAMES = ("proj", "out_proj", "o_proj", "c_proj", "out", "dense")
_HEAD_COUNTS = ("num_heads", "num_attention_heads")  # the attribute a hand-written attention reads its heads from


@dataclass
class Slice:
    """Positions ``index`` along dimension ``dim`` of parameter ``param``; ``channel[i]`` is the
    channel of the group that owns position ``index[i]`` (a Flatten maps one channel to many)."""

    param: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor
    consumer: bool = False  # the slice reads the channels (a next layer's inputs) rather than producing them


@dataclass
class ChannelGroup:
    """The output channels of layer ``root`` and everything coupled to them, in ``size`` units that are
    scored and removed whole (a channel, or the channels of one attention head, ...)."""

    root: str
    size: int
    slices: list[Slice] = field(default_factory=list)
    units: torch.Tensor | None = None  # unit of each root channel (None: one channel, one unit)
    macs: torch.Tensor | None = None  # MACs per sample each unit's removal saves (None: no example to count on)
    traffic: torch.Tensor | None = None  # activation elements per sample it saves reading and writing


def prunable_attributes(module: nn.Module) -> tuple[str, ...]:
    """The weight attributes of ``module`` that count towards sparsity: a Linear's or Conv's ``weight``, an
    ``nn.MultiheadAttention``'s input projections (its ``out_proj`` is a Linear of its own)."""
    if isinstance(module, PRUNABLE):
        return ("weight",)
    if isinstance(module, nn.MultiheadAttention):
        separate = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        return ("in_proj_weight",) if module._qkv_same_embed_dim else separate
    return ()


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that count towards sparsity: those of every Linear and Conv layer (and the input projections
    of every ``nn.MultiheadAttention``), by name. A weight tied under two names (one Parameter) counts once,
    under the first."""
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        for attr in prunable_attributes(module):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                seen.add(id(tensor))
                weights[f"{name}.{attr}" if name else attr] = tensor
    if not weights:
        raise KdnbError(f"{type(model).__name__} has no prunable layers: pruning removes weights of "
                        "nn.Linear and nn.Conv1d/2d/3d layers, and it has none")
    return weights


def prunable_count(model: nn.Module) -> int:
    """How many elements the `prunable_weights` of ``model`` hold (what structured sparsity is counted in)."""
    return sum(w.numel() for w in prunable_weights(model).values())


def check_structured_support(model: nn.Module) -> None:
    """A clear error naming the first layer structured pruning cannot resize."""
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            raise KdnbError(f"structured pruning does not resize recurrent layer {name!r} ({type(module).__name__}): "
                            "its hidden units are tied across time steps and gates -- use structured=False, "
                            "or pass the layers after it only")
        if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
            raise KdnbError(f"structured pruning does not support layer {name!r} ({type(module).__name__}, "
                            "transposed); it resizes Linear, Conv, norm, embedding and attention layers -- "
                            "use structured=False for this model")


def dependency_graph(model: nn.Module, example: torch.Tensor):  # -> tp.DependencyGraph
    """Torch-Pruning's graph of ``model``, traced on ``example``; tracing errors become one line.

    The graph also records, as ``input_coupled``, the nodes that combine the model's input itself with
    features (e.g. a residual add with an identity shortcut from the input): those channels cannot go.
    """
    import torch_pruning as tp

    check_structured_support(model)
    was_training = model.training
    x = example.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)  # so ops reading the input show it in the graph
    names = {module: name for name, module in model.named_modules()}
    running: list[str] = []  # the innermost layer running when tracing fails: the error names it

    def remember(module, args):
        running.append(names.get(module, "?"))

    hooks = [m.register_forward_pre_hook(remember) for m in model.modules() if m is not model]
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, forward_fn=lambda m, v: m(v),
                                                          verbose=False)
    except (RuntimeError, TypeError, ValueError, AssertionError, ZeroDivisionError, IndexError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = f" at layer {running[-1]!r}" if running else ""
        raise KdnbError(f"structured pruning could not trace the model on an input of shape "
                        f"{tuple(example.shape)}{where}: {first}; pass example= an input the model accepts, "
                        "or use structured=False") from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    graph.example = example.detach()  # for the consistency probe of `channel_groups`
    graph.input_coupled = {node for node in graph.module2node.values()
                           if not isinstance(node.module, STRUCTURED_LAYERS) and node.grad_fn is not None
                           and any(getattr(f, "variable", None) is x for f, _ in node.grad_fn.next_functions)}
    return graph


def output_layers(graph) -> set[nn.Module]:
    """The layers whose output channels are the model's outputs (the classifier): never pruned."""
    found: set[nn.Module] = set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, STRUCTURED_LAYERS):
            found.add(node.module)
        else:
            stack.extend(node.inputs)
    return found


def _param_slices(name: str, module: nn.Module, is_out: bool, index: torch.Tensor) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(parameter, dim, positions) that the channels at ``index`` of ``module`` own (output side if ``is_out``);
    positions may repeat ``index`` (an attention projection holds q, k and v rows of each channel)."""
    prefix = f"{name}." if name else ""
    if isinstance(module, (*NORMS, nn.PReLU)):
        for param in ("weight", "bias"):
            tensor = getattr(module, param, None)
            if isinstance(tensor, torch.Tensor) and tensor.numel() > 1:
                yield prefix + param, 0, index
        return
    if isinstance(module, nn.Embedding):
        yield prefix + "weight", 1, index
        return
    if isinstance(module, nn.MultiheadAttention):  # the embedding dim: every projection's rows and columns
        rows = torch.cat([index + part * module.embed_dim for part in range(3)])
        yield prefix + "in_proj_weight", 1, index
        yield from ((prefix + p, 0, rows) for p in ("in_proj_weight", "in_proj_bias") if getattr(module, p) is not None)
        yield prefix + "out_proj.weight", 0, index
        yield prefix + "out_proj.weight", 1, index
        if module.out_proj.bias is not None:
            yield prefix + "out_proj.bias", 0, index
        return
    depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels > 1
    if is_out or depthwise:  # a depthwise conv's input channel is its output channel: dim 0
        yield prefix + "weight", 0, index
        if module.bias is not None:
            yield prefix + "bias", 0, index
    elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        yield prefix + "weight", 1, index % (module.in_channels // module.groups)  # position inside its group
    else:
        yield prefix + "weight", 1, index


def _channel_layout(module: nn.Module, is_out: bool,
                    heads: dict[nn.Module, tuple[int, int]]) -> tuple[str, int, int] | None:
    """How the channels of ``module`` must go together: ("offset", groups, size) -- the same position in every
    one of ``groups`` equal groups (grouped conv, GroupNorm, the heads of nn.MultiheadAttention) -- or
    ("block", heads, head_dim) for a q/k/v projection (fused (3, heads, head_dim), or one of three): a whole
    head at a time."""
    if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
        size = module.out_channels if is_out else module.in_channels
        return "offset", module.groups, size // module.groups
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        return "offset", module.num_groups, module.num_channels // module.num_groups
    if isinstance(module, nn.MultiheadAttention):
        return "offset", module.num_heads, module.head_dim
    if is_out and module in heads:
        return ("block", *heads[module])
    return None


@dataclass
class Heads:
    """A hand-written attention module: where its heads live. ``projections`` are the Linears whose outputs
    are the heads' q, k and v -- one fused Linear laid out (3, heads, head_dim), or three -- and ``head_dim``
    the width of one head; structured pruning removes whole heads from all of them at once."""

    module: nn.Module
    projections: tuple[nn.Linear, ...]
    head_dim: int
    output: nn.Linear | None = None  # the Linear reading the heads (o_proj), found for separate q, k, v

    def count(self, projection: nn.Linear) -> int:
        """Heads in ``projection`` now (a fused one holds q, k and v of each)."""
        return projection.out_features // (self.head_dim * (3 if len(self.projections) == 1 else 1))

    @property
    def grouped(self) -> bool:
        """Grouped-query attention (LLaMA-2/3, Mistral): fewer key/value heads than query heads, each key/value
        head read by ``queries_per_group`` query heads in a row (``repeat_interleave`` / HF's ``repeat_kv``)."""
        return len(self.projections) == 3 and self.count(self.projections[1]) < self.count(self.projections[0])

    @property
    def queries_per_group(self) -> int:
        return self.count(self.projections[0]) // self.count(self.projections[1])

    def remove_groups(self, query_channels: list[int]) -> None:
        """Delete the key/value groups whose query channels are ``query_channels`` (whole groups, see
        `_kv_group`) with Torch-Pruning's pruner functions: q rows and o_proj columns of their query heads, k
        and v rows of their key/value head. Its graph would cut k and v at the query's positions (it maps no
        GQA repeat it does not trace as HF's expand), so the group is laid out from the module's shapes."""
        import torch_pruning as tp

        query, key, value = self.projections
        width = self.queries_per_group * self.head_dim
        kv_heads = sorted({c // width for c in query_channels})
        kv_rows = [h * self.head_dim + d for h in kv_heads for d in range(self.head_dim)]
        tp.prune_linear_out_channels(query, query_channels)
        tp.prune_linear_out_channels(key, kv_rows)
        tp.prune_linear_out_channels(value, kv_rows)
        tp.prune_linear_in_channels(self.output, query_channels)


def _head_count(module: nn.Module) -> int | None:
    heads = next((getattr(module, a) for a in _HEAD_COUNTS if isinstance(getattr(module, a, None), int)), None)
    return heads if heads is not None and heads >= 1 and not isinstance(module, nn.MultiheadAttention) else None


def _heads_of(module: nn.Module, heads: int, linears: dict[str, nn.Linear]) -> Heads | None:
    fused = next((m for n, m in linears.items() if n in _QKV_NAMES and m.out_features % (3 * heads) == 0), None)
    if fused is not None:
        return Heads(module, (fused,), fused.out_features // (3 * heads))
    found = [next((linears[n] for n in names if n in linears), None) for names in _SEPARATE_NAMES]
    if any(m is None for m in found) or found[0].out_features % heads:  # type: ignore[union-attr]
        return None
    head_dim = found[0].out_features // heads  # type: ignore[union-attr]
    fits = all(m.out_features % head_dim == 0 for m in found)  # type: ignore[union-attr]
    output = next((linears[n] for n in _OUT_NAMES if n in linears), None)
    layout = Heads(module, tuple(found), head_dim, output) if fits else None  # type: ignore[arg-type]
    if layout is not None and layout.grouped and not (
            found[1].out_features == found[2].out_features and layout.count(found[0]) % layout.count(found[1]) == 0
            and output is not None and output.in_features == found[0].out_features):
        return None  # key/value heads we cannot pair with their query heads: its Linears stay whole
    return layout


def attention_layers(model: nn.Module) -> tuple[list[Heads], set[nn.Module]]:
    """Hand-written attention: the `Heads` of every module with an int ``num_heads`` (or ``num_attention_heads``)
    attribute and either a fused qkv Linear child (named qkv/c_attn/in_proj/...) or three q, k, v Linear
    children (q/k/v, q_proj/k_proj/v_proj, query/key/value, as in HF-style blocks); and the Linears of the other
    attention modules, left whole (their channels are tied across layers in ways we cannot see)."""
    found: list[Heads] = []
    unknown: set[nn.Module] = set()
    for module in model.modules():
        heads = _head_count(module)
        if heads is None:
            continue
        linears = {n: m for n, m in module.named_children() if isinstance(m, nn.Linear)}
        layout = _heads_of(module, heads, linears)
        if layout is not None:
            found.append(layout)
        else:
            unknown |= {m for n, m in linears.items() if n not in _OUT_NAMES}
    return found, unknown


def head_projections(layouts: list[Heads]) -> dict[nn.Module, tuple[int, int]]:
    """``{q/k/v projection: (heads in it, head_dim)}`` for `_channel_layout`."""
    return {p: (layout.count(p), layout.head_dim) for layout in layouts for p in layout.projections}


def update_heads(layouts: list[Heads]) -> None:
    """After whole heads went: each attention module's head count follows its projections (``num_heads`` or
    ``num_attention_heads``; ``num_key_value_heads`` from the key projection; a plain ``all_head_size`` from the
    query's width). ``head_dim`` does not change (whole heads go); a property reading the Linears follows itself."""
    for layout in layouts:
        module, query = layout.module, layout.projections[0]
        for attr in _HEAD_COUNTS:
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, layout.count(query))
        if len(layout.projections) == 3 and isinstance(vars(module).get("num_key_value_heads"), int):
            module.num_key_value_heads = layout.count(layout.projections[1])
        if isinstance(vars(module).get("all_head_size"), int):
            module.all_head_size = query.out_features


def _units(size: int, items: list[tuple[tuple[str, int, int], torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Unit of each of ``size`` root channels: channels that must be removed together share one (union-find
    over the layouts of `_channel_layout`), numbered 0.. in order of their first channel."""
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (kind, count, width), positions, channels in items:
        key = positions % width if kind == "offset" else (positions // width) % count
        first: dict[int, int] = {}
        for k, c in zip(key.tolist(), channels.tolist()):
            parent[find(c)] = find(first.setdefault(k, c))
    roots = [find(i) for i in range(size)]
    number = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return torch.tensor([number[r] for r in roots], dtype=torch.long)


def channel_groups(model: nn.Module, graph) -> list[ChannelGroup]:
    """Every group of coupled channels that may be pruned: not the model's outputs, nor channels added to
    the model's input, nor the Linears of attention modules whose heads we cannot locate. A group's "channels"
    are its *units*: root channels that must go together (the same position in every group of a grouped conv,
    a whole attention head) are one unit, and ``ChannelGroup.units`` maps each root channel to its unit;
    ``ChannelGroup.macs`` and ``.traffic`` count what each unit's removal saves, on the graph's example.
    A grouped-query attention's heads are laid out from its shapes (`_kv_group`), not by the graph."""
    names = {module: name for name, module in model.named_modules()}
    names.update(getattr(graph, "_param_to_name", {}))  # unwrapped parameters (class token, position embedding)
    outputs = output_layers(graph)
    per_weight = macs_per_weight(model, graph.example) if getattr(graph, "example", None) is not None else {}
    positions = activation_positions(model, graph.example) if per_weight else {}
    layouts, unknown = attention_layers(model)
    heads = head_projections(layouts)
    grouped = [layout for layout in layouts if layout.grouped]
    laid_out = {p for layout in grouped for p in layout.projections}  # their groups: `_kv_group`, not the graph's
    params = dict(model.named_parameters(remove_duplicate=False))
    groups = []
    for candidate in (_kv_group(layout, names, params, per_weight, positions) for layout in grouped):
        if _consistent(model, candidate, getattr(graph, "example", None)):
            groups.append(candidate)
        else:
            warnings.warn(f"structured pruning leaves the heads of {candidate.root!r} whole: silencing a key/value "
                          "group there moves the outputs, so its query heads do not read the key/value head they "
                          "are laid out with", RuntimeWarning, stacklevel=4)
    for group in graph.get_all_groups(root_module_types=PRUNABLE):
        root = group[0].dep.target.module
        if root in unknown or root in laid_out or any(
                item.dep.target.module in outputs and graph.is_out_channel_pruning_fn(item.dep.handler)
                or item.dep.target in graph.input_coupled for item in group):
            continue
        size = graph.get_out_channels(root)
        entries, layouts = [], []
        for item in group:
            module = item.dep.target.module
            if module not in names or None in item.root_idxs:
                continue  # graph-internal ops (add, reshape) own no parameters
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            index, channel = torch.tensor(item.idxs, dtype=torch.long), torch.tensor(item.root_idxs, dtype=torch.long)
            layout = None if isinstance(module, nn.Parameter) else _channel_layout(module, is_out, heads)
            if layout is not None:
                layouts.append((layout, index, channel))
            entries += [(p, d, i, channel, not is_out) for p, d, i in
                        (_unwrapped_slices(names[module], graph, module, index) if isinstance(module, nn.Parameter)
                         else _param_slices(names[module], module, is_out, index))]
        unit = _units(size, layouts)
        slices: dict[tuple[str, int], Slice] = {}
        for param, dim, index, channel, consumer in entries:
            channel = channel.repeat(len(index) // len(channel))
            slices.setdefault((param, dim), Slice(param, dim, index, unit[channel], consumer))
        candidate = ChannelGroup(names[root], int(unit.max()) + 1, list(slices.values()), unit)
        if per_weight:
            _count_savings(candidate, params, per_weight, positions)
        if not _consistent(model, candidate, getattr(graph, "example", None)):
            warnings.warn(f"structured pruning leaves the channels of layer {names[root]!r} whole: they pass through "
                          "a view/transpose that mixes channels (a channel shuffle?), which Torch-Pruning cannot map",
                          RuntimeWarning, stacklevel=4)
            continue
        groups.append(candidate)
    broken = _breaking_roots(model, groups, getattr(graph, "example", None))
    for root in broken:
        warnings.warn(f"structured pruning leaves the channels of layer {root!r} whole: the model stops running "
                      "when one of them goes (a reshape to a fixed width, such as view(B, T, C) in attention?)",
                      RuntimeWarning, stacklevel=4)
    return [group for group in groups if group.root not in broken]


def _kv_group(layout: Heads, names: dict, params: dict[str, torch.Tensor], per_weight: dict[str, float],
              positions: dict[str, tuple[float, float]]) -> ChannelGroup:
    """Grouped-query attention in units of one key/value group: key/value head ``j`` with the query heads that
    read it (``j * queries_per_group`` onwards) and their o_proj columns. Whole groups go, so every remaining
    query head keeps reading its own key/value head and ``num_heads / num_key_value_heads`` stays."""
    query, key, value = layout.projections
    rows = {m: torch.arange(m.out_features) for m in layout.projections}
    unit = rows[query] // (layout.queries_per_group * layout.head_dim)
    slices = []
    kv_head = {m: rows[m] // layout.head_dim for m in (key, value)}
    for module, channel in ((query, unit), (key, kv_head[key]), (value, kv_head[value])):
        slices += [Slice(f"{names[module]}.{attr}", 0, rows[module], channel)
                   for attr in ("weight", "bias") if getattr(module, attr) is not None]
    slices.append(Slice(f"{names[layout.output]}.weight", 1, rows[query], unit, consumer=True))
    group = ChannelGroup(names[query], layout.count(key), slices, unit)
    if per_weight:
        _count_savings(group, params, per_weight, positions)
    return group


def grouped_attention(layouts: list[Heads]) -> dict[nn.Module, Heads]:
    """The grouped-query attentions among ``layouts``, by their query projection (for `delete_channels`)."""
    return {layout.projections[0]: layout for layout in layouts if layout.grouped}


def delete_channels(graph, layer: nn.Module, idxs: list[int], grouped: dict[nn.Module, Heads]) -> None:
    """Delete output channels ``idxs`` of ``layer`` and all that is coupled to them: Torch-Pruning's group, or,
    for the query projection of a grouped-query attention, whole key/value groups (`Heads.remove_groups`)."""
    if layer in grouped:
        grouped[layer].remove_groups(idxs)
    else:
        graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, idxs).prune()


@torch.no_grad()
def macs_per_weight(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """MACs per sample that each prunable weight element takes part in, on ``example``: a Linear's weight is
    used once per token, a Conv's once per output position (``torch.utils.flop_counter``: the layer's MACs
    over its weight count). The cost side of a MAC-aware channel ranking."""
    from torch.utils.flop_counter import FlopCounterMode

    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(example)
    flops = counter.get_flop_counts()
    root = type(model).__name__
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            layer = sum(flops.get(f"{root}.{name}" if name else root, {}).values())
            found[f"{name}.weight" if name else "weight"] = layer / 2 / len(example) / module.weight.numel()
    return found


@torch.no_grad()
def activation_positions(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[float, float]]:
    """``{layer: (per row, per column)}``: activation elements per sample one output channel (row) and one
    input channel (column) of each Linear, Conv and norm layer make it write and read on ``example`` (a conv's
    height x width, a Linear's tokens). A norm or depthwise conv reads and writes each channel it keeps."""
    found: dict[str, tuple[float, float]] = {}

    def record(name: str, channels: tuple[int, int], through: bool):
        def hook(module, args, out):
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                read, write = args[0].numel() / len(args[0]) / channels[0], out.numel() / len(out) / channels[1]
                found[name] = (read + write,) * 2 if through else (write, read)
        return hook

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            groups, rows = getattr(module, "groups", 1), module.weight.shape[0]
            sizes, through = (module.weight.shape[1] * groups, rows), groups == rows > 1  # depthwise: through
        elif isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
            sizes, through = (module.weight.numel(),) * 2, True
        else:
            continue
        hooks.append(module.register_forward_hook(record(name, sizes, through)))
    try:
        with eval_mode(model):
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _count_savings(group: ChannelGroup, params: dict[str, torch.Tensor], per_weight: dict[str, float],
                   positions: dict[str, tuple[float, float]]) -> None:
    """Set what each unit of ``group`` saves when it goes: ``macs`` (`_unit_macs`) and ``traffic`` (`_unit_traffic`)."""
    group.macs, group.traffic = _unit_macs(group, params, per_weight), _unit_traffic(group, positions)


def _unit_traffic(group: ChannelGroup, positions: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Activation elements per sample each unit's removal saves from being written and read (`activation_positions`,
    counted on every layer's weight slices). Depthwise convs, norms and the elementwise work between layers are
    bound by this memory traffic, not by their MACs."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for s in group.slices:
        layer, _, attr = s.param.rpartition(".")
        if layer in positions and attr == "weight":
            per_position = positions[layer][0 if s.dim == 0 else 1]
            total.scatter_add_(0, s.channel, torch.full((len(s.index),), per_position, dtype=torch.float64))
    return total


def _unit_macs(group: ChannelGroup, params: dict[str, torch.Tensor], per_weight: dict[str, float]) -> torch.Tensor:
    """MACs per sample each unit of ``group`` saves: the Linear/Conv weight elements it takes along (its rows, and
    the columns of the layers reading it), each weighted by how often the layer uses it (`macs_per_weight`)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for s in group.slices:
        if s.param in per_weight and s.param in params:
            elements = params[s.param].numel() // params[s.param].shape[s.dim]  # per position along dim
            total.scatter_add_(0, s.channel, torch.full((len(s.index),), elements * per_weight[s.param],
                                                        dtype=torch.float64))
    return total


def _breaking_roots(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor | None) -> set[str]:
    """Roots of the groups whose removal of one unit stops a copy of the model from running (a shape the
    code fixes, such as ``view(B, T, C)`` with C the residual width, or a shuffle into 3 groups): tried all
    at once, then (only if that fails) one group at a time."""
    import torch_pruning as tp

    candidates = [group for group in groups if group.size > 1]
    if example is None or not candidates:
        return set()
    with eval_mode(model), torch.no_grad():
        expected = model(example[:2]).shape

    def runs(subset: list[ChannelGroup]) -> bool:
        copy = deepcopy(model).eval()
        layouts, _ = attention_layers(copy)
        grouped = grouped_attention(layouts)
        try:
            graph = tp.DependencyGraph().build_dependency(copy, example_inputs=example[:2], verbose=False)
            for group in subset:
                idxs = [0] if group.units is None else torch.nonzero(group.units == 0).flatten().tolist()
                delete_channels(graph, copy.get_submodule(group.root), idxs, grouped)
            update_heads(layouts)
            with torch.no_grad():
                return copy(example[:2]).shape == expected
        except (RuntimeError, ValueError, AssertionError, ZeroDivisionError, IndexError, TypeError):
            return False

    if runs(candidates):
        return set()
    return {group.root for group in candidates if not runs([group])}


@torch.no_grad()
def _consistent(model: nn.Module, group: ChannelGroup, example: torch.Tensor | None) -> bool:
    """Do the next layers read the group's channels where Torch-Pruning says? Silence one unit where it is
    produced, then also where it is said to be read: if the mapping is right, the reads were zeros already and
    the outputs do not move (a channel shuffle the graph cannot follow makes them move)."""
    params = dict(model.named_parameters())
    if any(s.param in params and s.index.numel() and int(s.index.max()) >= params[s.param].shape[s.dim]
           for s in group.slices):
        return False
    if example is None:
        return True
    saved = {s.param: params[s.param].detach().clone() for s in group.slices if s.param in params}
    outputs = []
    with eval_mode(model):
        try:
            for stage in (False, True):
                for s in group.slices:
                    if s.consumer == stage and s.param in params:
                        params[s.param].index_fill_(s.dim, s.index[s.channel == 0], 0.0)
                outputs.append(model(example[:2]).float())
        finally:
            for name, value in saved.items():
                params[name].copy_(value)
    return bool(torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5 * float(outputs[0].abs().max()) + 1e-7))


def _unwrapped_slices(name: str, graph, param: nn.Parameter, index: torch.Tensor) -> Iterator[tuple[str, int, torch.Tensor]]:
    dim = next((u.pruning_dim for u in graph.unwrapped_parameters if u.parameters is param), -1)
    yield name, dim % param.dim(), index


def channel_scores(group: ChannelGroup, saliency: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Score of each channel: the sum of the element scores of every slice it owns
    (None when the criterion scores none of the group's parameters)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    scored = False
    for s in group.slices:
        if s.param not in saliency:
            continue
        values = saliency[s.param].detach().double().cpu().index_select(s.dim, s.index)
        total.scatter_add_(0, s.channel, values.movedim(s.dim, 0).reshape(len(s.index), -1).sum(1))
        scored = True
    return total if scored else None


def keep_vectors(groups: list[ChannelGroup], removed: dict[str, torch.Tensor],
                 shapes: dict[str, torch.Size]) -> dict[tuple[str, int], torch.Tensor]:
    """For each (parameter, dim) a removed channel touches: which positions along dim survive."""
    keep: dict[tuple[str, int], torch.Tensor] = {}
    for group in groups:
        gone = removed.get(group.root)
        if gone is None or not bool(gone.any()):
            continue
        for s in group.slices:
            vector = keep.setdefault((s.param, s.dim), torch.ones(shapes[s.param][s.dim], dtype=torch.bool))
            vector[s.index[gone[s.channel]]] = False
    return keep


def remaining_weights(keep: dict[tuple[str, int], torch.Tensor], shapes: dict[str, torch.Size],
                      weights: list[str]) -> int:
    """How many elements of ``weights`` survive the removal described by ``keep``."""
    total = 0
    for param in weights:
        shape = list(shapes[param])
        for dim in range(len(shape)):
            vector = keep.get((param, dim))
            if vector is not None:
                shape[dim] = int(vector.sum())
        total += int(torch.Size(shape).numel())
    return total


def masks_from_keep(keep: dict[tuple[str, int], torch.Tensor],
                    shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Full-shape boolean masks (True = kept) of every parameter a removal touches."""
    masks: dict[str, torch.Tensor] = {}
    for (param, dim), vector in keep.items():
        view = [1] * len(shapes[param])
        view[dim] = -1
        mask = masks.get(param, torch.ones(shapes[param], dtype=torch.bool))
        masks[param] = mask & vector.view(view)
    return masks
