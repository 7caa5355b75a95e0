"""Structured pruning of the reference zoo (tests/zoo.py): every family keeps its output shape, stays finite,
loses weights and MACs, and saves/loads to the same outputs; grouped convs, heads, class tokens and channel
shuffles are handled consistently, and what cannot be pruned is refused in one line naming the layer."""
import warnings

import pytest
import torch
from torch import nn

import kdnb
from kdnb.errors import KdnbError
from kdnb.engine.measure import measure
from kdnb.engine.prune import importance, masks_at, prune
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.engine.prune.cut.masks import clone

from zoo import REFUSED, ZOO, example

M = kdnb.models
PRUNED = [name for name in ZOO if name not in REFUSED]
# Channels that pass through a channel shuffle stay whole, so ShuffleNet stops just short of 50 %.
REACHED = {"shufflenet_v2": 0.45}
BATCHNORM_ONLY = ["resnet_basic", "resnet_bottleneck", "resnext", "mobilenet_v2", "mobilenet_v3", "efficientnet",
                  "densenet", "shufflenet_v2", "cnn1d_grouped"]


def _weights(model):
    return sum(w.numel() for w in prunable_weights(model).values())


def _pruned(name):
    torch.manual_seed(0)
    net, x = ZOO[name][0]().eval(), example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "keeps 1 of n channels", "leaves the channels ... whole"
        result = prune(net, 0.5, structured=True, example=x)
    return net, result, x


