"""Every verb on HuggingFace transformers models as people have them: built from tiny configs (nothing
downloaded), their own batches (mappings with "labels"), no wrapper. Prints, per architecture and verb, "ran"
(with the seconds it took) or "refused" with kdnb's one-line reason, or "FAILED" with the exception a user
would see.

    python bench/real_verbs.py [--only bert,gpt2]

Structured pruning of these architectures is the subject of bench/prune_real.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch
from torch.utils.data import DataLoader

import kdnb
from kdnb import KdnbError

VOCAB, TOKENS, CLASSES = 40, 12, 3


def texts(task: str, n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, TOKENS), generator=g)
    mask = torch.ones(n, TOKENS, dtype=torch.long)
    mask[::3, TOKENS - 3:] = 0
    labels = {"text": ids[:, 0] % CLASSES, "token": torch.where(mask.bool(), ids % CLASSES, -100),
              "lm": torch.where(mask.bool(), ids, -100)}[task]
    return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]


def images(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, 16, 16, generator=g)
    return [{"pixel_values": p, "labels": int(p[0, 0, 0] > 0)} for p in pixels]


def audio(n: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(n, 400, generator=g)
    return [{"input_values": w, "labels": int(w[0] > 0)} for w in waves]


def architectures() -> dict:
    import transformers as tf

    def bert(width, layers, kind=tf.BertForSequenceClassification, labels=CLASSES):
        return kind(tf.BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=2 * width, max_position_embeddings=TOKENS, num_labels=labels))

    def roberta(width, layers):
        return tf.RobertaForSequenceClassification(tf.RobertaConfig(
            vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=2 * width, max_position_embeddings=TOKENS + 2, num_labels=CLASSES, pad_token_id=0))

    def distilbert(width, layers):
        return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=VOCAB, dim=width, n_layers=layers, n_heads=2, hidden_dim=2 * width,
            max_position_embeddings=TOKENS, num_labels=CLASSES))

    def gpt2(width, layers):
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=layers, n_head=2,
                                                n_positions=TOKENS, bos_token_id=0, eos_token_id=0))

    def llama(width, layers):
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=2 * width, max_position_embeddings=TOKENS, bos_token_id=0,
            eos_token_id=0, pad_token_id=0))

    def vit(width, layers):
        return tf.ViTForImageClassification(tf.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, hidden_size=width, num_hidden_layers=layers,
            num_attention_heads=2, intermediate_size=2 * width, num_labels=2))

    def wav2vec2(width, layers):
        return tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(
            hidden_size=width, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * width,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, num_labels=2, classifier_proj_size=16))

    def bert_tokens(width, layers):
        return bert(width, layers, tf.BertForTokenClassification)

    return {"bert": (bert, "text"), "bert-token": (bert_tokens, "token"), "roberta": (roberta, "text"),
            "distilbert": (distilbert, "text"), "gpt2": (gpt2, "lm"), "llama": (llama, "lm"), "vit": (vit, "image"),
            "wav2vec2": (wav2vec2, "audio")}


def verbs(teacher, student, data, example):
    quiet = {"progress": False, "plot": False}

    def library_save_load():
        with tempfile.TemporaryDirectory() as folder:
            teacher.save_pretrained(folder)
            again = type(teacher).from_pretrained(folder)
            assert kdnb.evaluate(again, data) == kdnb.evaluate(teacher, data)

    def kdnb_save_load():
        with tempfile.TemporaryDirectory() as folder:
            kdnb.save(teacher, os.path.join(folder, "model.kdnb"))
            kdnb.load(os.path.join(folder, "model.kdnb"))

    def pruned(structured, sparsity):
        result = kdnb.prune(teacher, sparsity, structured=structured, data=data, **quiet)
        before, after = (kdnb.measure(model, example, repeats=1, warmup=0).nonzero_params
                         for model in (teacher, result.plain_model()))
        return f"(sparsity {result.sparsity:.2f}; nonzero params {after:,} of {before:,})"

    return {
        "train": lambda: kdnb.train(teacher, data, val=data, epochs=1, **quiet),
        "evaluate": lambda: kdnb.evaluate(teacher, data),
        "distill": lambda: kdnb.distill(teacher.eval(), student, data, val=data, epochs=1, **quiet),
        "prune 80% unstructured": lambda: pruned(False, 0.8),
        "prune 50% structured": lambda: pruned(True, 0.5),
        "measure": lambda: kdnb.measure(teacher, data, repeats=3, warmup=1),
        "measure example": lambda: kdnb.measure(teacher, example, repeats=3, warmup=1),
        "compare": lambda: kdnb.compare({"t": teacher, "s": student}, data, repeats=3, warmup=1),
        "sensitivity": lambda: kdnb.sensitivity(teacher, data, sparsities=(0.5,), **quiet),
        "save_pretrained/reload": library_save_load,
        "kdnb.save/kdnb.load": kdnb_save_load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated architectures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets = {"text": lambda: texts("text"), "token": lambda: texts("token"), "lm": lambda: texts("lm"),
                "image": images, "audio": audio}
    for name, (build, task) in architectures().items():
        if args.only and name not in args.only.split(","):
            continue
        data = DataLoader(datasets[task](), batch_size=8)
        example = {k: v for k, v in next(iter(data)).items() if k != "labels"}
        torch.manual_seed(0)
        teacher, student = build(32, 2), build(16, 1)
        params = sum(p.numel() for p in teacher.parameters())
        print(f"== {name} ({type(teacher).__name__}, {params:,} parameters, transformers {transformers.__version__})")
        for verb, call in verbs(teacher, student, data, example).items():
            start = time.perf_counter()
            try:
                note = call()
                note = note if isinstance(note, str) else ""
                print(f"  {verb:28s} ran      {time.perf_counter() - start:6.2f} s {note}")
            except KdnbError as error:
                print(f"  {verb:28s} refused  {str(error)[:150]}")
            except Exception as error:  # noqa: BLE001 - what the user would see, reported
                print(f"  {verb:28s} FAILED   {type(error).__name__}: {str(error).splitlines()[0][:140]}")
        sys.stdout.flush()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
