"""Every distillation loss of kdnb, one short function each; the docstring is the formula.

Notation: ``s`` student logits and ``t`` teacher logits, shape (N, C); ``y`` integer labels, shape (N,),
where -1 marks an unlabelled sample (a transfer-set input); ``T`` the temperature;
``p^T = softmax(logits / T)``. Every loss is a mean over the batch.

The losses a training step calls take keywords that change no formula: ``mix=(y2, lam)`` when
the batch was mixed up (Zhang et al. 2018), which only changes the hard-label term (see `hard_ce`);
``labelled=True`` when no row can be a transfer-set input (no -1 among the labels), so the hard-label
term is torch's plain batch mean; and ``terms``, a dict that receives each unweighted term under its
name, so the live chart can draw the terms apart from the very tensors the loss was built of.

Speed (a step of a small student is a few dozen tiny tensor ops, each a node of the backward graph
that costs ~10-25 us on a CPU whatever its size): the weighted sums are one ``torch.lerp`` and the
batch mean and T^2 one multiply, so a KD step adds 7 nodes to cross-entropy's 2, not 11.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

UNLABELLED = -1  # the label of a transfer-set input: no hard-label term for it

Mix = tuple[torch.Tensor, float]  # (the partner labels y[perm], lambda) of a mixed-up batch
Terms = dict[str, torch.Tensor]


def _report(terms: Terms | None, **values: torch.Tensor) -> None:
    if terms is not None:
        terms.update(values)


def soft_labels(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The soft labels of Hinton, Vinyals & Dean 2015: the class distribution softened by T,

        p^T = softmax(z / T)   over the classes (the last dimension)

    T = 1 is the ordinary softmax; a higher T spreads probability onto the non-target classes,
    showing how the network relates them ("dark knowledge").
    """
    return F.softmax(logits / temperature, dim=-1)


def hard_ce(s: torch.Tensor, y: torch.Tensor, mix: Mix | None = None, *, labelled: bool = False) -> torch.Tensor:
    """Cross-entropy with the hard labels over the labelled rows only:

        CE = sum over {i : y_i != -1} of -log softmax(s_i)[y_i]  /  max(number of labelled rows, 1)

    so a batch drawn only from the transfer set has CE = 0 (it says nothing about the labels); with
    ``labelled=True`` (every row has its label) that is the plain batch mean, torch's cross-entropy.
    On a mixed-up batch x~ = lam * x + (1 - lam) * x[perm], ``mix = (y[perm], lam)`` and the target is
    mixed the same way (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"):

        CE_mix = lam * CE(y, s) + (1 - lam) * CE(y[perm], s)
    """
    if mix is not None:
        partner, lam = mix
        return torch.lerp(hard_ce(s, partner, labelled=labelled), hard_ce(s, y, labelled=labelled), lam)
    if labelled:
        return F.cross_entropy(s, y)
    total = F.cross_entropy(s, y, ignore_index=UNLABELLED, reduction="sum")
    return total / (y != UNLABELLED).sum().clamp_min(1)


def soft_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """The soft-target term of Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":

        T^2 * KL(p_t^T || p_s^T) = T^2 * sum_c p_t^T[c] * (log p_t^T[c] - log p_s^T[c]),   batch mean.

    The gradient w.r.t. s is T * (p_s^T - p_t^T), which shrinks like 1/T^2 as T grows without the T^2
    factor; with it the soft term keeps the same scale whatever T (Hinton et al., section 2).
    """
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kl_sum = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return kl_sum * (temperature**2 / s.shape[0])  # the batch mean and T^2 in one multiply


def kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float = 4.0,
       alpha: float = 0.5, *, mix: Mix | None = None, labelled: bool = False, terms: Terms | None = None
       ) -> torch.Tensor:
    """Knowledge distillation, Hinton, Vinyals & Dean 2015:

        KD = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T)

    here ``alpha`` weights the HARD-label term and ``1 - alpha`` the soft term. Libraries disagree:
    some (e.g. the Keras distiller example, RepDistiller) give ``alpha`` to the soft term instead,
    so alpha=0.9 there means alpha=0.1 here. Hinton et al. found a much lower weight on the
    hard term works best (a small alpha here). CE uses the labelled rows only (see `hard_ce`).
    On mixed-up inputs ``t`` is the teacher's output on the mixed input itself ("function matching",
    Beyer et al. 2022), never a mix of its outputs on the two originals.
    """
    ce, soft = hard_ce(s, y, mix, labelled=labelled), soft_kl(s, t, temperature)
    _report(terms, ce=ce, kd=soft)
    return torch.lerp(soft, ce, alpha)  # soft + alpha * (ce - soft) = alpha * ce + (1 - alpha) * soft


