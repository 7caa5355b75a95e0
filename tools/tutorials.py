"""The cells of the five tutorial notebooks. Every number they print comes from a fixed seed."""
from nbgen import code, md

SETUP = '''
import torch
import kdnb

torch.set_num_threads(1)  # Binder gives one CPU; one thread also makes every printed number the same on any machine
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)  # 8x8 handwritten digits, embedded: no download
'''

TEACHER = '''
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)  # 85,002 parameters
kdnb.train(teacher, train, val=val, epochs=8)
teacher.eval();
'''

QUICKSTART = [
    md('''
# kdnb quickstart: distil and prune a network in a notebook

A big *teacher* network, a small *student* that learns from it (**distillation**), and the teacher with
90 % of its weights removed (**pruning**), side by side. Each training cell shows a live loss chart and
leaves a picture and a one-line summary behind. The tutorials `01`-`04` explain every step.
'''),
    code('%load_ext kdnb\n' + SETUP + TEACHER + '\ntorch.manual_seed(1)\nsmall = kdnb.models.mlp(64, [32], 10)  # 2,410 parameters: 35x fewer\n'),
    code('''
%%distill -o res
teacher = teacher
student = small
data = train
val = val
epochs = 30
lr = 3e-3
baseline = True                           # also train the same student from scratch, to compare
'''),
    code('''
%%prune -o pruned
model = teacher
sparsity = 0.9          # remove 90 % of the weights
criterion = "l1"        # the smallest weights first
data = train
val = val
finetune = 2            # epochs of fine-tuning afterwards
'''),
    code('print(kdnb.compare({"teacher": teacher, "distilled student": res.student, "pruned teacher": pruned.model}, val))',
         check=True),
    md('''
**Move the slider**: the accuracy of the teacher with that fraction of its weights zeroed (no fine-tuning),
its non-zero parameters and file size; switch the criterion or remove whole neurons (structured), and
*apply* to store the pruned model in a variable.
'''),
    code('kdnb.widgets.SparsityExplorer(teacher, val, data=train)'),
]

