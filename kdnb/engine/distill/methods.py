"""The registry of distillation methods: one record per method, in this one file.

A record names the method, the formula of `losses` a training step calls, the terms that formula
reports, its default weights and what it needs (the teacher's features, a label on every sample).
The objective, the checks of `distill`, the magics' help and the docs read this registry; adding a
method is one formula in `losses` plus one `register_method(Method(...))` here (from outside:
`kdnb.register_method`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdnb.engine.distill import losses
from kdnb.errors import KdnbError, suggest


@dataclass(frozen=True)
class Step:
    """What one training step hands a method's loss: student logits ``s``, teacher logits ``t`` (None
    for a method without teacher), labels ``y`` (-1: a transfer-set input), the weights, DKD's warm-up
    ramp, the mixup partner labels and lambda (or None), whether every row has its label (no transfer
    set: the hard-label CE is a plain mean, see `losses.hard_ce`) and the dict the terms are reported into."""

    s: torch.Tensor
    t: torch.Tensor | None
    y: torch.Tensor
    temperature: float
    alpha: float
    beta: float
    ramp: float = 1.0
    mix: losses.Mix | None = None
    labelled: bool = False
    terms: losses.Terms | None = None


@dataclass(frozen=True)
class Method:
    """One distillation method.

    name: the ``method=`` string. label: words for tables and charts. paper: the citation.
    formula: the function of `losses` the step calls (its docstring is the formula).
    loss: ``Step -> loss``, the call of ``formula`` with this method's arguments (plus the hard-label
        CE and DKD's warm-up ramp where the paper's objective adds them).
    terms: the unweighted terms a step logs. alpha, beta: default weights; weights: what they weigh.
    feature_loss: per (teacher, student) layer pair, for methods that match features (else None).
    feature_term: the name its summed term is logged under.
    needs_teacher: False for the scratch baseline (no teacher runs). mixup: works on mixed-up inputs.
    baseline: a record `distill(baseline=...)` trains beside the method, not a ``method=`` choice.
    """

    name: str
    label: str
    paper: str
    formula: Callable[..., torch.Tensor]
    loss: Callable[[Step], torch.Tensor]
    terms: tuple[str, ...]
    alpha: float
    beta: float
    weights: str
    feature_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    feature_term: str | None = None
    needs_teacher: bool = True
    mixup: bool = True
    baseline: bool = False

    @property
    def needs_features(self) -> bool:
        return self.feature_loss is not None


METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry: ``kdnb.distill(method=method.name)`` then runs it, and the checks, the
    magics' help and the charts know it. A name already taken is refused unless ``replace=True``.

    A method is one formula (``formula``, whose docstring states it) and its ``loss(step: Step) -> tensor``;
    e.g. ``kdnb.register_method(Method("mse_logits", "MSE on logits", "Ba & Caruana 2014", mse, lambda st:
    mse(st.s, st.t), ("mse",), 0.0, 0.0, "none"))``."""
    if not isinstance(method, Method):
        raise KdnbError(f"register_method takes a Method record, got {type(method).__name__}; pass e.g. "
                        "Method(name, label, paper, formula, loss, terms, alpha, beta, weights)")
    if not isinstance(method.name, str) or not method.name or method.name.split() != [method.name]:
        raise KdnbError(f"a method's name should be one word (it is the method= string), got {method.name!r}; "
                        "pass e.g. name='my_kd'")
    if method.name in METHODS and not replace:
        raise KdnbError(f"method {method.name!r} is already registered; pass replace=True to replace it, or "
                        "choose another name")
    if not callable(method.loss) or not callable(method.formula):
        raise KdnbError(f"method {method.name!r}: formula and loss should be functions (loss(step) -> tensor)")
    METHODS[method.name] = method
    return method



def get(name: object) -> Method:
    """The record of ``name``, or a one-line error naming the nearest known method."""
    if not isinstance(name, str) or name not in METHODS:
        known = names()
        raise KdnbError(f"unknown method {name!r}; {suggest(str(name), known)} (known: {', '.join(known)})")
    return METHODS[name]


def names() -> tuple[str, ...]:
    """The ``method=`` choices of `distill` (the baselines "scratch" and "pseudo" are not among them)."""
    return tuple(name for name, m in METHODS.items() if not m.baseline)


def _kd(step: Step) -> torch.Tensor:
    return losses.kd(step.s, step.t, step.y, step.temperature, step.alpha, mix=step.mix, labelled=step.labelled,
                     terms=step.terms)


_KD_WEIGHTS = "alpha: hard-label CE (1 - alpha: the soft term); beta: the feature term"

register_method(Method("kd", "KD (soft labels)", "Hinton, Vinyals & Dean 2015", losses.kd, _kd, ("ce", "kd"),
                0.5, 0.0, "alpha: hard-label CE (1 - alpha: the soft term)"))
register_method(Method("fitnets", "FitNets (hints + KD)", "Romero et al. 2015", losses.kd, _kd, ("ce", "kd", "hint"),
                0.5, 1.0, _KD_WEIGHTS, feature_loss=losses.fitnets, feature_term="hint"))
register_method(Method("cosine", "cosine hidden states + KD", "Sanh et al. 2019 (DistilBERT)", losses.kd, _kd,
                ("ce", "kd", "cos"), 0.5, 1.0, _KD_WEIGHTS, feature_loss=losses.cosine, feature_term="cos"))
register_method(Method("at", "attention transfer + KD", "Zagoruyko & Komodakis 2017", losses.kd, _kd,
                       ("ce", "kd", "at"),
                0.5, 1.0, _KD_WEIGHTS, feature_loss=losses.at, feature_term="at"))


def _dkd(step: Step) -> torch.Tensor:
    # The paper's objective: CE + w * DKD, w ramping linearly to 1 over the warm-up epochs.
    ce = losses.hard_ce(step.s, step.y, labelled=step.labelled)
    if step.terms is not None:
        step.terms["ce"] = ce
    return ce + step.ramp * losses.dkd(step.s, step.t, step.y, step.temperature, step.alpha, step.beta,
                                       terms=step.terms)


register_method(Method("dkd", "DKD (decoupled KD)", "Zhao et al. 2022", losses.dkd, _dkd, ("ce", "tckd", "nckd"),
                1.0, 8.0, "alpha: TCKD; beta: NCKD (Zhao et al.'s CIFAR values)",
                mixup=False))  # a mixed input has no single target class to decouple around


def _pseudo(step: Step) -> torch.Tensor:
    return losses.pseudo_label(step.s, step.t, step.y, step.alpha, mix=step.mix, labelled=step.labelled,
                               terms=step.terms)


register_method(Method("pseudo", "hard pseudo-labels", "Lee 2013", losses.pseudo_label, _pseudo, ("ce", "pseudo"),
                0.5, 0.0, "alpha: hard-label CE (1 - alpha: CE with the teacher's top-1 class)", baseline=True))


def _scratch(step: Step) -> torch.Tensor:
    ce = losses.hard_ce(step.s, step.y, step.mix, labelled=step.labelled)
    if step.terms is not None:
        step.terms["ce"] = ce
    return ce


# The fair baseline: the same student, steps, optimizer, schedule and augmentation, hard labels only.
register_method(Method("scratch", "scratch (hard labels)", "", losses.hard_ce, _scratch, ("ce",), 1.0, 0.0,
                "none", needs_teacher=False, baseline=True))
