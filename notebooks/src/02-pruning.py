# %% [markdown]
# # 2. Pruning: which weights matter?
#
# A trained network has many weights it barely uses. Pruning scores each weight's **importance** and removes
# the least important. Three classic criteria, for weight $w_k$:
#
# | criterion | score $s_k$ | idea |
# |---|---|---|
# | **L1 magnitude** (Han et al. 2015) | $\lvert w_k\rvert$ | small weights contribute little |
# | **Taylor** (Molchanov et al. 2019) | $w_k^2\,\overline{g_k^2}$ | removing $w_k$ changes the loss by about $g_k w_k$; square it, average over batches |
# | **Hessian / Optimal Brain Damage** (LeCun et al. 1990) | $\tfrac12 h_{kk} w_k^2$ | at a minimum the gradient is zero, so the loss grows by the second-order term |
#
# Taylor and Hessian need data: gradients, and for Hessian the diagonal $h_{kk}$, estimated by default by the
# empirical Fisher (the mean over training samples of the per-sample gradient squared, a stand-in for the
# Hessian near a minimum; `hessian_estimator="hutchinson"` uses Hutchinson's random probes instead). L1 needs
# only the weights. *Random* is the baseline every criterion must beat.
#
# All three only *remove*: the weights that stay are left as they were. **Optimal Brain Surgeon** (Hassibi &
# Stork 1993) also *moves* them to make up for what went. For one layer with inputs $X$ (one row per sample),
# the error of its outputs has the Hessian $H = 2X^\top X$, and OBS's two formulas are exact:
#
# | | formula |
# |---|---|
# | saliency of weight $q$ | $s_q = \dfrac{w_q^2}{2\,[H^{-1}]_{qq}}$ (OBD's $\tfrac12 h_{qq} w_q^2$ with the full Hessian) |
# | update of the others | $\delta w = -\dfrac{w_q}{[H^{-1}]_{qq}}\, H^{-1} e_q$ |
#
# kdnb applies it layer by layer in forward order, on the inputs the already-pruned layers produce (L-OBS,
# Dong et al. 2017; SparseGPT, Frantar & Alistarh 2023): `criterion="obs"`. The update alone is
# `reconstruct=True`: after *any* criterion has chosen, each layer's kept weights are re-solved by least
# squares to reproduce the dense layer's outputs. It is the default whenever `data` is given; it reads the
# first 2,048 training samples (`calibration_samples=`; digits has 1,438).

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

# %% [markdown]
# ## Removing weights, with and without the update
#
# Prune in one shot, without fine-tuning, at three sparsities, and measure what is left: first the three
# classic criteria as their papers use them (remove only, `reconstruct=False`), then OBS with its update, and
# last what `kdnb.prune(teacher, sparsity, data=batches)` does with no other option (LAMP's layer-adaptive
# magnitude ranking, Lee et al. 2021, then the update). The statistics are measured on `batches`, the training
# digits in a fixed order, so the table is the same each time the cell runs.

# %%
from torch.utils.data import DataLoader

batches = DataLoader(train.dataset, batch_size=64)  # not shuffled: the same batches on every run
evaluate = kdnb.evaluate
sparsities = (0.8, 0.9, 0.95)
methods = {"random": dict(criterion="random", reconstruct=False),
           "l1": dict(criterion="l1", reconstruct=False),
           "taylor": dict(criterion="taylor", reconstruct=False),
           "hessian": dict(criterion="hessian", reconstruct=False),
           "obs + update": dict(criterion="obs"), "default": dict()}
print(f"dense accuracy {evaluate(teacher, val)['accuracy']:.4f}")
print("method           " + "".join(f"{s:>8.0%}" for s in sparsities))
table = {}
for method, options in methods.items():
    table[method] = [evaluate(kdnb.prune(teacher, sparsity=s, data=batches, progress=False,
                                         plot=False, **options).model, val)["accuracy"]
                     for s in sparsities]
    print(f"{method:15s}" + "".join(f"  {a:.4f}" for a in table[method]))
# What the text below says, checked (the margins in the table are 15 points or more; another CPU moves them
# by a point or two):
assert all(table[c][i] > table["random"][i] for c in ("l1", "taylor", "hessian") for i in (0, 1))
assert table["l1"][1] > max(table["taylor"][1], table["hessian"][1])
assert min(table["obs + update"]) > 0.95 and table["obs + update"][1] > table["hessian"][1] + 0.2
assert min(table["default"]) > 0.95