DISTILLATION = [
    md('''
# 1. Knowledge distillation, step by step

A large network trained on a task knows more than its top answer: when it sees a **7** it gives a little
probability to **1** and to **9**, and almost none to **6**. Hinton, Vinyals & Dean (2015) called these
relative probabilities *dark knowledge*, and showed that a small network learns better from them than
from the hard labels alone. Distillation has three steps:

1. **train a teacher**: a big network, on the labelled data, in the ordinary way;
2. **make soft labels**: the teacher's probabilities, *softened* by a temperature $T$:
   $p_i^T = \\dfrac{\\exp(z_i / T)}{\\sum_j \\exp(z_j / T)}$ where $z$ are the teacher's logits;
3. **train the student** on a mix of the hard labels and the soft labels:

$$\\mathcal{L}_{KD} = \\alpha \\, \\mathrm{CE}(y, s) \\;+\\; (1-\\alpha)\\, T^2\\, \\mathrm{KL}\\big(p^T_{teacher} \\,\\|\\, p^T_{student}\\big)$$

The $T^2$ keeps the soft term's gradients the same size whatever $T$ (they shrink like $1/T^2$ otherwise).
In kdnb, `alpha` weighs the **hard** term (some libraries use the opposite convention).
'''),
    code(SETUP),
    md('## Step 1: train the teacher\n\nAn MLP with two hidden layers of 256 units, 8 epochs with Adam.'),
    code(TEACHER),
    md('''
## Step 2: soft labels and the temperature

At $T = 1$ the teacher is almost certain; as $T$ grows, the other classes come into view. The sample below
is the first digit of the validation set.
'''),
    code('''
import torch.nn.functional as F

x, y = next(iter(val))
with torch.no_grad():
    logits = teacher(x[:1])
print("true label:", int(y[0]))
for T in (1, 4, 16):
    p = F.softmax(logits / T, dim=1)[0]
    print(f"T={T:>2}: " + "  ".join(f"{c}:{v:.2f}" for c, v in enumerate(p.tolist())))
''', check=True),
    md('Move the temperature slider and choose other samples: which digits does the teacher confuse?'),
    code('kdnb.widgets.TemperatureExplorer(teacher, val)'),
    md('''
## Step 3: train the student, three ways

The same small student (one hidden layer of 32 units, 35x fewer parameters), from the same initial weights,
for the same 30 epochs:

- **scratch**: hard labels only;
- **hard pseudo-labels**: the teacher's top answer as the label (what the teacher *says*, not what it *knows*);
- **soft labels**: knowledge distillation, $T = 4$, $\\alpha = 0.5$.
'''),
    code('''
def student():
    torch.manual_seed(1)
    return kdnb.models.mlp(64, [32], 10)

res = kdnb.distill(teacher, student(), train, val=val, temperature=4.0, alpha=0.5, epochs=30, lr=3e-3, baseline=True)
'''),
    code('''
from torch.utils.data import DataLoader, TensorDataset

inputs = train.dataset.tensors[0]
with torch.no_grad():
    pseudo = teacher(inputs).argmax(dim=1)
pseudo_loader = DataLoader(TensorDataset(inputs, pseudo), batch_size=64, shuffle=True,
                           generator=torch.Generator().manual_seed(0))
hard = student()
kdnb.train(hard, pseudo_loader, val=val, epochs=30, lr=3e-3);
'''),
    code('''
from kdnb.engine.evaluate import evaluate

print(f"teacher             {res.accuracy['teacher']:.4f}")
print(f"scratch             {res.accuracy['scratch']:.4f}")
print(f"hard pseudo-labels  {evaluate(hard, val)['accuracy']:.4f}")
print(f"soft labels (KD)    {res.accuracy['distilled']:.4f}")
print(f"gap closure         {res.gap_closure:.2f}")
''', check=True),
    md('''
**Gap closure** = (distilled − scratch) / (teacher − scratch): the share of the accuracy gap between the
student trained alone and the teacher that distillation closed. 1 means the student reached the teacher.
The validation set has 359 digits, so one digit is 0.28 points: small differences here are a few digits.
The summary and the curves of both runs:
'''),
    code('res.summary()', check=True),
    code('res.plot()'),
    md('''
## A transfer set: learning from unlabelled inputs

Soft labels need no human: the teacher can label any input. Give the student only **100 labelled digits**,
plus the other inputs of the training set *without their labels* (a transfer set, as Hinton et al. used).
The scratch student sees only the 100 labelled ones.
'''),
    code('''
x_all, y_all = train.dataset.tensors
few = DataLoader(TensorDataset(x_all[:100], y_all[:100]), batch_size=32, shuffle=True,
                 generator=torch.Generator().manual_seed(0))
unlabelled = x_all[100:]
with_transfer = kdnb.distill(teacher, student(), few, val=val, transfer=unlabelled, epochs=10, lr=3e-3, baseline=True)
'''),
    code('''
print({name: round(acc, 4) for name, acc in with_transfer.accuracy.items()})
print(f"gap closure {with_transfer.gap_closure:.2f}")
''', check=True),
    md('''
## Where distillation does not help

Without the transfer set, the same 100 labelled digits, distilled for 30 epochs:
'''),
    code('only_few = kdnb.distill(teacher, student(), few, val=val, epochs=30, lr=3e-3, baseline=True)'),
    code('print({name: round(acc, 4) for name, acc in only_few.accuracy.items()})', check=True),
    md('''
Here distillation is *worse* than training from scratch. Be honest about what KD is:

- it helps most when the teacher can label **more inputs** than the labels cover (a transfer set), or when
  the student is big enough to use the extra information but overfits hard labels;
- with a tiny training set the soft labels of the same few inputs carry little more than their labels,
  and the softened targets slow training down;
- a student that is far too small cannot imitate the teacher anyway (try `[8]` hidden units), and a teacher
  that is barely better than the scratch student has little to teach;
- gains on small validation sets are a few samples: compare several seeds before believing 0.5 points.
'''),
]

