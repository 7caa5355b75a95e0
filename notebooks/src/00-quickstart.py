# %% [markdown]
# # kdnb quickstart: distil and prune a network in a notebook
#
# A big *teacher* network, a small *student* that learns from it (**distillation**), and the teacher with
# 90 % of its weights removed (**pruning**), side by side. Each training cell shows a live loss chart and
# leaves a picture and a one-line summary behind. The tutorials `01`-`04` explain every step.

# %%
# %load_ext kdnb

import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU, and one thread is the fastest for these small networks
# 8x8 handwritten digits, embedded: no download
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)

torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();

torch.manual_seed(1)
small = kdnb.models.mlp(64, [32], 10)  # 2,410 parameters: 35x fewer

# %%
# %%distill -o res
teacher = teacher
student = small
data = train
val = val
epochs = 30
lr = 3e-3
baseline = True                           # also train the same student from scratch, to compare

# %%
# %%prune -o pruned
model = teacher
sparsity = 0.9          # remove 90 % of the weights
data = train            # with data: rank by LAMP magnitude, then re-solve the kept weights (tutorial 02)
val = val
finetune = 2            # epochs of fine-tuning afterwards

# %%
models = {"teacher": teacher, "distilled student": res.student, "pruned teacher": pruned.model}
table = kdnb.compare(models, val)
table

# %% [markdown]
# The sizes are exact; the accuracies come out of training, and another CPU may move them by a digit or two
# (the README says how much). What this notebook promises, on any machine:

# %%
# NBVAL_CHECK_OUTPUT
row = table.as_dict()
for name in row:
    print(f"{name:18s} {row[name]['nonzero_params']:>6,} non-zero parameters, {row[name]['bytes']:>7,} bytes")
teacher_accuracy = row["teacher"]["accuracy"]
assert row["distilled student"]["accuracy"] > teacher_accuracy - 0.03  # within 3 points of the teacher
assert row["pruned teacher"]["accuracy"] > teacher_accuracy - 0.05     # 10x fewer weights, within 5

# %% [markdown]
# **Move the slider**: the accuracy of the teacher with that fraction of its weights zeroed (no fine-tuning,
# no re-solving), its non-zero parameters and file size; switch the criterion or remove whole neurons
# (structured), and *apply* to store that pruned model in a variable.

# %%
kdnb.widgets.SparsityExplorer(teacher, val, data=train)
