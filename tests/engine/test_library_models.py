"""HuggingFace transformers models as people have them (built from tiny configs, never downloaded), through the
verbs with their mapping batches: BERT distilled into a smaller BERT, GPT-2 and LLaMA causal LMs distilled per
token, perplexity against the library's own loss. `import kdnb` never imports transformers."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import kdnb
from kdnb.engine import batches
from kdnb.engine.distill import Distillation, FrozenTeacher, losses

transformers = pytest.importorskip("transformers")

VOCAB, TOKENS = 40, 10


def test_import_kdnb_does_not_import_transformers():
    code = "import sys, kdnb, kdnb.api, kdnb.engine.batches; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


class Texts(Dataset):
    """Token ids with padding at the end of every third text; labels per text ("text"), per token ("token",
    -100 on padding) or the ids themselves ("lm", -100 on padding, as DataCollatorForLanguageModeling)."""

    def __init__(self, task: str, n: int = 48):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, VOCAB, (n, TOKENS), generator=g)
        self.mask = torch.ones(n, TOKENS, dtype=torch.long)
        self.mask[::3, TOKENS - 4:] = 0
        self.task = task

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids, mask = self.ids[i], self.mask[i]
        labels = {"text": (ids[0] > VOCAB // 2).long(), "token": torch.where(mask.bool(), ids % 3, -100),
                  "lm": torch.where(mask.bool(), ids, -100)}[self.task]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loader(task: str) -> DataLoader:
    return DataLoader(Texts(task), batch_size=16)


def bert(hidden: int, layers: int, head: str = "text"):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden,
                                     max_position_embeddings=TOKENS, num_labels=2 if head == "text" else 3)
    kind = transformers.BertForSequenceClassification if head == "text" else transformers.BertForTokenClassification
    torch.manual_seed(0)
    return kind(config)


def gpt2(hidden: int, layers: int):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=2, n_positions=TOKENS, bos_token_id=0,
        eos_token_id=0))


def llama(hidden: int, layers: int):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=0,
        pad_token_id=0))


def quiet(**kwargs):
    return {"progress": False, "plot": False, **kwargs}


@pytest.fixture(autouse=True)
def no_notices():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", batches.LogitsNotice)
        yield


def test_bert_distils_into_a_smaller_bert_on_mapping_batches(tmp_path):
    data, teacher = loader("text"), bert(32, 2)
    assert kdnb.train(teacher, data, epochs=2, **quiet()).status == "completed"
    result = kdnb.distill(teacher.eval(), bert(16, 1), data, val=data, epochs=2, method="cosine",
                          features=[("bert.encoder.layer.1", "bert.encoder.layer.0")], **quiet())
    assert result.history.status == "completed" and result.history.last("val_agreement") is not None
    assert set(result.history.steps) >= {"ce", "kd", "cos"}
    student = result.student
    assert student.config.hidden_size == 16 and not any(n.startswith("adapter") for n, _ in student.named_modules())
    student.save_pretrained(tmp_path)  # through its own library, as it came
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    assert kdnb.evaluate(again, data) == kdnb.evaluate(student, data)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_a_causal_lm_distils_per_token_over_the_positions_that_count(build):
    data, teacher, student = loader("lm"), build(32, 2).eval(), build(16, 1).eval()  # eval: no dropout draws
    batch = next(iter(data))
    objective = Distillation(FrozenTeacher(teacher), "kd", temperature=2.0, alpha=0.5)
    out = objective(student, batch)
    # By hand: the logits at t against token t + 1, where that token is no padding (its label is not -100).
    s, t = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, \
        teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    counts = batch["labels"][:, 1:] != -100
    s, t, y = s[:, :-1][counts], t[:, :-1][counts], batch["labels"][:, 1:][counts]
    assert out.logits.shape == (int(counts.sum()), VOCAB)
    assert torch.allclose(out.loss, losses.kd(s, t, y, 2.0, 0.5), atol=1e-5)
    result = kdnb.distill(teacher, student, data, val=data, epochs=1, **quiet())
    assert result.history.status == "completed" and 0 <= result.history.last("val_agreement") <= 1


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_perplexity_of_a_causal_lm_is_exp_of_the_librarys_own_loss(build):
    model, data = build(32, 1).eval(), DataLoader(Texts("lm"), batch_size=48)  # one batch: HF's mean is ours
    batch = next(iter(data))
    with torch.no_grad():
        library_loss = float(model(**batch).loss)
    measured = kdnb.measure(model, data, repeats=2, warmup=0)
    assert measured.perplexity == pytest.approx(math.exp(library_loss), rel=1e-5)
    assert "perplexity" in repr(measured) and 0 <= measured.accuracy <= 1


def test_token_classification_is_scored_per_token_without_the_ignored_ones():
    model, data = bert(16, 1, head="token").eval(), DataLoader(Texts("token"), batch_size=48)
    batch = next(iter(data))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    counts = batch["labels"] != -100
    expected = float((logits[counts].argmax(1) == batch["labels"][counts]).float().mean())
    assert kdnb.evaluate(model, data)["accuracy"] == pytest.approx(expected)
    assert kdnb.train(model, data, epochs=1, **quiet()).status == "completed"


# GPT-2's layers are transformers' Conv1D, not nn.Linear: the structured-pruning work makes them prunable.
@pytest.mark.parametrize("build, task", [(bert, "text"), (llama, "lm")], ids=["bert", "llama"])
def test_unstructured_pruning_sensitivity_and_compare_take_library_models(build, task):
    model, data = build(32, 1), loader(task)
    pruned = kdnb.prune(model, 0.5, data=data, criterion="taylor", finetune=1, **quiet())
    assert pruned.sparsity == pytest.approx(0.5, abs=0.02) and pruned.history.status == "completed"
    assert kdnb.sensitivity(model, data, sparsities=(0.5,), **quiet()).accuracy
    table = kdnb.compare({"dense": model, "pruned": pruned.plain_model()}, data, repeats=2, warmup=0)
    assert table.rows[1]["params_x"] > 1.5