# %% [markdown]
# Read the table row by row. Without the update every informed criterion beats random, but at 95 % all of
# them collapse; plain magnitude holds best at 90 %. Taylor and Hessian read the *gradients* of a network
# that already fits its training data almost perfectly: the gradients are tiny and noisy. OBS differs from
# the Hessian row in two ways, the full layer Hessian instead of its diagonal and the update, and together they
# keep the network close to the dense one at every sparsity of the table. The default does as well with
# LAMP's scores: once the kept weights are re-solved, *which* weights go matters much less than moving the
# rest. Always compare with random, and with L1, before believing a clever criterion. (The warning under the
# table is kdnb's own, about L1 at 95 %: see *One scale for every layer* below.)

# %% [markdown]
# ## The last layer: match the predictions
#
# Least squares reproduces each layer's *outputs*. For the last layer the outputs are the logits, and what
# the network is for is the distribution they predict. So the update goes one step further there: from its
# least-squares solution, the last layer's kept weights move to those that minimise the KL divergence between
# the dense and the pruned network's predictions on the calibration digits, gently pulled back towards the
# least-squares solution (a convex problem; like the least squares it reads no labels). That is what
# `reconstruct=True` does; `reconstruct="least_squares"` stops at least squares. LAMP's masks, then each
# version of the update:

# %%
def lamp_accuracy(sparsity, update):
    if update is True and sparsity in sparsities:  # the first table's "default" row: this very prune
        return table["default"][sparsities.index(sparsity)]
    return evaluate(kdnb.prune(teacher, sparsity=sparsity, criterion="lamp", data=batches, reconstruct=update,
                               progress=False, plot=False).model, val)["accuracy"]


print("sparsity   least squares   + predictions")
last_layer = {}
for s in (0.9, 0.95, 0.98):
    last_layer[s] = [lamp_accuracy(s, update) for update in ("least_squares", True)]
    print(f"{s:8.0%}" + "".join(f"{a:16.4f}" for a in last_layer[s]))
# What the text below says, checked (4 validation digits at 98 %):
assert all(matched >= squares for squares, matched in last_layer.values())
assert last_layer[0.98][1] > last_layer[0.98][0] + 0.005

# %% [markdown]
# Matching the predictions never loses here, and gains most where least squares leaves the most error, at
# 98 %. `kdnb.prune` does it once, after its last cut, whenever it re-solves and no long fine-tuning follows
# (under 10 epochs): the default rows of the table above, and the structured refits below.

# %% [markdown]
# ## One scale for every layer
#
# The first table's `l1` row ranks all 85,000 weights on one scale, as `torch.nn.utils.prune.global_unstructured`
# does, and at 95 % kdnb warned under it: the middle layer keeps 0.4 % of its weights. A layer's magnitudes
# depend on its fan-in and on its training, so one threshold takes nearly all of one layer and little of
# another. Can the update repair that? Below, the same L1 cut with the update, beside random with the update
# (each layer loses its share, blindly), L1 ranked within each layer (`scope="local"`) and the default, LAMP
# (Lee et al. 2021: a weight's square over the sum of the squares of its layer's weights not smaller than it,
# so each layer's largest weight scores 1 and no layer is emptied; its row is the last-layer table's). In
# brackets, the share of the middle layer's weights kept.

# %%
import warnings

rankings = {"random": dict(criterion="random"), "l1, global": dict(criterion="l1"),
            "l1, local": dict(criterion="l1", scope="local")}
high = (0.95, 0.98)
print(f"{'with the update':16s}" + "".join(f"{s:>16.0%}" for s in high))
updated = {}
for method, options in rankings.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # l1, global: the first table's warning, again
        results = [kdnb.prune(teacher, sparsity=s, data=batches, progress=False, plot=False, **options)
                   for s in high]
    updated[method] = [evaluate(r.model, val)["accuracy"] for r in results]
    middle = [float(r.masks["3.weight"].float().mean()) for r in results]
    print(f"{method:16s}" + "".join(f"  {a:.4f} ({m:5.1%})" for a, m in zip(updated[method], middle)))