def masked_and_deleted(net, x, sparsity=0.6):
    """The L1 group scores of ``net``, a copy with the channels a local cut removes zeroed, and the cut itself
    (channels deleted): the two must compute the same function."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = importance(net, "l1", structured=True, example=x)
        masked = clone(net)
        with torch.no_grad():
            for param, mask in masks_at(scores, sparsity, scope="local").items():
                masked.get_parameter(param).mul_(mask)
        small = prune(net, sparsity, structured=True, example=x, scope="local").model.eval()
    return scores, masked, small


@pytest.mark.parametrize("name", PRUNED)
def test_zoo_model_prunes_to_half_its_weights_and_saves(name, tmp_path):
    net, result, x = _pruned(name)
    small = result.model.eval()
    out = small(x)
    assert out.shape == net(x).shape and bool(torch.isfinite(out).all())
    assert REACHED.get(name, 0.5) <= result.sparsity < 0.65
    assert result.sparsity == pytest.approx(1 - _weights(small) / _weights(net))
    assert sum(p.numel() for p in small.parameters()) < 0.75 * sum(p.numel() for p in net.parameters())
    dense_macs, small_macs = (measure(m, x, repeats=1, warmup=0).macs for m in (net, small))
    assert small_macs < 0.8 * dense_macs
    path = kdnb.save(small, tmp_path / f"{name}.kdnb")
    try:
        loaded = kdnb.load(path)  # every kdnb.models class rebuilds without code
    except KdnbError as error:
        assert "cannot rebuild" in str(error)
        loaded = kdnb.load(path, model=ZOO[name][0]())  # test classes load into a fresh skeleton
    assert torch.equal(loaded.eval()(x), out)


@pytest.mark.parametrize("name", BATCHNORM_ONLY)
def test_masking_the_chosen_channels_computes_what_deleting_them_computes(name):
    """With BatchNorm in eval mode a zeroed channel contributes nothing, so the masked model and the
    physically pruned one agree: the coupled slices (groups, concatenations, SE gates) are consistent."""
    torch.manual_seed(0)
    net, x = ZOO[name][0]().eval(), example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = importance(net, "l1", structured=True, example=x)
        masked = clone(net)
        with torch.no_grad():
            for param, mask in masks_at(scores, 0.5).items():
                masked.get_parameter(param).mul_(mask)
        small = prune(net, 0.5, structured=True, example=x).model.eval()
    assert torch.allclose(masked(x), small(x), atol=1e-5)


def test_grouped_convs_keep_their_groups():
    _, result, _ = _pruned("resnext")
    for module in result.model.modules():
        if isinstance(module, nn.Conv2d) and module.groups == 4:
            assert module.in_channels % 4 == 0 and module.out_channels % 4 == 0
    assert any(kept < full for kept, full in result.channels.values())
    _, result, x = _pruned("cnn1d_grouped")  # the client's residual Conv1d(groups=4) network
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv1d) and m.groups == 4]
    assert len(convs) == 2 and convs[0].in_channels < 16 and convs[0].in_channels % 4 == 0


def test_hand_written_attention_loses_whole_heads():
    torch.manual_seed(0)
    net, x = M.vit_tiny(10, dim=32, heads=4).eval(), torch.randn(8, 1, 8, 8)
    small = prune(net, 0.6, structured=True, example=x, scope="local").model
    for block in small.blocks:
        attn = block.attn
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim and attn.head_dim == 8
        assert attn.proj.in_features == attn.num_heads * attn.head_dim
    assert sum(b.attn.num_heads for b in small.blocks) < 8
    assert small(x).shape == (8, 10)


def test_torch_attention_narrows_every_head_alike():
    """nn.MultiheadAttention needs embed_dim == num_heads * head_dim: each head loses the same positions."""
    net, result, x = _pruned("vit")
    for block in result.model.blocks:
        attn = block.attn.attn
        assert attn.num_heads == 4 and attn.embed_dim == 4 * attn.head_dim < 32
        assert attn.in_proj_weight.shape == (3 * attn.embed_dim, attn.embed_dim)
    assert result.model.cls.token.shape[-1] == result.model.pos.embedding.shape[-1] == attn.embed_dim


def test_a_parameter_the_model_owns_is_narrowed_with_the_embedding():
    class Net(nn.Module):  # a ViT that keeps its class token on the top module itself
        def __init__(self):
            super().__init__()
            self.embed, self.class_token = nn.Linear(4, 16), nn.Parameter(torch.randn(1, 1, 16))
            self.mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            x = torch.cat([self.class_token.expand(len(x), -1, -1), self.embed(x)], 1)
            return self.head((x + self.mlp(x))[:, 0])

    torch.manual_seed(0)
    result = prune(Net(), 0.5, structured=True, example=torch.randn(2, 5, 4))
    assert result.model.class_token.shape[-1] == result.model.embed.out_features < 16


@pytest.mark.slow
def test_channel_shuffle_is_pruned_where_it_can_be_and_says_where_it_cannot():
    torch.manual_seed(0)
    net, x = ZOO["shufflenet_v2"][0]().eval(), example("shufflenet_v2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(net, 0.3, structured=True, example=x)
    shuffle = [str(w.message) for w in caught if "channel shuffle" in str(w.message)]
    assert shuffle and all("\n" not in m and "'2.branch.2.0'" in m for m in shuffle)
    assert result.model[1].branch[0][0].out_channels < 8  # inside a branch, channels go


def test_lstm_is_refused_in_one_line():
    net = ZOO["lstm"][0]()
    with pytest.raises(KdnbError, match="recurrent layer 'lstm' \\(LSTM\\).*structured=False") as error:
        prune(net, 0.5, structured=True, example=example("lstm"))
    assert "\n" not in str(error.value)


def test_tracing_errors_name_no_torch_internals():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) / 0 if x.shape[0] else 1 // 0  # ZeroDivisionError while tracing an empty batch

    with pytest.raises(KdnbError, match="could not trace") as error:
        prune(Broken(), 0.5, structured=True, example=torch.randn(0, 4))
    assert "\n" not in str(error.value)


class _Shuffle(nn.Module):
    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_channels_a_shuffle_interleaves_are_left_whole_not_pruned_wrongly():
    """Torch-Pruning maps a shuffled channel to the wrong input of the next conv; kdnb's probe finds that
    and keeps those channels, so what it deletes is exactly what its masks say."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), _Shuffle(),
                        nn.Conv2d(12, 12, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(12, 8, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = importance(net, "l1", structured=True, example=x)
        masked = clone(net)
        with torch.no_grad():
            for param, mask in masks_at(scores, 0.3).items():
                masked.get_parameter(param).mul_(mask)
        small = prune(net, 0.3, structured=True, example=x).model.eval()
    assert any("layer '0' whole" in str(w.message) for w in caught)
    assert small[0].out_channels == 12 and torch.allclose(masked(x), small(x), atol=1e-6)


class _SeparateProjections(nn.Module):
    """Attention with q, k, v as three Linears whose forward merges the heads with ``reshape(b, t, d)``, d the
    residual width: removing a head (or a residual channel) stops it running, so kdnb's dry run leaves both
    whole (with a warning) and prunes the MLP. (With ``reshape(b, t, num_heads * head_dim)``, as HF-style
    blocks write it, whole heads go: see the q_proj/k_proj/v_proj test below.)"""

    def __init__(self, dim=16, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.num_heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


def test_separate_qkv_projections_are_left_whole_and_the_mlp_is_pruned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), M.Residual(_SeparateProjections()),
                        M.Residual(nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))), nn.Linear(16, 3))
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = prune(net, 0.3, structured=True, example=x).model
    assert any("whole" in str(w.message) and "view(B, T, C)" in str(w.message) for w in caught)
    attn = small[1].body
    assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.proj.in_features == 16
    assert small[2].body[0].out_features < 64 and small(x).shape == (2, 5, 3)


