# %% [markdown]
# # 3. Masks do not make a model faster; deleting channels does
#
# A pruned model with 90 % of its weights at zero still multiplies every one of them: the matrices have the
# same shape, and dense hardware does not skip zeros. It is smaller on disk (kdnb saves the non-zeros only)
# and it *could* be faster on sparse kernels, but not as is. **Structured** pruning deletes whole neurons
# and channels, so every matrix shrinks and the speed-up is real. This notebook measures both: latency,
# multiply-accumulates (MACs) and file size.

# %%
import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU, and one thread is the fastest for these small networks
# 8x8 handwritten digits, embedded: no download
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)

# %% [markdown]
# A wider MLP makes the latency differences visible above the noise:

# %%
torch.manual_seed(0)
wide = kdnb.models.mlp(64, [1024, 1024], 10)
kdnb.train(wide, train, val=val, epochs=3)
wide.eval();

# %%
masked = kdnb.prune(wide, sparsity=0.9, criterion="l1", data=train, val=val, finetune=2)
deleted = kdnb.prune(wide, sparsity=0.9, criterion="l1", structured=True, data=train, val=val, finetune=2)

# %% [markdown]
# `kdnb.compare` measures each model the same way: accuracy, parameters and non-zeros, MACs per sample
# (and *nonzero MACs*, the theoretical cost if zeros were free), bytes of the `kdnb.save` file, and the
# measured latency on the last line (the number that varies most between runs; it says when it is noisy).

# %%
mlps = kdnb.compare({"dense": wide, "masked 90%": masked.model, "deleted 90%": deleted.model}, val)
mlps

# %% [markdown]
# The masked model's MACs are those of the dense one: only the *nonzero* MACs dropped, and its latency did
# not. The structured one really has fewer MACs and runs faster. Its layers (which neurons go depends on the
# trained weights, so on another CPU a few may differ):

# %%
print([tuple(m.weight.shape) for m in deleted.model if isinstance(m, torch.nn.Linear)])

# %% [markdown]
# What holds on any machine: the dense and masked sizes exactly; for the deleted model, about a tenth of the
# cost, and all three accuracies within a few points of each other.

# %%
# NBVAL_CHECK_OUTPUT
row = mlps.as_dict()
for name in ("dense", "masked 90%"):
    print(f"{name:11s} {row[name]['params']:>9,} params, {row[name]['nonzero_params']:>9,} non-zero, "
          f"{row[name]['macs']:>9,} MACs, {row[name]['nonzero_macs']:>9,} non-zero MACs")
assert 0.09 < row["deleted 90%"]["macs"] / row["dense"]["macs"] < 0.11
assert max(r["accuracy"] for r in row.values()) - min(r["accuracy"] for r in row.values()) < 0.03

# %% [markdown]
# ## A residual network
#
# In a ResNet the two branches of each residual block are **added**, so their channels must match: deleting
# channel 5 of a block's output means deleting channel 5 of its shortcut, of the next block's input, and of
# the BatchNorm beside each. kdnb finds these coupled groups with Torch-Pruning's dependency graph
# (Fang et al. 2023), so the pruned network still runs.

# %%
images, val_images = kdnb.datasets.load("digits", batch_size=64, seed=0, flat=False)  # (1, 8, 8) images
torch.manual_seed(0)
resnet = kdnb.models.resnet_small(width=16)
kdnb.train(resnet, images, val=val_images, epochs=3, lr=3e-3)
resnet.eval();

# %%
slim = kdnb.prune(resnet, sparsity=0.6, criterion="l1", structured=True, data=images, val=val_images,
                  finetune=2)

# %%
resnets = kdnb.compare({"resnet": resnet, "channels deleted": slim.model}, val_images)
row = resnets.as_dict()
assert row["channels deleted"]["macs"] < 0.5 * row["resnet"]["macs"]
assert row["resnet"]["accuracy"] > 0.85
assert row["channels deleted"]["accuracy"] > row["resnet"]["accuracy"] - 0.03
resnets

# %% [markdown]
# MACs fell by more than half, latency usually much less: on 8x8 images each convolution is tiny and the
# fixed cost of every layer dominates, so MACs are not time. Measure on the hardware you deploy to.
#
# This is the notebook's most machine-dependent number: three epochs of a convolutional network with
# BatchNorm land on a different accuracy (0.90 to 0.96 seen) with the CPU's kernels, and which channels go
# follows the trained weights. The checks above hold on any machine; the printed table is this machine's.
#
# Each residual block: the channels it receives, the width inside it, and the channels it adds back. The
# output of one block is the input of the next, and the add forces the body and the shortcut to agree, so
# these numbers chain.

# %%
from kdnb.models import Residual

