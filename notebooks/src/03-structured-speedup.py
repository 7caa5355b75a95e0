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

torch.set_num_threads(1)  # Binder gives one CPU; one thread also makes every printed number the same on any machine
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)  # 8x8 handwritten digits, embedded: no download

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
# measured latency on the last line (the only number that varies between runs).

# %%
# NBVAL_CHECK_OUTPUT
print(kdnb.compare({"dense": wide, "masked 90%": masked.model, "deleted 90%": deleted.model}, val))

# %% [markdown]
# The masked model's MACs are those of the dense one: only the *nonzero* MACs dropped, and its latency did
# not. The structured one really has fewer MACs and runs faster. Its layers:

# %%
# NBVAL_CHECK_OUTPUT
print([tuple(m.weight.shape) for m in deleted.model if isinstance(m, torch.nn.Linear)])

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
slim = kdnb.prune(resnet, sparsity=0.6, criterion="l1", structured=True, data=images, val=val_images, finetune=2)

# %%
# NBVAL_CHECK_OUTPUT
print(kdnb.compare({"resnet": resnet, "channels deleted": slim.model}, val_images))

# %% [markdown]
# MACs fell by more than half, latency much less: on 8x8 images each convolution is tiny and the fixed cost
# of every layer dominates, so MACs are not time. Measure on the hardware you deploy to.
#
# Each residual block: the channels it receives, the width inside it, and the channels it adds back. The
# output of one block is the input of the next, and the add forces the body and the shortcut to agree, so
# these numbers chain.

# %%
# NBVAL_CHECK_OUTPUT
from kdnb.models import Residual

for name, module in slim.model.named_modules():
    if isinstance(module, Residual):
        first, second = [m for m in module.body if isinstance(m, torch.nn.Conv2d)]
        print(f"block {name}: in {first.in_channels:2d} channels, inside {first.out_channels:2d}, out {second.out_channels:2d}")

# %% [markdown]
# ## Saving: masks fold, zeros compress
#
# `kdnb.save` writes plain tensors (no pickled code) and stores a tensor's non-zeros when that is smaller;
# `make_permanent` folds the masks into the weights for inference. The pruned model reloads with the
# same accuracy:

# %%
# NBVAL_CHECK_OUTPUT
import os, tempfile
from kdnb.engine.evaluate import evaluate
from kdnb.engine.prune import make_permanent

with tempfile.TemporaryDirectory() as folder:
    for name, model in (("dense", wide), ("masked", make_permanent(masked.model)), ("deleted", deleted.model)):
        path = os.path.join(folder, f"{name}.kdnb")
        kdnb.save(model, path)
        back = kdnb.load(path)
        print(f"{name:8s} {os.path.getsize(path):>10,} bytes   reloaded accuracy {evaluate(back, val)['accuracy']:.4f}")