PRUNING = [
    md('''
# 2. Pruning: which weights matter?

A trained network has many weights it barely uses. Pruning scores each weight's **importance**, removes
the least important, and fine-tunes what is left. Three classic criteria, for weight $w_k$:

| criterion | score $s_k$ | idea |
|---|---|---|
| **L1 magnitude** (Han et al. 2015) | $\\lvert w_k\\rvert$ | small weights contribute little |
| **Taylor** (Molchanov et al. 2019) | $w_k^2\\,\\overline{g_k^2}$ | removing $w_k$ changes the loss by about $g_k w_k$; square it, average over batches |
| **Hessian / Optimal Brain Damage** (LeCun et al. 1990) | $\\tfrac12 h_{kk} w_k^2$ | at a minimum the gradient is zero, so the loss grows by the second-order term |

Taylor and Hessian need data (gradients, and the Hessian's diagonal estimated with Hutchinson's trick);
L1 needs only the weights. *Random* is the baseline every criterion must beat.
'''),
    code(SETUP),
    code(TEACHER),
    md('''
## Three criteria side by side

Prune in one shot, without fine-tuning, at three sparsities, and measure what is left:
'''),
    code('''
from kdnb.engine.evaluate import evaluate

print(f"dense accuracy {evaluate(teacher, val)['accuracy']:.4f}")
print("criterion    50%     80%     90%")
for criterion in ("l1", "taylor", "hessian", "random"):
    accuracies = []
    for sparsity in (0.5, 0.8, 0.9):
        pruned = kdnb.prune(teacher, sparsity=sparsity, criterion=criterion, data=train, progress=False, plot=False)
        accuracies.append(evaluate(pruned.model, val)["accuracy"])
    print(f"{criterion:9s}" + "".join(f"  {a:.4f}" for a in accuracies))
''', check=True),
    md('''
Every informed criterion beats random, but not by the same margin. Here plain magnitude holds best at high
sparsity. Taylor and Hessian read the *gradients* of a network that already fits its training data almost
perfectly: the gradients are tiny and noisy, and ranking all layers together on them removes too much of
some layer. They shine when the network is not at a minimum (pruning during training) and for whole
channels, where a channel's score sums many weights. Always compare with random, and with L1, before
believing a clever criterion.


## Zeroing weights vs deleting neurons

**Unstructured** pruning zeroes single weights: the matrices keep their shape (masks). **Structured**
pruning deletes whole neurons: a hidden unit's row in one matrix and its column in the next go, and the
network really is smaller. At the same sparsity, structured pruning loses more accuracy, because it cannot
pick the weights one by one.
'''),
    code('''
masked = kdnb.prune(teacher, sparsity=0.7, criterion="l1", progress=False, plot=False)
deleted = kdnb.prune(teacher, sparsity=0.7, criterion="l1", structured=True, data=train, progress=False, plot=False)
for name, result in (("zeroed weights", masked), ("deleted neurons", deleted)):
    shapes = [tuple(m.weight.shape) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:16s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  layer shapes {shapes}")
''', check=True),
    md('''
## The sparsity explorer

The scores are computed once per criterion; moving the slider masks a copy and evaluates it, and the
accuracy-vs-sparsity curve fills in as you go. Where does each criterion fall off a cliff?
'''),
    code('kdnb.widgets.SparsityExplorer(teacher, val, data=train)'),
    md('''
## Fine-tuning and a gradual schedule

At 95 % sparsity, pruning in one shot then fine-tuning for 3 epochs is not enough: the global ranking has
almost emptied the middle layer and the network cannot recover. Pruning **gradually** lets it adapt on the
way, for the same 3 epochs of training: `schedule="iterative"` prunes and fine-tunes in rounds, and
`schedule="agp"` (Zhu & Gupta 2017) raises the sparsity along a cubic curve while it fine-tunes.
'''),
    code('''
oneshot = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=3)
rounds = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=1, schedule="iterative", steps=3)
gradual = kdnb.prune(teacher, sparsity=0.95, criterion="l1", data=train, val=val, finetune=3, schedule="agp", steps=10)
'''),
    code('''
for name, result in (("one-shot, then 3 epochs", oneshot), ("3 rounds of 1 epoch", rounds), ("agp over 3 epochs", gradual)):
    kept = [int((m.weight != 0).sum()) for m in result.model if isinstance(m, torch.nn.Linear)]
    print(f"{name:24s} accuracy {evaluate(result.model, val)['accuracy']:.4f}  non-zero weights per layer {kept}")
''', check=True),
    code('gradual.summary()', check=True),
    code('gradual.plot()'),
    md('''
## Sensitivity per layer

Which layers can lose weights? Prune one layer at a time and watch the accuracy. The first layer sees the
raw pixels and the last one is small and decides the class: they are usually the most sensitive, which is
why a global ranking (one threshold for all layers) beats the same sparsity everywhere.
'''),
    code('''
from kdnb.engine.prune import sensitivity

layers = sensitivity(teacher, val, sparsities=(0.5, 0.8, 0.9, 0.95, 0.99))
layers
''', check=True),
    code('layers.plot()'),
]