def pseudo_label(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float = 0.5, *,
                 mix: Mix | None = None, labelled: bool = False, terms: Terms | None = None) -> torch.Tensor:
    """Hard pseudo-labels (Lee 2013, "Pseudo-Label"): KD with the soft labels replaced by the teacher's top-1 class,

        PL = alpha * CE(y, s) + (1 - alpha) * CE(argmax_c t, s)

    on the same inputs (augmented, mixed) as KD. It is the baseline that answers "did the *soft*
    labels help?": whatever PL gains over a scratch student came from the teacher's decisions on
    the extra inputs, whatever KD gains over PL from the rest of its distribution.
    """
    ce, pseudo = hard_ce(s, y, mix, labelled=labelled), F.cross_entropy(s, t.argmax(dim=1))
    _report(terms, ce=ce, pseudo=pseudo)
    return torch.lerp(pseudo, ce, alpha)  # alpha * ce + (1 - alpha) * pseudo


def fitnets(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss, Romero et al. 2015, "FitNets: Hints for Thin Deep Nets":

        L_hint = mean over all elements of (r(u_s) - u_t)^2

    where ``student_feature`` is already r(u_s), the student's guided layer passed through the
    learned adapter r (the paper's regressor), and u_t the teacher's hint layer. The paper writes
    1/2 ||u_t - r(u_s)||^2 summed; the elementwise mean (as torch's MSELoss) keeps the scale
    independent of the layer size.
    """
    return F.mse_loss(student_feature, teacher_feature)


def cosine(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Cosine hidden-state loss, the L_cos of DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of
    BERT"):

        L_cos = mean over rows of (1 - <r(h_s), h_t> / (||r(h_s)|| ||h_t||))

    a row being one token's hidden state of features (N, T, d) (the paper's, per position), or one sample's
    whole feature, flattened, of any other shape. Only the direction of the representation is matched, not its
    scale, which a student of another width cannot copy anyway. ``student_feature`` is already r(h_s), through the
    adapter where the widths differ. Cost: O(elements) time, one pass.
    """
    if student_feature.dim() == 3:
        width = student_feature.shape[-1]
        s, t = student_feature.reshape(-1, width), teacher_feature.reshape(-1, width)
    else:
        s, t = student_feature.flatten(1), teacher_feature.flatten(1)
    return (1 - F.cosine_similarity(s, t, dim=1)).mean()


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis 2017, "Paying More Attention to Attention":

        Q = vec( sum_c |A_c|^p ) / || vec( sum_c |A_c|^p ) ||_2

    for a feature A of shape (N, C, *spatial): sum over channels, flatten the spatial positions,
    divide each sample's map by its L2 norm. Returns shape (N, prod(spatial)).
    """
    q = feature.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def at(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer, Zagoruyko & Komodakis 2017 (eq. 2, one layer pair, p = 2 in the norm):

        AT = mean over the batch of || Q_s - Q_t ||_2,   Q = `attention_map` (L2-normalised)

    The paper's beta/2 weight is the caller's ``beta``. (The authors' code instead takes the mean
    of (Q_s - Q_t)^2 over batch and positions, a different scale for the same idea.)
    """
    diff = attention_map(student_feature, p) - attention_map(teacher_feature, p)
    return diff.norm(p=2, dim=1).mean()


def _target_mask(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, logits.shape[1]).bool()


def tckd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Target-class KD of Zhao et al. 2022, "Decoupled Knowledge Distillation":

        TCKD = T^2 * KL(b_t || b_s),   b = [p^T[y], 1 - p^T[y]]

    the binary distribution "target class vs all others", batch mean. log(1 - p[y]) is taken as the
    logsumexp of the other classes' log-probabilities, which stays exact when p[y] is near 1.
    """
    mask = _target_mask(s, y)

    def log_binary(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits / temperature, dim=1)
        return torch.stack([log_p[mask], torch.logsumexp(log_p.masked_fill(mask, float("-inf")), dim=1)], dim=1)

    log_b_s, log_b_t = log_binary(s), log_binary(t)
    return temperature**2 * (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1).mean()


def nckd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Non-target-class KD of Zhao et al. 2022:

        NCKD = T^2 * KL(p_hat_t || p_hat_s),   p_hat = softmax over the non-target classes of logits / T

    i.e. the class distribution renormalised after removing the target class, batch mean.
    """
    hide = _target_mask(s, y) * 1e9  # the target logit drops out of the softmax
    log_q_s = F.log_softmax(s / temperature - hide, dim=1)
    log_q_t = F.log_softmax(t / temperature - hide, dim=1)
    return temperature**2 * (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1).mean()


def dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float = 4.0,
        alpha: float = 1.0, beta: float = 8.0, *, terms: Terms | None = None) -> torch.Tensor:
    """Decoupled knowledge distillation, Zhao et al. 2022 (CVPR):

        DKD = alpha * TCKD + beta * NCKD

    It rests on the identity KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD (all at the same T), in
    which classic KD ties NCKD's weight to the teacher's confidence; DKD frees it (beta = 8 in
    the paper on CIFAR-100). The training objective adds CE(y, s) and ramps DKD up linearly over
    the first epochs (the paper's warm-up). A transfer-set input (y = -1) has no label, so its
    target class is the teacher's top-1 class: y_i := argmax_c t_i (DKD with a transfer set).
    """
    y = torch.where(y == UNLABELLED, t.argmax(dim=1), y)
    target, others = tckd(s, t, y, temperature), nckd(s, t, y, temperature)
    _report(terms, tckd=target, nckd=others)
    return alpha * target + beta * others