updated["default (lamp)"] = [last_layer[s][1] for s in high]  # the last-layer table's "+ predictions"
print(f"{'default (lamp)':16s}" + "".join(f"  {a:.4f}        " for a in updated["default (lamp)"]))
# What the text below says, checked (the smallest margin is 13 validation digits):
assert all(updated["l1, global"][i] < updated["random"][i] - 0.02 for i in (0, 1))
assert all(updated["l1, local"][i] > updated["random"][i] + 0.05 for i in (0, 1))
assert all(updated["default (lamp)"][i] > updated["l1, local"][i] + 0.03 for i in (0, 1))

# %% [markdown]
# With the update, global L1 ends **below random** at both sparsities: no re-solve brings back a layer left
# with a few hundred of its 65,536 weights (at 98 % it keeps one). Random, blind as it is, leaves every layer
# its share. Ranked within each layer, L1 beats random again, and LAMP, which lets the layers keep different
# shares without starving any, beats both by far: it is the default, and kdnb warns whenever a one-shot global
# ranking leaves a layer under a tenth of the density kept overall. `bench/prune_oneshot.py` has these rows over
# three seeds.

# %% [markdown]
# ## A pattern the hardware can skip: 2:4
#
# Zeroed weights make a model smaller once stored sparse, but a dense matrix multiply still multiplies every
# zero. NVIDIA's sparse tensor cores (Ampere GPUs and newer) skip them when each group of 4 consecutive inputs
# of a row holds at most 2 non-zeros: **2:4 sparsity**, 50 % of the weights. `pattern="2:4"` keeps the 2
# best-scored weights of every 4; with data the default chooses them by OBS (SparseGPT's sweep, which updates the
# row as it goes) and the update re-solves them as before. How much does the constraint cost against choosing
# the same 50 % freely?

# %%
patterns = {"free 50 %": {}, "2:4": dict(pattern="2:4")}
updates = {"l1, no update": dict(criterion="l1", reconstruct=False), "default": {}}
print(f"{'':16s}" + "".join(f"{p:>12s}" for p in patterns))
at_half = {}
for label, options in updates.items():
    at_half[label] = [evaluate(kdnb.prune(teacher, sparsity=0.5, data=batches, progress=False, plot=False,
                                          **options, **pattern).model, val)["accuracy"]
                      for pattern in patterns.values()]
    print(f"{label:16s}" + "".join(f"{a:12.4f}" for a in at_half[label]))
dense_accuracy = evaluate(teacher, val)["accuracy"]
assert all(abs(free - two_four) < 0.015 for free, two_four in at_half.values())  # the pattern costs little
assert all(a > dense_accuracy - 0.01 for a in at_half["default"])  # with the update: within a point of dense

# %% [markdown]
# At 50 % the pattern costs little (a few validation digits at most, either way), and with the update both keep
# the dense accuracy to within a point. The speed is another matter: on this CPU a 2:4 model computes every zero, at
# dense speed (its `summary()` says so). On a GPU with sparse tensor cores, `result.export(semi_structured=True)`
# of a half-precision model stores each 2:4 weight in the compressed form those cores read
# (`torch.sparse.to_sparse_semi_structured`); `bench/nm_speed.py` measures what that gives.
#
# ## Zeroing weights vs deleting neurons
#
# **Unstructured** pruning zeroes single weights: the matrices keep their shape (masks). **Structured**
# pruning deletes whole neurons: a hidden unit's row in one matrix and its column in the next go, and the
# network really is smaller. For neurons the update is the least-squares **refit** of the next layer on the
# neurons that stay (He et al. 2017; ThiNet, Luo et al. 2017). `criterion="thinet"` also *chooses* by it:
# it removes, one at a time, the neuron whose removal the refit can make up for best (OBS's closed form for
# the next layer's column of that neuron, *group OBS*).
#
# A criterion scores the neurons of the network in front of it. In one cut, it never sees what the refit will
# make up for. `rounds=` cuts in steps instead (the same factor of the weights each time, no training): every
# round re-scores the network the last refit left, and every refit reproduces the unpruned network. Below, 75 %
# and 90 % of the neurons of *each* hidden layer go (`scope="local"`: 64 and 26 of 256 are left), removed
# without the refit, with it in one cut, and with it in 8 rounds (the default for structured pruning with data
# and no fine-tuning; random, whose draws read nothing a refit changes, would cut the same neurons in every
# round, so kdnb cuts it once).