def test_a_tracing_error_names_the_layer():
    class Picky(nn.Module):
        def forward(self, x):
            raise ValueError("needs 3 channels")

    net = nn.Sequential(nn.Conv2d(1, 4, 3), Picky(), nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(KdnbError, match="at layer '1'.*needs 3 channels; pass example=") as error:
        prune(net, 0.5, structured=True, example=torch.randn(1, 1, 5, 5))
    assert "\n" not in str(error.value)


def test_tiny_transformers_take_the_embedded_datasets_and_rebuild_without_code(tmp_path):
    train, _ = kdnb.datasets.load("digits", batch_size=8, seed=0)  # flat 64-vectors
    x, _ = next(iter(train))
    torch.manual_seed(0)
    vit = M.vit_tiny(10).eval()
    assert vit(x).shape == (8, 10) and torch.allclose(vit(x), vit(x.view(8, 1, 8, 8)))
    gpt = M.gpt_tiny(32, length=8).eval()
    tokens = torch.randint(0, 32, (2, 8))
    logits = gpt(tokens)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 32
    assert torch.equal(gpt(changed)[:, :-1], logits[:, :-1])  # causal: the past does not see the future
    for model, inputs in ((vit, x), (gpt, tokens), (M.resnext_small(10, width=16), torch.randn(2, 1, 8, 8)),
                          (M.convnext_small(10, width=8), torch.randn(2, 1, 8, 8))):
        loaded = kdnb.load(kdnb.save(model.eval(), tmp_path / "m.kdnb"))
        assert torch.equal(loaded.eval()(inputs), model(inputs))


def test_group_norm_loses_the_same_positions_in_every_group():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                        M.Residual(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16))),
                        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x = torch.randn(4, 1, 8, 8)
    small = prune(net, 0.5, structured=True, example=x).model
    norms = [m for m in small.modules() if isinstance(m, nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [4, 4, 8]
    assert all(n.num_channels % n.num_groups == 0 for n in norms) and norms[0].num_channels < 16
    assert small(x).shape == (4, 10) and bool(torch.isfinite(small(x)).all())


def test_separate_q_k_v_projections_lose_whole_heads_and_masking_equals_deletion():
    """HF-style attention (q_proj, k_proj, v_proj, o_proj; num_heads and head_dim read by the forward): a head's
    rows go from all three projections and its columns from o_proj; num_heads follows, head_dim stays."""
    from zoo import HFAttention

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), M.Residual(HFAttention(32, 4)), nn.Linear(32, 3)).eval()
    x = torch.randn(2, 6, 4)
    _, masked, small = masked_and_deleted(net, x)
    attn = small[1].body
    assert attn.head_dim == 8 and attn.num_heads < 4
    for projection in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert projection.out_features == attn.num_heads * attn.head_dim
    assert attn.o_proj.in_features == attn.num_heads * attn.head_dim
    assert torch.allclose(masked(x), small(x), atol=1e-5)