SPEEDUP = [
    md('''
# 3. Masks do not make a model faster; deleting channels does

A pruned model with 90 % of its weights at zero still multiplies every one of them: the matrices have the
same shape, and dense hardware does not skip zeros. It is smaller on disk (kdnb saves the non-zeros only)
and it *could* be faster on sparse kernels, but not as is. **Structured** pruning deletes whole neurons
and channels, so every matrix shrinks and the speed-up is real. This notebook measures both: latency,
multiply-accumulates (MACs) and file size.
'''),
    code(SETUP),
    md('A wider MLP makes the latency differences visible above the noise:'),
    code('''
torch.manual_seed(0)
wide = kdnb.models.mlp(64, [1024, 1024], 10)
kdnb.train(wide, train, val=val, epochs=3)
wide.eval();
'''),
    code('''
masked = kdnb.prune(wide, sparsity=0.9, criterion="l1", data=train, val=val, finetune=2)
deleted = kdnb.prune(wide, sparsity=0.9, criterion="l1", structured=True, data=train, val=val, finetune=2)
'''),
    md('''
`kdnb.compare` measures each model the same way: accuracy, parameters and non-zeros, MACs per sample
(and *nonzero MACs*, the theoretical cost if zeros were free), bytes of the `kdnb.save` file, and the
measured latency on the last line (the only number that varies between runs).
'''),
    code('print(kdnb.compare({"dense": wide, "masked 90%": masked.model, "deleted 90%": deleted.model}, val))', check=True),
    md('''
The masked model's MACs are those of the dense one: only the *nonzero* MACs dropped, and its latency did
not. The structured one really has fewer MACs and runs faster. Its layers:
'''),
    code('print([tuple(m.weight.shape) for m in deleted.model if isinstance(m, torch.nn.Linear)])', check=True),
    md('''
## A residual network

In a ResNet the two branches of each residual block are **added**, so their channels must match: deleting
channel 5 of a block's output means deleting channel 5 of its shortcut, of the next block's input, and of
the BatchNorm beside each. kdnb finds these coupled groups with Torch-Pruning's dependency graph
(Fang et al. 2023), so the pruned network still runs.
'''),
    code('''
images, val_images = kdnb.datasets.load("digits", batch_size=64, seed=0, flat=False)  # (1, 8, 8) images
torch.manual_seed(0)
resnet = kdnb.models.resnet_small(width=16)
kdnb.train(resnet, images, val=val_images, epochs=3, lr=3e-3)
resnet.eval();
'''),
    code('slim = kdnb.prune(resnet, sparsity=0.6, criterion="l1", structured=True, data=images, val=val_images, finetune=2)'),
    code('print(kdnb.compare({"resnet": resnet, "channels deleted": slim.model}, val_images))', check=True),
    md('''
MACs fell by more than half, latency much less: on 8x8 images each convolution is tiny and the fixed cost
of every layer dominates, so MACs are not time. Measure on the hardware you deploy to.

Each residual block: the channels it receives, the width inside it, and the channels it adds back. The
output of one block is the input of the next, and the add forces the body and the shortcut to agree, so
these numbers chain.
'''),
    code('''
from kdnb.models import Residual

for name, module in slim.model.named_modules():
    if isinstance(module, Residual):
        first, second = [m for m in module.body if isinstance(m, torch.nn.Conv2d)]
        print(f"block {name}: in {first.in_channels:2d} channels, inside {first.out_channels:2d}, out {second.out_channels:2d}")
''', check=True),
    md('''
## Saving: masks fold, zeros compress

`kdnb.save` writes plain tensors (no pickled code) and stores a tensor's non-zeros when that is smaller;
`make_permanent` folds the masks into the weights for inference. The pruned model reloads with the
same accuracy:
'''),
    code('''
import os, tempfile
from kdnb.engine.evaluate import evaluate
from kdnb.engine.prune import make_permanent

with tempfile.TemporaryDirectory() as folder:
    for name, model in (("dense", wide), ("masked", make_permanent(masked.model)), ("deleted", deleted.model)):
        path = os.path.join(folder, f"{name}.kdnb")
        kdnb.save(model, path)
        back = kdnb.load(path)
        print(f"{name:8s} {os.path.getsize(path):>10,} bytes   reloaded accuracy {evaluate(back, val)['accuracy']:.4f}")
''', check=True),
]