blocks = []
for name, module in slim.model.named_modules():
    if isinstance(module, Residual):
        first, second = [m for m in module.body if isinstance(m, torch.nn.Conv2d)]
        blocks.append((first.in_channels, first.out_channels, second.out_channels))
        print(f"block {name}: in {first.in_channels:2d} channels, inside {first.out_channels:2d}, "
              f"out {second.out_channels:2d}")

# %%
# NBVAL_CHECK_OUTPUT
# The chain, on any machine: what a block adds back is what the next one receives.
chained = all(block[2] == following[0] for block, following in zip(blocks, blocks[1:]))
print(f"{len(blocks)} residual blocks; channels chain: {chained}")

# %% [markdown]
# ## Pruning for speed: `scope="latency"`
#
# The default ranking (`scope="global"`) compares the channels' scores across layers: it keeps accuracy, not
# necessarily time. `scope="latency"` makes two cuts at the same sparsity from the same scores, one ranked by
# score per *cost* saved (the channel's MACs plus the memory traffic of the activations it writes and reads,
# which is where depthwise convolutions and norms spend their time) and the global one, deletes both on copies,
# times them on the example batch and keeps the faster. It is timed, so the choice can differ between machines
# and runs; `ranking` says which one it kept. `bench/prune_zoo.py` runs it on 16 architectures beside
# Torch-Pruning.
#
# Ranked by cost alone, the layers that run at full resolution would go first, down to the one channel a layer
# must keep. So the cost ranking stops taking a layer's channels once it has taken half of them
# (`max_layer_sparsity=0.5`, Torch-Pruning's `max_pruning_ratio`) and moves on to the next layers. Here, on the
# same ResNet with the same fine-tuning, with that floor and without it (`max_layer_sparsity=1.0`):

# %%
import warnings

fast = kdnb.prune(resnet, sparsity=0.6, criterion="l1", structured=True, data=images, val=val_images,
                  finetune=2, scope="latency", progress=False, plot=False)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "layer ... keeps 1 of 16 channels": the narrowest layer is printed below
    no_floor = kdnb.prune(resnet, sparsity=0.6, criterion="l1", structured=True, data=images, val=val_images,
                          finetune=2, scope="latency", max_layer_sparsity=1.0, progress=False, plot=False)
for name, result in (("latency", fast), ("latency, no floor", no_floor)):
    layer, (kept, of) = min(result.channels.items(), key=lambda item: item[1][0] / item[1][1])
    print(f"{name}: kept the {result.ranking} ranking; its narrowest layer, {layer!r}, keeps {kept} of {of} channels")
cuts = kdnb.compare({"resnet": resnet, "global ranking": slim.model, "latency": fast.model,
                     "latency, no floor": no_floor.model}, val_images)
cuts

# %% [markdown]
# Read the rows together. Without the floor the cost ranking cuts the stem, the layer that runs at full
# resolution, to one channel: the most MACs removed, and a bottleneck that two epochs of fine-tuning do not win
# back. With the floor no layer of the cost-ranked cut keeps fewer than half its channels, so it removes fewer
# MACs. Which cut runs faster is timed, on this machine, now: the lines below are written from the table above.

# %%
row = cuts.as_dict()


def than(name, other):
    """'faster' or 'slower', and by how much, from the two models' timed latency in the table above."""
    ratio = row[other]["latency_ms"] / row[name]["latency_ms"]
    return f"{'faster' if ratio > 1 else 'slower'} ({row[name]['latency_ms']:.2f} ms against {row[other]['latency_ms']:.2f})"


print(f"with the floor, the latency cut runs {than('latency', 'latency, no floor')} than without it,")
print(f"and {than('latency', 'global ranking')} than the global ranking's cut;")
print(f"its accuracy: {row['latency']['accuracy']:.2%} against the global ranking's "
      f"{row['global ranking']['accuracy']:.2%} ({fast.ranking} ranking kept)")

# %% [markdown]
# `scope="latency"` chooses for time alone: check the accuracy before you keep its model, and fine-tune longer,
# lower `max_layer_sparsity`, or keep the global ranking, when it falls.

# %% [markdown]
# ## Saving: masks fold, zeros compress
#
# `kdnb.save` writes plain tensors (no pickled code) and stores a tensor's non-zeros when that is smaller;
# `make_permanent` folds the masks into the weights for inference. The pruned model reloads with the
# same accuracy:

# %%
# NBVAL_CHECK_OUTPUT
import os, tempfile

with tempfile.TemporaryDirectory() as folder:
    saved = {"dense": wide, "masked": kdnb.make_permanent(masked.model), "deleted": deleted.model}
    for name, model in saved.items():
        path = os.path.join(folder, f"{name}.kdnb")
        kdnb.save(model, path)
        size = os.path.getsize(path)
        dense_size = size if name == "dense" else dense_size
        same = kdnb.evaluate(kdnb.load(path), val) == kdnb.evaluate(model, val)
        print(f"{name:8s} {size / dense_size:5.0%} of the dense file ({dense_size:,} bytes); "
              f"same accuracy reloaded: {same}")
