# %% [markdown]
# # 4. Prune hard, then recover by distillation
#
# Pruning and distillation combine: prune a trained network hard (here, 99 % of its weights deleted as
# whole neurons), then win back the accuracy. The **original** network is the natural teacher: the pruned
# one started as a copy of it, and the teacher can label inputs nobody labelled.
#
# The full pipeline: **train → prune (structured) → recover (fine-tune or distil) → measure → save**.

# %%
import torch
import kdnb

# Binder gives one CPU, and one thread is the fastest for these small networks
torch.set_num_threads(1)
# 8x8 handwritten digits, embedded: no download
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)

# %%
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();

# %%
# ThiNet (group OBS) in 8 rounds and the refit, the default
cut = kdnb.prune(teacher, sparsity=0.99, structured=True, data=train, val=val)

# %%
cut.summary()

# %%
# NBVAL_CHECK_OUTPUT
linear = [m for m in cut.model if isinstance(m, torch.nn.Linear)]
print(f"{len(linear)} Linear layers, {linear[0].in_features} inputs, "
      f"{linear[-1].out_features} classes")
print(f"at least 99% of the prunable weights deleted: {cut.sparsity >= 0.99}")

# %% [markdown]
# The hidden layers went from 256 and 256 neurons to about ten each. `kdnb.prune` refitted each next layer on
# the neurons left (the least-squares refit, its default with data: tutorial 02), and still a good part of the
# accuracy went with them (the summary above says how much).
# Two ways to win it back, from the same pruned network, for the same 10 epochs:
#
# - **fine-tune** on the hard labels;
# - **distil** from the original network (soft labels, $T = 4$, $\alpha = 0.5$).
#
# ## With every label

# %%
import copy

finetuned = copy.deepcopy(cut.model)
kdnb.train(finetuned, train, val=val, epochs=10, lr=3e-3)
distilled = kdnb.distill(teacher, cut.model, train, val=val, epochs=10, lr=3e-3)

# %%
evaluate = kdnb.evaluate
original, pruned = evaluate(teacher, val)["accuracy"], evaluate(cut.model, val)["accuracy"]

def report(name, model):
    acc = evaluate(model, val)["accuracy"]
    share = (acc - pruned) / (original - pruned)
    print(f"{name:32s} {acc:.4f}  recovered {100 * share:.0f}% of the accuracy lost")
    return acc

with_labels = {"fine-tuned": report("fine-tuned on all the labels", finetuned),
               "distilled": report("distilled on all the labels", distilled.student)}
# about as well as each other, within 3 points:
assert abs(with_labels["fine-tuned"] - with_labels["distilled"]) < 0.03

# %% [markdown]
# With the whole labelled training set, plain fine-tuning recovers about as well as distillation (within a
# few digits), and it is simpler. Distillation is no magic: on an easy task with plenty of labels, the hard
# labels already say what the soft ones do.
#
# ## With 100 labels and unlabelled inputs
#
# Often the person compressing a model does not have its labelled training set, only inputs: the model came
# from elsewhere, or labels are expensive. Keep 100 labelled digits; the other inputs come without labels.
# Fine-tuning can only use the 100; the teacher labels all of them.

# %%
from torch.utils.data import DataLoader, TensorDataset

x_all, y_all = train.dataset.tensors
few = DataLoader(TensorDataset(x_all[:100], y_all[:100]), batch_size=32, shuffle=True,
                 generator=torch.Generator().manual_seed(0))
finetuned_few = copy.deepcopy(cut.model)
kdnb.train(finetuned_few, few, val=val, epochs=10, lr=3e-3)
recovered = kdnb.distill(teacher, cut.model, few, val=val, transfer=x_all[100:], epochs=10, lr=3e-3)

# %%
few_labels = {"fine-tuned": report("fine-tuned on 100 labels", finetuned_few),
              "distilled": report("distilled, 100 labels + inputs", recovered.student)}
assert few_labels["distilled"] > few_labels["fine-tuned"] + 0.05

# %% [markdown]
# Now the teacher's soft labels on unlabelled inputs make the difference. `kdnb.prune(..., distill=True)`
# fine-tunes by distilling from the unpruned model in one call. The end of the pipeline, measured against
# where we started, saved and reloaded:

# %%
import os, tempfile

small = recovered.student
print(kdnb.compare({"original": teacher, "pruned + distilled": small}, val))
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "small.kdnb")
    kdnb.save(small, path)
    reloaded = evaluate(kdnb.load(path), val)
    print(f"saved {os.path.getsize(path):,} bytes; reloaded accuracy {reloaded['accuracy']:.4f}")
    reloaded_same = reloaded == evaluate(small, val)

# %%
# NBVAL_CHECK_OUTPUT
print(f"the saved file reloads with the same accuracy: {reloaded_same}")

# %%
recovered.plot()

# %% [markdown]
# ## Out of kdnb: ONNX Runtime
#
# A smaller network is only useful where it runs. `kdnb.export` writes it to ONNX (pruning masks folded, any
# batch size), runs the file in ONNX Runtime, the engine many servers and phones use, and checks that it gives
# the network's outputs. `kdnb.compare(..., runtime="onnxruntime")` times both networks there, beside torch.

# %%
x = next(iter(val))[0]
with tempfile.TemporaryDirectory() as folder:
    onnx_original = kdnb.export(teacher, os.path.join(folder, "original.onnx"), example=x)
    onnx_small = kdnb.export(small, os.path.join(folder, "small.onnx"), example=x)
print(onnx_original)
print(onnx_small)
networks = {"original": teacher, "pruned + distilled": small}
in_torch = kdnb.compare(networks, val, batch_size=1024)
in_onnx = kdnb.compare(networks, val, batch_size=1024, runtime="onnxruntime")
print(in_onnx.latency_line())
print(in_torch.latency_line())
smaller = onnx_original.bytes / onnx_small.bytes
faster_onnx, faster_torch = in_onnx.rows[1]["speedup"], in_torch.rows[1]["speedup"]
print(f"ONNX files: {onnx_original.bytes:,} and {onnx_small.bytes:,} bytes ({smaller:.0f}x smaller); "
      f"{faster_onnx:.1f}x faster in ONNX Runtime, {faster_torch:.1f}x in torch")
# fewer neurons: a much smaller file that runs faster in ONNX Runtime too
assert smaller > 10 and faster_onnx > 1.5

# %%
# NBVAL_CHECK_OUTPUT
print(f"ONNX Runtime gives the network's outputs (max difference under 1e-4): {onnx_small.max_diff < 1e-4}")
print(f"the ONNX file is more than 10x smaller: {smaller > 10}")