PIPELINE = [
    md('''
# 4. Prune hard, then recover by distillation

Pruning and distillation combine: prune a trained network hard (here, 97 % of its weights deleted as
whole neurons), then win back the accuracy. The **original** network is the natural teacher: the pruned
one started as a copy of it, and the teacher can label inputs nobody labelled.

The full pipeline: **train → prune (structured) → recover (fine-tune or distil) → measure → save**.
'''),
    code(SETUP),
    code(TEACHER),
    code('cut = kdnb.prune(teacher, sparsity=0.97, criterion="l1", structured=True, data=train, val=val)'),
    code('cut.summary()', check=True),
    md('''
The hidden layers went from 256 and 256 neurons to a few dozen, and most of the accuracy went with them.
Two ways to win it back, from the same pruned network, for the same 10 epochs:

- **fine-tune** on the hard labels;
- **distil** from the original network (soft labels, $T = 4$, $\\alpha = 0.5$).

## With every label
'''),
    code('''
import copy

finetuned = copy.deepcopy(cut.model)
kdnb.train(finetuned, train, val=val, epochs=10, lr=3e-3)
distilled = kdnb.distill(teacher, cut.model, train, val=val, epochs=10, lr=3e-3)
'''),
    code('''
from kdnb.engine.evaluate import evaluate

original, pruned = evaluate(teacher, val)["accuracy"], evaluate(cut.model, val)["accuracy"]

def report(name, model):
    acc = evaluate(model, val)["accuracy"]
    print(f"{name:32s} {acc:.4f}  recovered {100 * (acc - pruned) / (original - pruned):.0f}% of the accuracy lost")

report("fine-tuned on all the labels", finetuned)
report("distilled on all the labels", distilled.student)
''', check=True),
    md('''
With the whole labelled training set, plain fine-tuning recovers as well as distillation (here a digit
better), and it is simpler. Distillation is no magic: on an easy task with plenty of labels, the hard
labels already say what the soft ones do.

## With 100 labels and unlabelled inputs

Often the person compressing a model does not have its labelled training set, only inputs: the model came
from elsewhere, or labels are expensive. Keep 100 labelled digits; the other inputs come without labels.
Fine-tuning can only use the 100; the teacher labels all of them.
'''),
    code('''
from torch.utils.data import DataLoader, TensorDataset

x_all, y_all = train.dataset.tensors
few = DataLoader(TensorDataset(x_all[:100], y_all[:100]), batch_size=32, shuffle=True,
                 generator=torch.Generator().manual_seed(0))
finetuned_few = copy.deepcopy(cut.model)
kdnb.train(finetuned_few, few, val=val, epochs=10, lr=3e-3)
recovered = kdnb.distill(teacher, cut.model, few, val=val, transfer=x_all[100:], epochs=10, lr=3e-3)
'''),
    code('''
report("fine-tuned on 100 labels", finetuned_few)
report("distilled, 100 labels + inputs", recovered.student)
''', check=True),
    md('''
Now the teacher's soft labels on unlabelled inputs make the difference. `kdnb.prune(..., distill=True)`
fine-tunes by distilling from the unpruned model in one call. The end of the pipeline, measured against
where we started, saved and reloaded:
'''),
    code('''
import os, tempfile

small = recovered.student
print(kdnb.compare({"original": teacher, "pruned + distilled": small}, val))
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "small.kdnb")
    kdnb.save(small, path)
    print(f"saved {os.path.getsize(path):,} bytes; reloaded accuracy {evaluate(kdnb.load(path), val)['accuracy']:.4f}")
''', check=True),
    code('recovered.plot()'),
]

TUTORIALS = {
    "00-quickstart.ipynb": QUICKSTART,
    "01-distillation.ipynb": DISTILLATION,
    "02-pruning.ipynb": PRUNING,
    "03-structured-speedup.ipynb": SPEEDUP,
    "04-prune-then-distill.ipynb": PIPELINE,
}
