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
# Taylor and Hessian need data (gradients, and the Hessian's diagonal estimated with Hutchinson's trick);
# L1 needs only the weights. *Random* is the baseline every criterion must beat.

# %%
import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU; one thread also makes every printed number the same on any machine
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)  # 8x8 handwritten digits, embedded: no download

# %%
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();

# %% [markdown]
# ## Three criteria side by side
#
# Prune in one shot, without fine-tuning, at three sparsities, and measure what is left:

# %%
# NBVAL_CHECK_OUTPUT
from kdnb.engine.evaluate import evaluate

print(f"dense accuracy {evaluate(teacher, val)['accuracy']:.4f}")
print("criterion    50%     80%     90%")
for criterion in ("l1", "taylor", "hessian", "random"):
    accuracies = []
    for sparsity in (0.5, 0.8, 0.9):
        pruned = kdnb.prune(teacher, sparsity=sparsity, criterion=criterion, data=train, progress=False, plot=False)
        accuracies.append(evaluate(pruned.model, val)["accuracy"])
    print(f"{criterion:9s}" + "".join(f"  {a:.4f}" for a in accuracies))

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
# NBVAL_CHECK_OUTPUT
masked = kdnb.prune(teacher, sparsity=0.7, criterion="l1", progress=False, plot=False)
deleted = kdnb.prune(teacher, sparsity=0.7, criterion="l1", structured=True, data=train, progress=False, plot=False)
for name, result in (("zeroed weights", masked), ("deleted neurons", deleted)):
    shapes = [tuple(m.weight.shape) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:16s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  layer shapes {shapes}")

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
rounds = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=1, schedule="iterative", steps=3)
gradual = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=3, schedule="agp", steps=10)

# %%
# NBVAL_CHECK_OUTPUT
for name, result in (("one-shot, then 3 epochs", oneshot), ("3 rounds of 1 epoch", rounds), ("agp over 3 epochs", gradual)):
    kept = [int((m.weight != 0).sum()) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:24s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  non-zero weights per layer {kept}")

# %%
# NBVAL_CHECK_OUTPUT
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
# NBVAL_CHECK_OUTPUT
from kdnb.engine.prune import sensitivity

layers = sensitivity(teacher, val, sparsities=(0.5, 0.8, 0.9, 0.95, 0.99))
layers

# %%
layers.plot()