# %%
def sparsity_without(removed):
    """Weight sparsity of deleting that fraction of each hidden layer's neurons (64-256-256-10)."""
    kept = 256 - int(removed * 256)
    return 1 - (64 * kept + kept * kept + kept * 10) / (64 * 256 + 256 * 256 + 256 * 10)


def accuracy_without(removed, criterion, **options):
    result = kdnb.prune(teacher, sparsity=sparsity_without(removed) - 1e-9, criterion=criterion,
                        structured=True, scope="local", data=batches, progress=False, plot=False,
                        **options)
    return evaluate(result.model, val)["accuracy"]


fractions = (0.75, 0.9)
variants = {"no refit": dict(reconstruct=False), "refit, 1 cut": dict(rounds=1),
            "refit, 8 rounds": dict()}
print(f"{'neurons removed':16s}" + "".join(f"{v:>18s}" for v in variants))
print(" " * 16 + "".join(f"{f:>9.0%}" for _ in variants for f in fractions))
neurons = {}
for criterion in ("random", "taylor", "thinet"):
    neurons[criterion] = {v: [accuracy_without(f, criterion, **options) for f in fractions]
                          for v, options in variants.items()}
    row = [a for v in variants for a in neurons[criterion][v]]
    print(f"{criterion:16s}" + "".join(f"   {a:.4f}" for a in row))
# What the text below says, checked (each margin is 5 validation digits or more; another CPU moves
# them by one or two):
plain, one_cut, in_rounds = ({c: neurons[c][v] for c in neurons} for v in variants)
# without the refit, the choice decides; a Taylor sum loses to random
assert all(plain["thinet"][i] > plain["random"][i] + 0.2 for i in (0, 1))
assert plain["taylor"][0] < plain["random"][0] - 0.2
# with the refit, at 75 % every criterion is within a few digits of random
assert all(abs(neurons[c][v][0] - neurons["random"][v][0]) < 0.025
           for c in neurons for v in list(variants)[1:])
# at 90 %: in one cut Taylor loses to random; in rounds every criterion beats it
assert one_cut["taylor"][1] < one_cut["random"][1] - 0.007
assert all(in_rounds[c][1] > in_rounds["random"][1] + 0.02 for c in ("taylor", "thinet"))
assert in_rounds["taylor"][1] > one_cut["taylor"][1] + 0.04
assert in_rounds["thinet"][0] >= 0.975 and in_rounds["thinet"][1] >= 0.95  # the default

# %% [markdown]
# Without the refit the choice decides everything: ThiNet, which picks the neurons the refit can replace,
# keeps most of the accuracy where random loses much of it, and Taylor's sum over a neuron does *worse
# than random* (it reads the gradients of a network that fits its training data almost perfectly). With the
# refit, **random is a strong baseline**: at 75 % every criterion is within a few validation digits of it (the
# val set has 359), because the next layer is re-solved to make up for whichever neurons went. In one cut,
# Taylor even loses to random at 90 %. Cut in 8 rounds, every criterion beats random at 90 % by more than 2
# points, and Taylor gains the most from the rounds: after each refit its gradients are no longer those of a
# network at its minimum. ThiNet in rounds is kdnb's default for structured pruning with data
# (`criterion="auto"`); `bench/prune_oneshot.py` has the same table over three seeds, with Torch-Pruning's
# criteria and the same small shape trained from scratch.
#
# At the same sparsity, deleting neurons loses more than zeroing weights, because it cannot pick the weights
# one by one:

# %%
# no data: no update
masked = kdnb.prune(teacher, sparsity=0.7, criterion="l1", progress=False, plot=False)
deleted = kdnb.prune(teacher, sparsity=0.7, criterion="l1", structured=True, data=train,
                     reconstruct=False, progress=False, plot=False)
for name, result in (("zeroed weights", masked), ("deleted neurons", deleted)):
    shapes = [tuple(m.weight.shape) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:16s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  "
          f"layer shapes {shapes}")
assert evaluate(masked.model, val)["accuracy"] > evaluate(deleted.model, val)["accuracy"]

# %% [markdown]
# Which neurons go depends on the trained weights, so the exact shapes can differ on another CPU; the
# masked model's shapes and its count of zeros cannot:

