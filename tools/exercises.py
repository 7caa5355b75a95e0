"""The classroom exercise notebooks, each written twice: with stubs (notebooks/exercises/NN-*.ipynb)
and with the solutions (notebooks/exercises/solutions/NN-*-solutions.ipynb), from one list of cells.

An `exercise(task, stub, solution, check)` cell is the student's function (the stub raises
NotImplementedError) followed by its check; both notebooks run top to bottom without errors.
"""
from nbgen import code, md

INTRO = '''
Each exercise asks for one short function. Write it in place of `raise NotImplementedError`, run the cell,
and the check under it says what is right and what is wrong, with a hint. Solutions are in the
`solutions/` folder: try first!
'''


def exercise(task: str, stub: str, solution: str, check: str, solved: bool):
    return [md(task), code((solution if solved else stub).strip() + "\n\n" + check.strip(), check=True)]


def notebook(title: str, setup: str, parts: list[tuple[str, str, str, str]], solved: bool, extra=None):
    intro = "\nOne solution of each exercise; every check passes. Other correct answers exist.\n" if solved else INTRO
    cells = [md(f"# {title}{' — solutions' if solved else ''}\n" + intro), code(setup)]
    for part in parts:
        cells += exercise(*part, solved=solved)
    if extra:
        cells += extra(solved)
    return cells


COMMON = '''
import torch
import torch.nn.functional as F
from torch import nn

import kdnb
from kdnb.exercises import check

torch.set_num_threads(1)
'''

QUICKSTART = [(
    '''
## Exercise 1: sparsity

The **sparsity** of a model is the fraction of its weights that are zero. kdnb counts the weights of
`nn.Linear` and `nn.Conv` layers only (biases and BatchNorm parameters are few, and not pruned). Write
`sparsity(model)`: zero weights / all weights, over those layers.
''',
    '''
def sparsity(model):
    """Fraction of zeros among the weights of the Linear and Conv layers of model."""
    raise NotImplementedError  # your code here
''',
    '''
def sparsity(model):
    """Fraction of zeros among the weights of the Linear and Conv layers of model."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / sum(m.weight.numel() for m in layers)
''',
    'check.sparsity(sparsity)',
), (
    '''
## Exercise 2: MACs of an MLP

A `Linear(a, b)` layer does `a * b` multiply-accumulates (MACs) per sample. Write `mlp_macs(widths)` for an
MLP whose layer widths are `[inputs, hidden..., outputs]`, e.g. `[64, 256, 256, 10]`.
''',
    '''
def mlp_macs(widths):
    """Multiply-accumulates per sample of an MLP with these layer widths."""
    raise NotImplementedError  # your code here
''',
    '''
def mlp_macs(widths):
    """Multiply-accumulates per sample of an MLP with these layer widths."""
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
''',
    'check.mlp_macs(mlp_macs)',
)]

DISTILLATION = [(
    '''
## Exercise 1: soft labels

Soft labels are the teacher's probabilities softened by a temperature $T$:
$p_i^T = \\exp(z_i/T) / \\sum_j \\exp(z_j/T)$, for logits $z$ of shape (batch, classes).
''',
    '''
def soft_labels(logits, temperature):
    """softmax(logits / T) over the classes."""
    raise NotImplementedError  # your code here
''',
    '''
def soft_labels(logits, temperature):
    """softmax(logits / T) over the classes."""
    return F.softmax(logits / temperature, dim=1)
''',
    'check.soft_labels(soft_labels)',
), (
    '''
## Exercise 2: the distillation loss

$$\\mathcal{L} = \\alpha\\,\\mathrm{CE}(y, s) + (1-\\alpha)\\,T^2\\,\\mathrm{KL}(p^T_t \\,\\|\\, p^T_s)$$

with the batch mean of each term. `F.kl_div(input, target)` computes $\\mathrm{KL}(target \\,\\|\\, \\cdot)$
and wants the student's **log**-probabilities as `input`; use `reduction="batchmean"`.
''',
    '''
def kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(teacher^T || student^T)."""
    raise NotImplementedError  # your code here
''',
    '''
def kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(teacher^T || student^T)."""
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                    reduction="batchmean")
    return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * T**2 * soft
''',
    'check.kd_loss(kd_loss)',
), (
    '''
## Exercise 3: gap closure

Did distillation help? Compare with the same student trained from scratch:
gap closure $= (\\text{distilled} - \\text{scratch}) / (\\text{teacher} - \\text{scratch})$ in accuracy.
When the scratch student is already as good as the teacher there is no gap: return `None`.
''',
    '''
def gap_closure(teacher_acc, scratch_acc, distilled_acc):
    """Share of the teacher-scratch gap that distillation closed (None when there is no gap)."""
    raise NotImplementedError  # your code here
''',
    '''
def gap_closure(teacher_acc, scratch_acc, distilled_acc):
    """Share of the teacher-scratch gap that distillation closed (None when there is no gap)."""
    if teacher_acc <= scratch_acc:
        return None
    return (distilled_acc - scratch_acc) / (teacher_acc - scratch_acc)
''',
    'check.gap_closure(gap_closure)',
)]

