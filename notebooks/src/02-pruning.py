# %% [markdown]
# # 2. Pruning: which weights matter?
#
# A trained network has many weights it barely uses. Pruning scores each weight's **importance**, removes
# the least important, and fine-tunes what is left. Three classic criteria, for weight $w_k$:
#
# | criterion | score $s_k$ | idea |
# |---|---|---|
# | **L1 magnitude** (Han et al. 2015) | $\lvert w_k\rvert$ | small weights contribute little |
# | **Taylor** (Molchanov et al. 2019) | $w_k^2\,\overline{g_k^2}$ | removing $w_k$ changes the loss by about $g_k w_k$; square it, average over batches |
# | **Hessian / Optimal Brain Damage** (LeCun et al. 1990) | $\tfrac12 h_{kk} w_k^2$ | at a minimum the gradient is zero, so the loss grows by the second-order term |
#
# Taylor and Hessian need data: gradients, and for Hessian the diagonal $h_{kk}$, estimated by default by the
# empirical Fisher (the mean of $g_k^2$ over the data; `hessian_estimator="hutchinson"` uses Hutchinson's
# random probes instead). L1 needs only the weights. *Random* is the baseline every criterion must beat.

# %%
import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU, and one thread is the fastest for these small networks
# 8x8 handwritten digits, embedded: no download
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)

# %%
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();

# %% [markdown]
# ## Three criteria side by side
#
# Prune in one shot, without fine-tuning, at three sparsities, and measure what is left. The gradients are
# measured on `batches`, the training digits in a fixed order, so the table is the same each time the cell runs.

# %%
from torch.utils.data import DataLoader

batches = DataLoader(train.dataset, batch_size=64)  # not shuffled: the same batches on every run
evaluate = kdnb.evaluate
print(f"dense accuracy {evaluate(teacher, val)['accuracy']:.4f}")
print("criterion    50%     80%     90%")
table = {}
for criterion in ("l1", "taylor", "hessian", "random"):
    table[criterion] = []
    for sparsity in (0.5, 0.8, 0.9):
        pruned = kdnb.prune(teacher, sparsity=sparsity, criterion=criterion, data=batches,
                            progress=False, plot=False)
        table[criterion].append(evaluate(pruned.model, val)["accuracy"])
    print(f"{criterion:9s}" + "".join(f"  {a:.4f}" for a in table[criterion]))
# What the text below says, checked: every criterion beats random, and magnitude holds best at 90 %.
assert all(table[c][i] > table["random"][i] for c in ("l1", "taylor", "hessian") for i in (1, 2))
assert table["l1"][2] > max(table["taylor"][2], table["hessian"][2])

# %% [markdown]
# Every informed criterion beats random, but not by the same margin. Here plain magnitude holds best at high
# sparsity. Taylor and Hessian read the *gradients* of a network that already fits its training data almost
# perfectly: the gradients are tiny and noisy, and ranking all layers together on them removes too much of
# some layer. They shine when the network is not at a minimum (pruning during training) and for whole
# channels, where a channel's score sums many weights. Always compare with random, and with L1, before
# believing a clever criterion.
#
#
# ## Zeroing weights vs deleting neurons
#
# **Unstructured** pruning zeroes single weights: the matrices keep their shape (masks). **Structured**
# pruning deletes whole neurons: a hidden unit's row in one matrix and its column in the next go, and the
# network really is smaller. At the same sparsity, structured pruning loses more accuracy, because it cannot
# pick the weights one by one.

# %%
masked = kdnb.prune(teacher, sparsity=0.7, criterion="l1", progress=False, plot=False)
deleted = kdnb.prune(teacher, sparsity=0.7, criterion="l1", structured=True, data=train,
                     progress=False, plot=False)
for name, result in (("zeroed weights", masked), ("deleted neurons", deleted)):
    shapes = [tuple(m.weight.shape) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:16s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  layer shapes {shapes}")
assert evaluate(masked.model, val)["accuracy"] > evaluate(deleted.model, val)["accuracy"]

# %% [markdown]
# Which neurons go depends on the trained weights, so the exact shapes can differ on another CPU; the
# masked model's shapes and its count of zeros cannot:

# %%
# NBVAL_CHECK_OUTPUT
linear = [m for m in masked.model if isinstance(m, torch.nn.Linear)]
print("zeroed weights: layer shapes", [tuple(m.weight.shape) for m in linear])
zeros, weights = sum(int((m.weight == 0).sum()) for m in linear), sum(m.weight.numel() for m in linear)
print(f"{zeros:,} of {weights:,} weights are zero")

# %% [markdown]
# ## The sparsity explorer
#
# The scores are computed once per criterion; moving the slider masks a copy and evaluates it, and the
# accuracy-vs-sparsity curve fills in as you go. Where does each criterion fall off a cliff?

# %%
kdnb.widgets.SparsityExplorer(teacher, val, data=train)

# %% [markdown]
# ## Fine-tuning and a gradual schedule
#
# At 95 % sparsity, pruning in one shot then fine-tuning for 3 epochs is not enough: the global ranking has
# almost emptied the middle layer and the network cannot recover. Pruning **gradually** lets it adapt on the
# way, for the same 3 epochs of training: `schedule="iterative"` prunes and fine-tunes in rounds, and
# `schedule="agp"` (Zhu & Gupta 2017) raises the sparsity along a cubic curve while it fine-tunes.

# %%
oneshot = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=3)
rounds = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=1,
                    schedule="iterative", steps=3)
gradual = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=3,
                     schedule="agp", steps=10)

# %%
accuracy = {}
schedules = {"one-shot, then 3 epochs": oneshot, "3 rounds of 1 epoch": rounds, "agp over 3 epochs": gradual}
for name, result in schedules.items():
    kept = [int((m.weight != 0).sum()) for m in result.model if isinstance(m, torch.nn.Linear)]
    accuracy[name] = evaluate(result.model, val)["accuracy"]
    print(f"{name:24s} accuracy {accuracy[name]:.4f}  non-zero weights per layer {kept}, {sum(kept):,} all")
assert accuracy["agp over 3 epochs"] > accuracy["3 rounds of 1 epoch"] > accuracy["one-shot, then 3 epochs"]

# %%
gradual.summary()

# %%
gradual.plot()

# %% [markdown]
# ## Sensitivity per layer
#
# Which layers can lose weights? Prune one layer at a time and watch the accuracy. The first layer sees the
# raw pixels and the last one is small and decides the class: they are usually the most sensitive, which is
# why a global ranking (one threshold for all layers) beats the same sparsity everywhere.

# %%
layers = kdnb.sensitivity(teacher, val, sparsities=(0.5, 0.8, 0.9, 0.95, 0.99))
layers

# %%
layers.plot()