# %%
# NBVAL_CHECK_OUTPUT
linear = [m for m in masked.model if isinstance(m, torch.nn.Linear)]
print("zeroed weights: layer shapes", [tuple(m.weight.shape) for m in linear])
zeros, weights = (sum(int((m.weight == 0).sum()) for m in linear),
                  sum(m.weight.numel() for m in linear))
print(f"{zeros:,} of {weights:,} weights are zero")

# %% [markdown]
# ## The sparsity explorer
#
# The scores are computed once per criterion (the dropdown lists every criterion kdnb has); moving the slider
# masks a copy and evaluates it, and the accuracy-vs-sparsity curve fills in as you go. Where does each
# criterion fall off a cliff? The explorer only *removes*, like the first rows of the table above: re-solving
# the kept weights at every slider move would be too slow to follow the slider. *apply* stores exactly the
# model you see (`reconstruct=False`); for the update, call `kdnb.prune(teacher, sparsity, data=train)`.

# %%
kdnb.widgets.SparsityExplorer(teacher, val, data=train)

# %% [markdown]
# ## Fine-tuning and a gradual schedule
#
# At 99 % sparsity (850 weights left of 85,000) even the update is not enough in one shot, and 3 epochs of
# fine-tuning afterwards recover only part of it. Pruning **gradually** lets the network adapt on the way, for
# the same 3 epochs of training: `schedule="iterative"` prunes and fine-tunes in rounds, and `schedule="agp"`
# (Zhu & Gupta 2017) raises the sparsity along a cubic curve while it fine-tunes. Each pruning step ranks the
# weights by their OBD scores (what `criterion="auto"` means in a gradual schedule) and re-solves the kept
# weights where fewer than 10 epochs of fine-tuning follow the step (the default with data: here every step;
# in a long run only the later ones, `result.trajectory` marks each). Without `schedule=`, `kdnb.prune` picks
# "agp" itself at 95 % or more with fine-tuning, so the one-shot run below asks for `schedule="oneshot"`.

# %%
oneshot = kdnb.prune(teacher, sparsity=0.99, data=train, val=val, finetune=3, schedule="oneshot")
rounds = kdnb.prune(teacher, sparsity=0.99, data=train, val=val, finetune=1, schedule="iterative",
                    steps=3)
gradual = kdnb.prune(teacher, sparsity=0.99, data=train, val=val, finetune=3, schedule="agp",
                     steps=10)

# %%
accuracy = {}
schedules = {"one-shot, then 3 epochs": oneshot, "3 rounds of 1 epoch": rounds,
             "agp over 3 epochs": gradual}
for name, result in schedules.items():
    kept = [int((m.weight != 0).sum()) for m in result.model if isinstance(m, torch.nn.Linear)]
    accuracy[name] = evaluate(result.model, val)["accuracy"]
    print(f"{name:24s} accuracy {accuracy[name]:.4f}  "
          f"non-zero weights per layer {kept}, {sum(kept):,} all")
print(f"{'one shot, no fine-tuning':24s} accuracy {oneshot.trajectory[0]['val_acc']:.4f}")
best = max(accuracy, key=accuracy.get)
print(f"both gradual schedules beat one shot then fine-tuning; the best here: {best}")
assert min(accuracy["agp over 3 epochs"], accuracy["3 rounds of 1 epoch"]) > accuracy["one-shot, then 3 epochs"]

# %%
gradual.summary()

# %%
gradual.plot()

# %% [markdown]
# ## Sensitivity per layer
#
# Which layers can lose weights? Prune one layer at a time and watch the accuracy. Layers differ: a cut that
# takes the same share of every layer spends the accuracy of the sensitive ones, which is why the default,
# LAMP, lets each layer keep its own share (and, as the table above showed, one global threshold can empty a
# layer instead).

# %%
layers = kdnb.sensitivity(teacher, val, sparsities=(0.5, 0.8, 0.9, 0.95, 0.99))
layers

# %%
# Which layers these numbers say to spare, written from them:
at = layers.sparsities.index(0.95)
drop = {layer: layers.dense_accuracy - accuracy[at] for layer, accuracy in layers.accuracy.items()}
order = sorted(drop, key=drop.get, reverse=True)
print(f"95 % of one layer's weights removed: {order[0]!r} costs the most accuracy ({100 * drop[order[0]]:.1f} "
      f"points), {order[-1]!r} the least ({100 * drop[order[-1]]:.1f} points)")

# %%
layers.plot()