PRUNING = [(
    '''
## Exercise 1: L1 importance

Magnitude pruning (Han et al. 2015) scores each weight by $s_k = |w_k|$. Return one score per weight.
''',
    '''
def l1_importance(weight):
    raise NotImplementedError  # your code here
''',
    '''
def l1_importance(weight):
    return weight.abs()
''',
    'check.l1_importance(l1_importance)',
), (
    '''
## Exercise 2: Taylor importance

Removing $w_k$ changes the loss by about $g_k w_k$. Molchanov et al. (2019) score it by the square,
averaged over batches: $s_k = w_k^2 \\, \\overline{g_k^2}$. You get `grad_sq` $= \\overline{g_k^2}$ already averaged.
''',
    '''
def taylor_importance(weight, grad_sq):
    raise NotImplementedError  # your code here
''',
    '''
def taylor_importance(weight, grad_sq):
    return weight.pow(2) * grad_sq
''',
    'check.taylor_importance(taylor_importance)',
), (
    '''
## Exercise 3: Optimal Brain Damage

At a minimum the gradient vanishes, and setting $w_k$ to zero raises the loss by about
$s_k = \\tfrac12 h_{kk} w_k^2$ (LeCun et al. 1990), with $h_{kk}$ the Hessian's diagonal.
''',
    '''
def hessian_importance(weight, hessian_diag):
    raise NotImplementedError  # your code here
''',
    '''
def hessian_importance(weight, hessian_diag):
    return 0.5 * hessian_diag * weight.pow(2)
''',
    'check.hessian_importance(hessian_importance)',
), (
    '''
## Exercise 4: a magnitude mask

Return a boolean mask of the weight's shape: `True` keeps a weight, `False` removes it. Remove the
`round(sparsity * weight.numel())` weights of smallest magnitude. (`torch.topk` or `torch.kthvalue` help.)
''',
    '''
def magnitude_mask(weight, sparsity):
    raise NotImplementedError  # your code here
''',
    '''
def magnitude_mask(weight, sparsity):
    k = round(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
    return keep.view(weight.shape)
''',
    'check.magnitude_mask(magnitude_mask)',
)]

STRUCTURED = [(
    '''
## Exercise 1: delete hidden neurons

Between `fc1 = Linear(6, 8)` and `fc2 = Linear(8, 3)` sit 8 hidden neurons. Keep only those in `keep`
(a tensor of indices): build **new, smaller** layers. A neuron is a *row* of `fc1.weight`
(out_features × in_features) with its bias, and a *column* of `fc2.weight`.
''',
    '''
def shrink_linear(fc1, fc2, keep):
    """New (fc1, fc2) with only the hidden neurons `keep`."""
    raise NotImplementedError  # your code here
''',
    '''
def shrink_linear(fc1, fc2, keep):
    """New (fc1, fc2) with only the hidden neurons `keep`."""
    new1, new2 = nn.Linear(fc1.in_features, len(keep)), nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    return new1, new2
''',
    'check.shrink_linear(shrink_linear)',
), (
    '''
## Exercise 2: what deleting saves

Count the multiply-accumulates per sample of an MLP with layer widths `[inputs, hidden..., outputs]`
(each `Linear(a, b)` does `a * b`). Then compare a 64-256-256-10 MLP with the same MLP after half of each
hidden layer was deleted: the cost falls by much more than half. Why?
''',
    '''
def mlp_macs(widths):
    raise NotImplementedError  # your code here
''',
    '''
def mlp_macs(widths):
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
''',
    'check.mlp_macs(mlp_macs)',
)]

PIPELINE_SETUP = COMMON + '''
train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)
torch.manual_seed(0)
teacher = kdnb.models.mlp(64, [256, 256], 10)
kdnb.train(teacher, train, val=val, epochs=8, progress=False, plot=False)
teacher.eval();
'''

PIPELINE = [(
    '''
## Exercise 1: how much came back?

Pruning drops the accuracy from `original` to `pruned`; fine-tuning or distillation brings it back to
`recovered`. Which share of the **lost** accuracy came back?
''',
    '''
def recovered_fraction(original_acc, pruned_acc, recovered_acc):
    raise NotImplementedError  # your code here
''',
    '''
def recovered_fraction(original_acc, pruned_acc, recovered_acc):
    return (recovered_acc - pruned_acc) / (original_acc - pruned_acc)
''',
    'check.recovered_fraction(recovered_fraction)',
)]


def pipeline_task(solved: bool):
    stub = '''
# Your pipeline: prune the teacher so that at most 10 % of its weights are non-zero, then recover the
# accuracy by distilling from the teacher. Put the final model in `compressed`.
compressed = None  # your code here
'''
    solution = '''
pruned = kdnb.prune(teacher, sparsity=0.92, criterion="l1", data=train, val=val, progress=False, plot=False)
recovered = kdnb.distill(teacher, pruned.model, train, val=val, epochs=10, lr=3e-3, progress=False, plot=False)
compressed = recovered.student
'''
    return [md('''
## Exercise 2: the whole pipeline

Compress the teacher to **at most 10 % non-zero weights** while losing **at most 3 points** of accuracy.
Use `kdnb.prune` and `kdnb.distill` (see tutorial 04).
'''), code((solution if solved else stub).strip() + "\n\ncheck.compression(compressed, teacher, val, max_weights=0.1, max_drop=0.03)",
           check=True)]


def pair(stem: str, title: str, setup: str, parts, extra=None):
    return {f"exercises/{stem}.ipynb": notebook(title, setup, parts, solved=False, extra=extra),
            f"exercises/solutions/{stem}-solutions.ipynb": notebook(title, setup, parts, solved=True, extra=extra)}


EXERCISES = {
    **pair("00-quickstart-exercises", "Exercises: counting what pruning removes", COMMON, QUICKSTART),
    **pair("01-distillation-exercises", "Exercises: distillation", COMMON, DISTILLATION),
    **pair("02-pruning-exercises", "Exercises: importance criteria", COMMON, PRUNING),
    **pair("03-structured-exercises", "Exercises: deleting neurons", COMMON, STRUCTURED),
    **pair("04-prune-then-distill-exercises", "Exercises: prune, then distil", PIPELINE_SETUP, PIPELINE, pipeline_task),
}