def test_llama_loses_heads_in_its_layers_and_keeps_its_tied_embedding(tmp_path):
    """The LLaMA-style zoo entry: heads go per layer, and the output layer tied to the token embedding
    (one Parameter under two names) is masked and deleted as one, stays one Parameter, and reloads tied."""
    torch.manual_seed(0)
    net, x = ZOO["llama"][0]().eval(), example("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = importance(net, "l1", structured=True, example=x)
        masks = masks_at(scores, 0.5)
        result = prune(net, 0.5, structured=True, example=x)
    assert torch.equal(masks["embed_tokens.weight"], masks["lm_head.weight"])
    small = result.model.eval()
    assert small.lm_head.weight is small.embed_tokens.weight
    assert small.embed_tokens.weight.shape[1] == small.norm.normalized_shape[0] < 32
    assert sum(layer.self_attn.num_heads for layer in small.layers) < 8
    path = kdnb.save(small, tmp_path / "llama.kdnb")
    loaded = kdnb.load(path, model=ZOO["llama"][0]()).eval()
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    assert [layer.self_attn.num_heads for layer in loaded.layers] == [layer.self_attn.num_heads for layer in small.layers]
    assert torch.equal(loaded(x), small(x))


def test_multihead_attention_input_projections_count_as_prunable_weights():
    """nn.MultiheadAttention keeps its q/k/v projections in in_proj_weight: the sparsity figure counts them as
    the hand-written attention's qkv Linear is counted, and its MACs include the attention itself."""
    torch.manual_seed(0)
    torch_vit, own_vit = M.vit_tiny(10, torch_attention=True).eval(), M.vit_tiny(10).eval()
    x = torch.randn(2, 1, 8, 8)
    names = prunable_weights(torch_vit)
    assert "blocks.0.attn.attn.in_proj_weight" in names
    assert _weights(torch_vit) == _weights(own_vit)
    assert measure(torch_vit, x, repeats=1, warmup=0).macs == measure(own_vit, x, repeats=1, warmup=0).macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prune(torch_vit, 0.5, example=x)  # unstructured: in_proj_weight is masked too
    measured = measure(result.model, x, repeats=1, warmup=0)
    assert measured.sparsity == pytest.approx(result.sparsity) and result.sparsity == pytest.approx(0.5, abs=1e-3)
    zeros = int((result.model.blocks[0].attn.attn.in_proj_weight == 0).sum())
    assert zeros > 0 and measured.nonzero_macs < measured.macs


def test_macs_per_weight_is_how_often_a_layer_uses_each_weight():
    from kdnb.engine.prune.graph.groups import macs_per_weight

    x = torch.randn(2, 1, 6, 6)  # the first conv: 36 output positions, the strided one 9
    per_weight = macs_per_weight(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, stride=2, padding=1)),
                                 x)
    assert per_weight == {"0.weight": 36.0, "1.weight": 9.0}
    tokens = macs_per_weight(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), torch.randn(2, 7, 4))
    assert tokens == {"0.weight": 7.0, "1.weight": 7.0}


@pytest.mark.slow
def test_scope_macs_cuts_more_macs_than_the_default_at_the_same_sparsity():
    """scope="macs" ranks channels by score per MAC their removal saves: at the same parameter fraction the
    early, high-resolution convolutions lose more, so the model keeps fewer MACs; the more without its cap."""
    from kdnb.engine.prune.select.channels import MAX_LAYER_SPARSITY

    torch.manual_seed(0)
    net, x = ZOO["resnet_basic"][0]().eval(), example("resnet_basic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default, speed, uncapped = (prune(net, 0.5, structured=True, example=x, scope=s, max_layer_sparsity=cap)
                                    for s, cap in (("global", None), ("macs", None), ("macs", 1.0)))
    assert all(0.5 <= r.sparsity < 0.55 for r in (default, speed, uncapped))
    kept = {name: measure(r.model, x, repeats=1, warmup=0).macs
            for name, r in (("global", default), ("macs", speed), ("uncapped", uncapped))}
    assert kept["uncapped"] < kept["macs"] < 0.9 * kept["global"] and kept["uncapped"] < 0.8 * kept["global"]
    stems = [r.model[0].out_channels for r in (uncapped, speed, default)]  # the stem runs at full resolution
    assert stems[0] < stems[1] < stems[2] and stems[1] == 16 * (1 - MAX_LAYER_SPARSITY)
    assert (default.max_layer_sparsity, speed.max_layer_sparsity, uncapped.max_layer_sparsity) == (1.0, 0.5, 1.0)
    assert "at most 50% of a layer's channels" in speed._headline()  # the cap the cut ran under, said
    assert "of a layer's channels" not in default._headline() + uncapped._headline()
    with pytest.raises(KdnbError, match="scope='macs'.*structured=True") as error:
        prune(net, 0.5, example=x, scope="macs")
    assert "\n" not in str(error.value)


