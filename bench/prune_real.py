"""Models as people have them, through kdnb's verbs with no wrapper: HuggingFace transformers (tiny configs) and
timm / torchvision networks (their own constructors, random weights, small inputs), beside Torch-Pruning's
`MetaPruner`.

Per model, each step ran or was refused (the one-line reason kept):
- ``struct 50 % ex``: ``kdnb.prune(model, 0.5, structured=True, example=batch inputs)`` (the graph, no data);
- ``struct 50 % data``: the same with ``data=`` (4 labelled batches: mappings with ``labels`` for transformers);
- ``unstr 80 % data``: ``kdnb.prune(model, 0.8, data=...)``;
- ``distill``: ``kdnb.distill(model, the 50 %-structured model as its smaller sibling, data, epochs=1)``;
- ``measure``: ``kdnb.measure(pruned, example)``;
- ``save -> load``: transformers: ``save_pretrained`` then the library's ``from_pretrained`` when its config
  rebuilds the model, else ``kdnb.engine.prune.from_pretrained`` (layers that differ); timm/torchvision: state dict
  into the pruned module's copy (no library format);
- ``TP``: Torch-Pruning's ``MetaPruner`` (L1 magnitude, the classifier ignored, ratio 0.5, heads by its
  ``num_heads`` where it knows them), its wall time.

Parameters before / after the structured example prune, its outputs' shape against the dense one, and wall times.

    python bench/prune_real.py            # transformers (the main environment)
    /work/zoo-venv/bin/python bench/prune_real.py --zoo    # timm / torchvision (make zoo builds that environment)
"""
from __future__ import annotations

import argparse
import copy
import platform
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kdnb  # noqa: E402
from kdnb.engine.prune.graph.groups import forward  # noqa: E402

torch.set_num_threads(1)
TP_LIMIT = 120  # seconds given to Torch-Pruning's MetaPruner per model
STEP_LIMIT = 240  # seconds given to each kdnb step (the default with data on a torchvision CNN: the cost issue)
warnings.filterwarnings("ignore")


def _hf_models():
    import transformers as T

    text = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3)
    decoder = dict(text, num_key_value_heads=2, pad_token_id=0)
    ids = lambda n=8, low=1: {"input_ids": torch.randint(low, 100, (n, 8))}  # noqa: E731
    return {
        "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**text)), ids),
        "roberta": (lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**text, pad_token_id=1)),
                    lambda n=8: ids(n, 3)),
        "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=3)),
            ids),
        "gpt2": (lambda: T.GPT2ForSequenceClassification(T.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=3, pad_token_id=0)), ids),
        "llama (GQA)": (lambda: T.LlamaForSequenceClassification(T.LlamaConfig(**decoder)), ids),
        "mistral (GQA)": (lambda: T.MistralForSequenceClassification(T.MistralConfig(**decoder)), ids),
        "qwen2 (GQA)": (lambda: T.Qwen2ForSequenceClassification(T.Qwen2Config(**decoder)), ids),
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)), lambda n=8: {"pixel_values": torch.randn(n, 3, 16, 16)}),
        "wav2vec2": (lambda: T.Wav2Vec2ForSequenceClassification(T.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            num_labels=3)), lambda n=8: {"input_values": torch.randn(n, 400)}),
        "t5": (lambda: T.T5ForSequenceClassification(T.T5Config(
            vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, num_labels=3,
            decoder_start_token_id=0, pad_token_id=0)), lambda n=8: {"input_ids": torch.cat(
                [torch.randint(2, 100, (n, 7)), torch.ones(n, 1, dtype=torch.long)], 1)}),  # ends with <eos> (1)
    }


def _zoo_models():
    import timm
    import torchvision.models as tv

    def timm_model(name, **kw):
        return lambda: timm.create_model(name, pretrained=False, num_classes=3, **kw)

    image = lambda side: (lambda n=8: torch.randn(n, 3, side, side))  # noqa: E731
    return {
        "tv resnet18": (lambda: tv.resnet18(num_classes=3), image(32)),
        "tv mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=3), image(32)),
        "tv densenet121": (lambda: tv.densenet121(num_classes=3), image(32)),
        "tv regnet_x_400mf": (lambda: tv.regnet_x_400mf(num_classes=3), image(32)),
        "tv vit (vit_b_16's class, small)": (lambda: tv.vision_transformer.VisionTransformer(
            image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=3),
            image(32)),
        "tv swin_t": (lambda: tv.swin_t(num_classes=3), image(32)),
        "timm resnet18": (timm_model("resnet18"), image(32)),
        "timm efficientnet_b0": (timm_model("efficientnet_b0"), image(32)),
        "timm convnext_atto": (timm_model("convnext_atto"), image(32)),
        "timm vit_tiny": (timm_model("vit_tiny_patch16_224", img_size=32), image(32)),
        "timm deit_tiny": (timm_model("deit_tiny_patch16_224", img_size=32), image(32)),
        "timm swin_tiny": (timm_model("swin_tiny_patch4_window7_224", img_size=32, window_size=1), image(32)),
    }


