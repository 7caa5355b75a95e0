"""Structured pruning of transformers models as the library builds them (tiny configs, no download): the pruned
model runs with outputs of the same shape, its config describes its weights, and it reloads through its library."""
from __future__ import annotations

import pytest
import torch

import kdnb
from kdnb.errors import KdnbError

transformers = pytest.importorskip("transformers")

from kdnb.engine.prune.graph import library  # noqa: E402
from kdnb.engine.prune.graph.pretrained import from_pretrained  # noqa: E402

IDS = {"input_ids": torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)
DECODER = dict(TEXT, num_key_value_heads=2, pad_token_id=0)  # grouped-query attention: 2 queries per key/value


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(**TEXT)), IDS


def _roberta():
    config = transformers.RobertaConfig(**TEXT, pad_token_id=1)
    return transformers.RobertaForSequenceClassification(config), {"input_ids": IDS["input_ids"].clamp(min=3)}


def _distilbert():
    config = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=64, num_labels=3)
    return transformers.DistilBertForSequenceClassification(config), IDS


def _gpt2():
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=3,
                                     pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(config), IDS


def _llama():
    return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**DECODER)), IDS


def _mistral():
    return transformers.MistralForSequenceClassification(transformers.MistralConfig(**DECODER)), IDS


def _qwen2():
    return transformers.Qwen2ForSequenceClassification(transformers.Qwen2Config(**DECODER)), IDS


def _vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=3)
    return transformers.ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, 16, 16)}


def _wav2vec2():
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=4, num_labels=3)
    return transformers.Wav2Vec2ForSequenceClassification(config), {"input_values": torch.randn(2, 400)}


FAMILIES = {"bert": _bert, "roberta": _roberta, "distilbert": _distilbert, "gpt2": _gpt2, "llama": _llama,
            "mistral": _mistral, "qwen2": _qwen2, "vit": _vit}


def _pruned(build):
    torch.manual_seed(0)
    model, example = build()
    model.eval()
    with torch.no_grad():
        expected = model(**example).logits
    result = kdnb.prune(model, 0.5, structured=True, example=example)
    return model, result.model.eval(), example, expected


def _config_matches_weights(model) -> None:
    """Every attention module's q/k projections hold the config's heads (per layer where they differ), and the
    hidden size is the embeddings' width."""
    config = model.config
    family = library.family_of(model)
    layers = getattr(config, "kdnb_layers", None)
    sizes = library.layer_sizes(model, family, library.head_width(config, family))
    true = library.true_sizes(config)  # LLaMA's config class refuses some pruned sizes: then kdnb_sizes holds them
    if layers is None:
        assert all(layer == sizes[0] for layer in sizes)
        assert sizes[0]["num_attention_heads"] == true["num_attention_heads"]
        assert sizes[0]["intermediate_size"] == getattr(config, family.intermediate_key)
    else:
        assert layers == sizes
    norms = [m for n, m in model.named_modules() if n.endswith(("encoder.layer_norm", "embeddings.LayerNorm", ".norm",
                                                               "ln_f", "layernorm"))]
    assert norms and all(norm.weight.shape == (true["hidden_size"],) for norm in norms)  # the residual width


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_structured_prune_runs_keeps_its_config_and_reloads(family, tmp_path):
    dense, pruned, example, expected = _pruned(FAMILIES[family])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        logits = pruned(**example).logits
    assert logits.shape == expected.shape and bool(torch.isfinite(logits).all())
    assert type(pruned) is type(dense)  # GPT-2's Conv1D is a Conv1D again
    _config_matches_weights(pruned)
    pruned.save_pretrained(tmp_path)
    if library.reload_problem(pruned) is None:  # the library alone rebuilds it
        reloaded = type(pruned).from_pretrained(tmp_path).eval()
    else:
        reloaded = from_pretrained(type(pruned), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**example).logits, logits, rtol=1e-4, atol=1e-5)


def test_the_users_model_is_left_as_it_was():
    model, example = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kdnb.prune(model, 0.5, structured=True, example=example)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grouped_query_attention_keeps_whole_key_value_groups():
    _, pruned, _, _ = _pruned(_llama)
    for layer in pruned.model.layers:
        attention = layer.self_attn
        queries, kv = attention.q_proj.out_features, attention.k_proj.out_features
        assert queries // attention.head_dim == 2 * (kv // attention.head_dim)  # 2 queries per key/value head


def test_an_unknown_library_version_is_refused_before_anything_changes(monkeypatch):
    model, example = _bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(library, "transformers_version", lambda: "99.0.0")
    with pytest.raises(KdnbError, match="transformers 4, 5.x, not 99.0.0"):
        kdnb.prune(model, 0.5, structured=True, example=example, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unknown_family_is_refused(monkeypatch):
    model, example = _bert()
    monkeypatch.setattr(model.config, "model_type", "bert-of-the-future")
    with pytest.raises(KdnbError, match="does not know the transformers family 'bert-of-the-future'"):
        kdnb.prune(model, 0.5, structured=True, example=example)


def test_wav2vec2s_training_only_mask_embedding_follows_the_hidden_size():
    """SpecAugment's mask embedding is read in training only, so the traced graph never sees it: it is narrowed
    with the hidden size, and a training step runs."""
    _, pruned, example, expected = _pruned(_wav2vec2)
    assert pruned(**example).logits.shape == expected.shape
    _config_matches_weights(pruned)
    assert pruned.wav2vec2.masked_spec_embed.shape == (pruned.config.hidden_size,)
    pruned.train()
    pruned(**{"input_values": torch.randn(2, 4000)}, labels=torch.tensor([0, 1])).loss.backward()