def test_reconstruction_leaves_a_tied_embedding_as_the_cut_left_it():
    """The output layer tied to the token embedding is one Parameter under two names: re-solving it as the
    consumer of the removed embedding channels would rewrite the embedding too, so it keeps its cut values.
    Same channels (one cut, l1), with and without reconstruction: the embedding is identical, its kept columns
    are the dense ones, while the untied layers were re-solved."""
    from zoo import Llama

    torch.manual_seed(0)
    net = Llama(vocab=40).eval()
    tokens = torch.randint(0, 40, (64, 8), generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, torch.zeros(64, dtype=torch.long)),
                                         batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, refit = (prune(net, 0.5, structured=True, example=tokens[:8], data=loader, criterion="l1", rounds=1,
                              reconstruct=r) for r in (False, True))
    assert refit.reconstructed and refit.model.lm_head.weight is refit.model.embed_tokens.weight
    embedding = refit.model.embed_tokens.weight.detach()
    assert embedding.shape[1] < 32 and torch.equal(embedding, plain.model.embed_tokens.weight.detach())
    dense = net.embed_tokens.weight.detach()
    assert all(any(torch.equal(column, dense[:, j]) for j in range(32)) for column in embedding.T)
    down = [m.model.layers[0].mlp.down_proj.weight.detach() for m in (plain, refit)]
    assert down[0].shape == down[1].shape and not torch.allclose(down[0], down[1])


class RepeatKVAttention(__import__("zoo").GroupedQueryAttention):
    """The same grouped-query attention with HF's ``repeat_kv`` (expand + reshape) instead of repeat_interleave."""

    def repeat_kv(self, states):
        b, heads, t, d = states.shape
        group = self.num_heads // heads
        return states[:, :, None].expand(b, heads, group, t, d).reshape(b, heads * group, t, d)


@pytest.mark.parametrize("repeat", ["repeat_interleave", "repeat_kv"])
def test_grouped_query_attention_loses_whole_key_value_groups(repeat, tmp_path):
    """GQA (8 query heads reading 4 key/value heads): a unit is one key/value head with its 2 query heads, so
    num_heads and num_key_value_heads shrink together, every query head keeps its own key/value head (masking
    computes what deleting computes), and save -> load gives the same outputs."""
    from zoo import GroupedQueryAttention

    kind = GroupedQueryAttention if repeat == "repeat_interleave" else RepeatKVAttention
    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Linear(4, 32), M.Residual(kind(32, 8, 4)), nn.Linear(32, 3))  # noqa: E731
    net, x = build().eval(), torch.randn(2, 6, 4)
    scores, masked, small = masked_and_deleted(net, x)
    assert "1.body.k_proj" not in {g.root for g in scores.groups}  # k and v go with their query heads
    attn = small[1].body
    assert attn.head_dim == 4 and attn.num_key_value_heads < 4
    assert attn.num_heads == 2 * attn.num_key_value_heads
    assert attn.q_proj.out_features == attn.o_proj.in_features == attn.num_heads * attn.head_dim
    assert attn.k_proj.out_features == attn.v_proj.out_features == attn.num_key_value_heads * attn.head_dim
    assert torch.allclose(masked(x), small(x), atol=1e-5)
    loaded = kdnb.load(kdnb.save(small, tmp_path / "gqa.kdnb"), model=build()).eval()
    assert (loaded[1].body.num_heads, loaded[1].body.num_key_value_heads) == (attn.num_heads, attn.num_key_value_heads)
    assert torch.equal(loaded(x), small(x))


def test_grouped_query_llama_prunes_its_key_value_groups_and_mlp():
    torch.manual_seed(0)
    net, x = ZOO["llama_gqa"][0]().eval(), example("llama_gqa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = prune(net, 0.5, structured=True, example=x, scope="local").model.eval()
    for layer in small.layers:
        attn = layer.self_attn
        assert attn.num_key_value_heads < 4 and attn.num_heads == 2 * attn.num_key_value_heads
        assert layer.mlp.up_proj.out_features < 64
    assert small.lm_head.weight is small.embed_tokens.weight and bool(torch.isfinite(small(x)).all())


def test_traffic_counts_the_activations_a_channel_writes_and_reads():
    """A conv's channel writes its output (36 positions), its BatchNorm reads and writes it (2 x 36), the strided
    conv after reads it (36): 144 elements per sample; the cost that scope="latency" ranks by adds them to the MACs."""
    from kdnb.engine.prune.select import latency
    from kdnb.engine.prune.graph.groups import activation_positions

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 2, 3, stride=2, padding=1)).eval()
    x = torch.randn(2, 1, 6, 6)
    assert activation_positions(net, x) == {"0": (36.0, 36.0), "1": (72.0, 72.0), "2": (9.0, 36.0)}
    scores = importance(net, "l1", structured=True, example=x)
    (group,) = scores.groups
    assert group.traffic.tolist() == [144.0] * 4
    assert group.macs.tolist() == [9 * 36 + 2 * 9 * 9] * 4  # its row of conv 0, its column of conv 2
    (ranked,) = latency.cost_ranked(scores).groups
    assert torch.equal(ranked.macs, group.macs + latency.TRAFFIC_MACS * group.traffic)


