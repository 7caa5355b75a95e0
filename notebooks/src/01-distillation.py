# %% [markdown]
# # 1. Knowledge distillation, step by step
#
# A large network trained on a task knows more than its top answer: when it sees a **7** it gives a little
# probability to **1** and to **9**, and almost none to **6**. Hinton, Vinyals & Dean (2015) called these
# relative probabilities *dark knowledge*, and showed that a small network learns better from them than
# from the hard labels alone. Distillation has three steps:
#
# 1. **train a teacher**: a big network, on the labelled data, in the ordinary way;
# 2. **make soft labels**: the teacher's probabilities, *softened* by a temperature $T$:
#    $p_i^T = \dfrac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}$ where $z$ are the teacher's logits;
# 3. **train the student** on a mix of the hard labels and the soft labels:
#
# $$\mathcal{L}_{KD} = \alpha \, \mathrm{CE}(y, s) \;+\; (1-\alpha)\, T^2\, \mathrm{KL}\big(p^T_{teacher} \,\|\, p^T_{student}\big)$$
#
# The $T^2$ keeps the soft term's gradients the same size whatever $T$ (they shrink like $1/T^2$ otherwise).
# In kdnb, `alpha` weighs the **hard** term (some libraries use the opposite convention).

# %%
import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU, and one thread is the fastest for these small networks
# 8x8 handwritten digits, embedded: no download
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)

# %% [markdown]
# ## Step 1: train the teacher
#
# An MLP with two hidden layers of 256 units, 8 epochs with Adam.

# %%
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();

# %% [markdown]
# ## Step 2: soft labels and the temperature
#
# At $T = 1$ the teacher is almost certain; as $T$ grows, the other classes come into view. The sample below
# is the first digit of the validation set.

# %%
# NBVAL_CHECK_OUTPUT
import torch.nn.functional as F

x, y = next(iter(val))
with torch.no_grad():
    logits = teacher(x[:1])
print("true label:", int(y[0]))
for T in (1, 4, 16):
    p = F.softmax(logits / T, dim=1)[0]
    print(f"T={T:>2}: " + "  ".join(f"{c}:{v:.2f}" for c, v in enumerate(p.tolist())))

# %% [markdown]
# Move the temperature slider and choose other samples: which digits does the teacher confuse?

# %%
kdnb.widgets.TemperatureExplorer(teacher, val)


# %% [markdown]
# ## Step 3: train the student, three ways
#
# The same small student (one hidden layer of 32 units, 35x fewer parameters), from the same initial weights,
# for the same 30 epochs:
#
# - **scratch**: hard labels only;
# - **hard pseudo-labels**: the teacher's top answer as the label (what the teacher *says*, not what it *knows*);
# - **soft labels**: knowledge distillation, $T = 4$, $\alpha = 0.5$.

# %%
def student():
    torch.manual_seed(1)
    return kdnb.models.mlp(64, [32], 10)

res = kdnb.distill(teacher, student(), train, val=val, temperature=4.0, alpha=0.5, epochs=30, lr=3e-3,
                  baseline=True)

# %%
from torch.utils.data import DataLoader, TensorDataset

inputs = train.dataset.tensors[0]
with torch.no_grad():
    pseudo = teacher(inputs).argmax(dim=1)
pseudo_loader = DataLoader(TensorDataset(inputs, pseudo), batch_size=64, shuffle=True,
                           generator=torch.Generator().manual_seed(0))
hard = student()
kdnb.train(hard, pseudo_loader, val=val, epochs=30, lr=3e-3);

# %%
print(f"teacher             {res.accuracy['teacher']:.4f}")
print(f"scratch             {res.accuracy['scratch']:.4f}")
print(f"hard pseudo-labels  {kdnb.evaluate(hard, val)['accuracy']:.4f}")
print(f"soft labels (KD)    {res.accuracy['distilled']:.4f}")
print(f"gap closure         {res.gap_closure:.2f}")
# still a gap to close:
assert res.accuracy["teacher"] > max(res.accuracy["scratch"], res.accuracy["distilled"])

# %% [markdown]
# **Gap closure** = (distilled − scratch) / (teacher − scratch): the share of the accuracy gap between the
# student trained alone and the teacher that distillation closed. 1 means the student reached the teacher.
# The validation set has 359 digits, so one digit is 0.28 points: small differences here are a few digits.
# The summary and the curves of both runs:

# %%
res.summary()

# %%
res.plot()

# %% [markdown]
# ## A transfer set: learning from unlabelled inputs
#
# Soft labels need no human: the teacher can label any input. Give the student only **100 labelled digits**,
# plus the other inputs of the training set *without their labels* (a transfer set, as Hinton et al. used).
# The scratch student sees only the 100 labelled ones, for as many optimizer steps as the distilled one
# takes: on its 100 digits that is many more epochs. The chart counts steps, so both runs share its axis.

# %%
x_all, y_all = train.dataset.tensors
few = DataLoader(TensorDataset(x_all[:100], y_all[:100]), batch_size=32, shuffle=True,
                 generator=torch.Generator().manual_seed(0))
unlabelled = x_all[100:]
with_transfer = kdnb.distill(teacher, student(), few, val=val, transfer=unlabelled, epochs=10, lr=3e-3,
                             baseline=True)

# %%
print({name: round(acc, 4) for name, acc in with_transfer.accuracy.items()})
print(f"gap closure {with_transfer.gap_closure:.2f}")
# the transfer set helps, by more than 3 points:
assert with_transfer.accuracy["distilled"] > with_transfer.accuracy["scratch"] + 0.03

# %% [markdown]
# ## Where distillation does not help
#
# Without the transfer set, the same 100 labelled digits, distilled for 30 epochs:

# %%
only_few = kdnb.distill(teacher, student(), few, val=val, epochs=30, lr=3e-3, baseline=True)

# %%
print({name: round(acc, 4) for name, acc in only_few.accuracy.items()})
assert only_few.accuracy["distilled"] < only_few.accuracy["scratch"]  # the claim below

# %% [markdown]
# Here distillation is *worse* than training from scratch. Be honest about what KD is:
#
# - it helps most when the teacher can label **more inputs** than the labels cover (a transfer set), or when
#   the student is big enough to use the extra information but overfits hard labels;
# - with a tiny training set the soft labels of the same few inputs carry little more than their labels,
#   and the softened targets slow training down;
# - a student that is far too small cannot imitate the teacher anyway (try `[8]` hidden units), and a teacher
#   that is barely better than the scratch student has little to teach;
# - gains on small validation sets are a few samples: compare several seeds before believing 0.5 points.