def _labelled(inputs, n_classes=3):
    labels = torch.randint(0, n_classes, (len(next(iter(inputs.values()))) if isinstance(inputs, dict)
                                          else len(inputs),))
    return {**inputs, "labels": labels} if isinstance(inputs, dict) else (inputs, labels)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _step(name: str, call, limit: int | None = None):
    """(status, seconds, value): "ran", or "refused: <first line>", or "did not finish in <limit> s"."""
    start = time.perf_counter()
    try:
        value = _within(limit or STEP_LIMIT, call)
        return "ran", time.perf_counter() - start, value
    except _TooLong as error:
        return str(error), time.perf_counter() - start, None
    except Exception as error:  # noqa: BLE001 - the bench reports every refusal
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"refused: {type(error).__name__}: {first[:110]}", time.perf_counter() - start, None


class _TooLong(Exception):
    pass


def _within(seconds: int, call):
    """``call()``, or `_TooLong` after ``seconds`` (Torch-Pruning's groups through LLaMA's rotary take minutes)."""
    def alarm(signum, frame):
        raise _TooLong(f"did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _metapruner(model, example, hf: bool):
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    num_heads, ignored = {}, []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == 3:
            ignored.append(module)  # the classifier
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=ignored, num_heads=num_heads,
                                  output_transform=(lambda out: out.logits) if hf else None)
    pruner.step()
    with torch.no_grad():
        forward(model, example)
    return _params(model)


def _reload(pruned, hf: bool):
    if not hf:
        copy_ = copy.deepcopy(pruned)
        copy_.load_state_dict(pruned.state_dict())
        return "state dict"
    from kdnb.engine.prune import from_pretrained
    from kdnb.engine.prune.graph.library import reload_problem

    with tempfile.TemporaryDirectory() as directory:
        pruned.save_pretrained(directory)
        how = "library" if reload_problem(pruned) is None else "kdnb"
        reloaded = from_pretrained(type(pruned), directory)
    return how if reloaded is not None else "?"


def run(models: dict, hf: bool) -> list[dict]:
    rows = []
    for name, (build, inputs) in models.items():
        torch.manual_seed(0)
        model = build().eval()
        example = inputs(2)
        data = [_labelled(inputs(8)) for _ in range(4)]
        row = {"model": name, "params": _params(model)}
        with torch.no_grad():
            dense_shape = tuple(forward(model, example).shape)
        status, seconds, result = _step("struct", lambda: kdnb.prune(model, 0.5, structured=True, example=example))
        row["struct 50 % ex"] = f"{status} {seconds:.1f}s" if status == "ran" else status
        pruned = result.model if result is not None else None
        if pruned is not None:
            row["after"] = _params(pruned)
            with torch.no_grad():
                row["shape ok"] = tuple(forward(pruned.eval(), example).shape) == dense_shape
        status, seconds, _ = _step("struct data", lambda: kdnb.prune(model, 0.5, structured=True, data=data))
        row["struct 50 % data"] = f"{status} {seconds:.1f}s" if status == "ran" else status
        status, seconds, _ = _step("unstr", lambda: kdnb.prune(model, 0.8, data=data))
        row["unstr 80 % data"] = f"{status} {seconds:.1f}s" if status == "ran" else status
        if pruned is not None:
            status, seconds, _ = _step("distill", lambda: kdnb.distill(model, copy.deepcopy(pruned), data, epochs=1))
            row["distill"] = f"{status} {seconds:.1f}s" if status == "ran" else status
            status, _, _ = _step("measure", lambda: kdnb.measure(pruned, example))
            row["measure"] = status
            status, _, how = _step("reload", lambda: _reload(pruned, hf))
            row["save -> load"] = f"ran ({how})" if status == "ran" else status
        status, seconds, tp_params = _step("tp", lambda: _metapruner(model, example, hf), TP_LIMIT)
        row["TP MetaPruner"] = f"ran {seconds:.1f}s -> {tp_params}" if status == "ran" else status
        print(row, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    columns = ["model", "params", "after", "shape ok", "struct 50 % ex", "struct 50 % data", "unstr 80 % data",
               "distill", "measure", "save -> load", "TP MetaPruner"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zoo", action="store_true", help="timm and torchvision (needs them importable)")
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    models, hf = (_zoo_models(), False) if args.zoo else (_hf_models(), True)
    if args.only:
        models = {name: entry for name, entry in models.items() if name in args.only.split(",")}
    start = time.perf_counter()
    rows = run(models, hf)
    print(f"\n{' '.join(sys.argv)} -- {time.strftime('%Y-%m-%d %H:%M')} UTC, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, 1 thread, {time.perf_counter() - start:.0f} s in all\n")
    print(table(rows))


if __name__ == "__main__":
    main()
