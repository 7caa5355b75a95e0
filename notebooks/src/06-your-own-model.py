# %% [markdown]
# # 6. Your own model: a HuggingFace transformer, as it is
#
# The tutorials so far compressed kdnb's own networks. Yours probably comes from a library: a model from
# HuggingFace `transformers`, whose batches are **mappings** (`input_ids`, `attention_mask`, `labels`) and whose
# forward returns a `ModelOutput`, not a tensor. kdnb takes both as they are, with no wrapper: the keyword inputs
# go into the model, `labels` into the loss, and the logits come out of `.logits`.
#
# The whole pipeline, on a BERT built from its config (nothing downloaded): **train → prune → distil into a
# smaller BERT → measure → save and reload with the library's own `save_pretrained` / `from_pretrained`**.

# %%
import tempfile

import torch
import transformers
from torch.utils.data import DataLoader

import kdnb

# Binder gives one CPU, and one thread is the fastest for these small networks
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()  # the library's own config chatter off...
transformers.logging.disable_progress_bar()  # ...and its progress bars (kdnb draws its own)

# %% [markdown]
# ## Movie reviews, made up in the notebook
#
# A vocabulary of 22 words, four of them positive and four negative. Each review has 10 to 16 words, four of
# them opinions; it is positive when it has more positive than negative opinion words. Shorter reviews are
# padded with word 0, and their `attention_mask` says which positions are words. Each sample is a dict, as a
# HuggingFace dataset gives it, so the `DataLoader` collates **mapping batches**.

# %%
WORDS = ["[pad]", "great", "good", "fine", "lovely", "bad", "awful", "poor", "boring",
         "the", "movie", "plot", "acting", "was", "and", "a", "very", "film", "story", "music", "not", "really"]


def reviews(count, seed, length=16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(9, len(WORDS), (count, length), generator=g)  # neutral words
    opinions = torch.randint(1, 9, (count, 4), generator=g)  # four opinion words per review...
    ids.scatter_(1, torch.rand(count, length, generator=g).argsort(1)[:, :4], opinions)  # ...at random places
    mask = (torch.arange(length) < torch.randint(10, length + 1, (count, 1), generator=g)).long()
    ids = ids * mask  # padding: word 0
    positive, negative = ((ids >= 1) & (ids <= 4)).sum(1), ((ids >= 5) & (ids <= 8)).sum(1)
    labels = (positive > negative).long()
    return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]


train = DataLoader(reviews(1000, seed=0), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
val = DataLoader(reviews(400, seed=1), batch_size=100)
first = train.dataset[0]
print(" ".join(WORDS[i] for i in first["input_ids"] if i), "->", ["negative", "positive"][first["labels"]])

# %% [markdown]
# ## A BERT from its config
#
# Two layers, four heads, 64 dimensions: about 74 thousand parameters, built from a `BertConfig` with random
# weights. `kdnb.train` takes it and the mapping batches as they are; the first time it meets a `ModelOutput`
# it says which part it read as the logits (pass `logits=` to choose another, `inputs=` to read batches of
# another shape).

# %%
def bert(hidden, layers, heads):
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=16, num_labels=2, pad_token_id=0)
    return transformers.BertForSequenceClassification(config)


torch.manual_seed(0)
teacher = bert(64, layers=2, heads=4)
kdnb.train(teacher, train, val=val, epochs=6, lr=2e-3)
teacher.eval();

# %%
original = kdnb.evaluate(teacher, val)["accuracy"]
print(f"teacher: {sum(p.numel() for p in teacher.parameters()):,} parameters, val accuracy {original:.4f}")
assert original > 0.9  # 0.965 on the machine that saved this notebook

# %% [markdown]
# ## Prune it
#
# Half of the weights of its Linear layers go, the least important first (LAMP scores, then each layer's
# kept weights re-solved on the training inputs: kdnb's default with data, tutorial 02). This is **unstructured**
# pruning: the zeros stay in place, so the model keeps its shape and its config, and the library reloads it as
# it is. (Deleting whole heads and neurons of a library model, with its config updated, is structured pruning:
# tutorial 05 shows it on kdnb's own transformer.)

# %%
cut = kdnb.prune(teacher, sparsity=0.5, data=train, val=val)
cut.summary()

# %%
pruned = kdnb.evaluate(cut.model, val)["accuracy"]
assert cut.sparsity >= 0.5 and original - pruned < 0.02  # half the weights, under 2 points lost

# %% [markdown]
# ## Distil it into a smaller BERT
#
# The student is the same architecture at a quarter of the width and half the depth: one layer, two heads, 32
# dimensions. `kdnb.distill` runs the teacher on the same mapping batches and matches its softened
# predictions (Hinton's KD, $T = 4$). For sequence outputs, a language model's logits `(batch, tokens, vocab)`,
# it would compare them token by token over the positions that count (padding and labels of -100 left out).

# %%
torch.manual_seed(0)
student = bert(32, layers=1, heads=2)
distilled = kdnb.distill(teacher, student, train, val=val, epochs=6, lr=2e-3)

# %%
small = distilled.student
print(kdnb.compare({"teacher": teacher, "pruned": cut.plain_model(), "student": small}, val))

# %%
# NBVAL_CHECK_OUTPUT
table = kdnb.compare({"teacher": teacher, "student": small}, val).as_dict()
student_row = table["student"]
print(f"the student has over 6x fewer parameters: {student_row['params_x'] > 6}")
print(f"and loses under 5 points of accuracy: {original - student_row['accuracy'] < 0.05}")

# %% [markdown]
# ## Save and reload it with its own library
#
# The student is still a `BertForSequenceClassification` with a true config, so `save_pretrained` writes it
# and `from_pretrained` rebuilds it, as for any HuggingFace model; the pruned teacher too, its masks folded
# into plain weights by `plain_model()`.

# %%
with tempfile.TemporaryDirectory() as folder:
    small.save_pretrained(folder)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(folder)
    cut.plain_model().save_pretrained(folder + "/pruned")
    reloaded_pruned = transformers.BertForSequenceClassification.from_pretrained(folder + "/pruned")
print(reloaded.config.hidden_size, reloaded.config.num_hidden_layers, reloaded.config.num_attention_heads)

# %%
# NBVAL_CHECK_OUTPUT
print(f"the reloaded student is the same: {kdnb.evaluate(reloaded, val) == kdnb.evaluate(small, val)}")
print(f"the reloaded pruned model keeps its zeros: {kdnb.measure(reloaded_pruned, val).sparsity >= 0.5}")