@pytest.mark.parametrize("faster", ["cost", "global"])
def test_scope_latency_keeps_the_cut_that_runs_faster(faster, monkeypatch):
    """scope="latency" deletes both candidate cuts, times them on the example and keeps the faster one's ranking
    (the timing replaced here by a verdict); a tie goes to "global"."""
    from kdnb.engine.prune.select import latency
    from kdnb.engine.prune.cut.channels import remove_channels

    monkeypatch.setattr(latency, "paired_speed", lambda first, second, x: 1.5 if faster == "cost" else 1.01)
    torch.manual_seed(0)
    net, x = ZOO["resnet_basic"][0]().eval(), example("resnet_basic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prune(net, 0.5, structured=True, example=x, scope="latency", criterion="l1")
        scores = importance(net, "l1", structured=True, example=x)
        expected = remove_channels(clone(net), latency.removal(scores, 0.5, None, faster), x)
    assert result.scope == "latency" and result.ranking == faster
    assert f"latency ({faster} ranking" in result.summary().title
    assert torch.equal(result.model.eval()(x), expected.eval()(x))


def test_scope_latency_needs_channels():
    net, x = ZOO["resnet_basic"][0]().eval(), example("resnet_basic")
    with pytest.raises(KdnbError, match="scope='latency'.*structured=True") as error:
        prune(net, 0.5, example=x, scope="latency")
    assert "\n" not in str(error.value)
    with pytest.raises(KdnbError, match="latency"):
        prune(net, 0.5, structured=True, example=x, scope="latncy")


def _stem_first_net():
    """A conv chain whose full-resolution stem saves the most MACs per weight: the per-MAC ranking empties it first
    (at 50 %, uncapped, to 1 of its 8 channels)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    return net, torch.randn(2, 1, 16, 16)


def _sparsity(scores, masks):
    kept = sum(int(masks[n].sum()) if n in masks else scores.shapes[n].numel() for n in scores.prunable)
    return 1 - kept / sum(scores.shapes[n].numel() for n in scores.prunable)


def test_the_cost_ranking_moves_on_once_a_layer_reaches_its_cap():
    """max_layer_sparsity (Torch-Pruning's max_pruning_ratio): no group loses more than that fraction of its
    channels; the ranking then takes the next groups' channels, so the sparsity is still reached."""
    from kdnb.engine.prune.select.channels import MAX_LAYER_SPARSITY, removed_channels

    net, x = _stem_first_net()
    scores = importance(net, "l1", structured=True, example=x)
    with pytest.warns(RuntimeWarning, match="layer '0' keeps 1 of 8"):
        uncapped = removed_channels(scores, 0.5, "macs", max_layer_sparsity=1.0)
    assert int(uncapped["0"].sum()) == 7
    for cap in (0.5, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no layer down to one channel
            gone = removed_channels(scores, 0.5, "macs", max_layer_sparsity=cap)
            masks = masks_at(scores, 0.5, "macs", max_layer_sparsity=cap)
        limit = cap if cap is not None else MAX_LAYER_SPARSITY  # the default of the cost ranking
        assert all(int(mask.sum()) <= int(limit * len(mask)) for mask in gone.values())
        assert int(gone["0"].sum()) == int(limit * 8) and int(gone["3"].sum()) > int(uncapped["3"].sum())
        assert _sparsity(scores, masks) >= 0.5
    assert all(torch.equal(removed_channels(scores, 0.5, "global")[r], m)  # "global": only the one channel kept
               for r, m in removed_channels(scores, 0.5, "global", max_layer_sparsity=1.0).items())
    with pytest.warns(RuntimeWarning, match=r"at most 0.25 of each layer's channels \(max_layer_sparsity\)"):
        removed_channels(scores, 0.9, "macs", max_layer_sparsity=0.25)


def test_the_cap_holds_in_the_cut_scope_latency_keeps_and_across_rounds(monkeypatch):
    from kdnb.engine.prune.select import latency
    from kdnb.engine.prune.select.channels import MAX_LAYER_SPARSITY

    net, x = _stem_first_net()
    monkeypatch.setattr(latency, "paired_speed", lambda first, second, x: 1.5)  # the cost-ranked cut is faster
    fast = prune(net, 0.5, structured=True, example=x, scope="latency", criterion="l1")
    assert fast.ranking == "cost" and fast.sparsity >= 0.5
    assert all(of - kept <= int(MAX_LAYER_SPARSITY * of) for kept, of in fast.channels.values())
    assert fast.channels["0"] == (8 - int(MAX_LAYER_SPARSITY * 8), 8)
    rounds = prune(net, 0.5, structured=True, example=x, scope="macs", criterion="l1", rounds=3, max_layer_sparsity=0.5)
    assert rounds.channels["0"] == (4, 8) and all(kept >= of / 2 for kept, of in rounds.channels.values())


def test_masks_cannot_preview_scope_latency_and_the_channel_scopes_share_one_check():
    net, x = _stem_first_net()
    channels = importance(net, "l1", structured=True, example=x)
    weights = importance(net, "l1")
    with pytest.raises(KdnbError, match="scope='latency'.*use scope='macs' for a cost-ranked preview") as error:
        masks_at(channels, 0.5, scope="latency")
    assert "\n" not in str(error.value)
    for scope in ("macs", "latency"):
        with pytest.raises(KdnbError) as from_prune:
            prune(net, 0.5, example=x, scope=scope)
        assert f"scope={scope!r}" in str(from_prune.value) and "needs structured=True" in str(from_prune.value)
    with pytest.raises(KdnbError) as from_masks:
        masks_at(weights, 0.5, scope="macs")
    with pytest.raises(KdnbError) as from_prune:
        prune(net, 0.5, example=x, scope="macs")
    assert str(from_masks.value) == str(from_prune.value)  # one message, one check
    for bad in (0, 1.5, "0.5", float("nan")):
        with pytest.raises(KdnbError, match=r"max_layer_sparsity should be a number in \(0, 1\]"):
            masks_at(channels, 0.5, scope="macs", max_layer_sparsity=bad)
    with pytest.raises(KdnbError, match="max_layer_sparsity.*pass structured=True"):
        masks_at(weights, 0.5, max_layer_sparsity=0.5)


def test_the_default_cap_is_documented_in_prune():
    from kdnb.engine.prune.select.channels import MAX_LAYER_SPARSITY
    from kdnb.magics import argument_help

    described = argument_help(kdnb.prune)["max_layer_sparsity"]
    assert f"{MAX_LAYER_SPARSITY:g}" in described and "max_pruning_ratio" in described


def test_paired_speed_sees_a_model_that_does_twice_the_work():
    from kdnb.engine.prune.select import latency

    torch.manual_seed(0)
    one = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)])
    two = nn.Sequential(*[nn.Linear(256, 256) for _ in range(16)])
    assert latency.paired_speed(one, two, torch.randn(64, 256)) > 1.5


class TiledKVAttention(__import__("zoo").GroupedQueryAttention):
    """Keys/values tiled (query head i reads key/value head i mod num_key_value_heads), not in groups."""

    def repeat_kv(self, states):
        return states.repeat(1, self.num_heads // states.shape[1], 1, 1)


def test_key_value_heads_read_in_another_order_are_left_whole_with_a_warning():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), M.Residual(TiledKVAttention(32, 8, 4)), nn.Linear(32, 3)).eval()
    x = torch.randn(2, 6, 4)
    with pytest.warns(RuntimeWarning, match=r"heads of '1.body.q_proj' whole"):
        small = prune(net, 0.5, structured=True, example=x, scope="local").model.eval()
    attn = small[1].body
    assert (attn.num_heads, attn.num_key_value_heads, attn.q_proj.out_features) == (8, 4, 32)
    assert small(x).shape == (2, 6, 3)
