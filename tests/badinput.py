"""A harness for bad-input tests: did a call fail cleanly, and did it leave the user's objects as they were?

    from badinput import assert_clean_error, assert_unchanged, snapshot   # tests/ is on sys.path

    before = snapshot(model, loader)
    assert_clean_error(kdnb.train, model, loader, lr=float("nan"), match="lr", names="lr")
    assert_unchanged(before, model, loader)

A clean error (issue 14) is a `KdnbError` (or a `KeyboardInterrupt` where the test says so) whose message
fits in 3 lines, names the argument and says how to fix it, raised from a frame outside torch/ and
torch_pruning/. Unchanged means bit-identical: every state_dict tensor, the Parameter objects themselves
(an optimizer holds them), their gradients and requires_grad flags, each submodule's class and training
flag, every hook dict, the parametrizations, and the loader's shuffle generator and data.
"""
from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning
from torch import nn
from torch.nn.modules import module as module_globals
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb
from kdnb.errors import KdnbError

MAX_LINES = 3
# A fix is an imperative ("pass ...", "use ...") or a suggestion ("did you mean ...?").
FIX = re.compile(r"\b(use|pass|give|set|call|check|choose|pick|create|install|upgrade|save|load|wrap|build|make|"
                 r"try|lower|raise|remove|drop|add|type|rename|convert|move|run|re-?run|write|reduce|increase|"
                 r"select|did you mean|fix|restart|start|put|keep|read)\b", re.IGNORECASE)
_LIBRARIES = tuple(str(Path(lib.__file__).resolve().parent) for lib in (torch, torch_pruning))
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_module_registration_hooks",
                 "_global_parameter_registration_hooks", "_global_buffer_registration_hooks")


def assert_clean_error(fn: Callable, *args: Any, match: str | None = None, names: str | tuple[str, ...] = (),
                       fix: re.Pattern | str | None = FIX, expect: type[BaseException] = KdnbError,
                       **kwargs: Any) -> BaseException:
    """Call ``fn(*args, **kwargs)``; assert it raises ``expect`` cleanly and return the exception.

    ``match`` is a regex searched in the message, ``names`` the text(s) it must contain (the argument's name,
    a file's path), ``fix`` a regex for the advice (checked for KdnbErrors only: an interrupt has no message).
    A call whose own keywords are named like these goes through a lambda.
    """
    try:
        fn(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - the point is to see whatever comes out
        caught = error
    else:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} raised nothing; expected {expect.__name__}")
    if not isinstance(caught, expect):
        trace = "".join(traceback.format_exception(caught)[-6:])
        raise AssertionError(f"expected {expect.__name__}, got {type(caught).__name__}: {caught}\n{trace}")
    message = str(caught)
    assert len(message.splitlines()) <= MAX_LINES, f"message longer than {MAX_LINES} lines:\n{message}"
    if match is not None:
        assert re.search(match, message), f"{match!r} not found in: {message}"
    for name in (names,) if isinstance(names, str) else names:
        assert name in message, f"the message does not name {name!r}: {message}"
    if fix is not None and issubclass(expect, KdnbError):
        assert re.search(fix, message), f"the message gives no fix: {message}"
    frames = traceback.extract_tb(caught.__traceback__)
    if frames:
        innermost = str(Path(frames[-1].filename).resolve())
        assert not innermost.startswith(_LIBRARIES), f"raised from inside a library ({innermost}): {message}"
    return caught


@dataclass
class Snapshot:
    state: dict[str, torch.Tensor]
    params: list[tuple[str, nn.Parameter, bool, torch.Tensor | None]]
    modules: list[tuple[str, type, bool, dict]]
    global_hooks: dict[str, dict]
    loader: dict[str, Any] = field(default_factory=dict)


def snapshot(model: nn.Module, loader: Any = None) -> Snapshot:
    """Everything a failed call must leave as it was; compare with `assert_unchanged`."""
    return Snapshot(
        state={key: _copy(t) for key, t in model.state_dict(keep_vars=True).items()},
        params=[(name, p, p.requires_grad, None if p.grad is None else _copy(p.grad))
                for name, p in model.named_parameters(remove_duplicate=False)],
        modules=[(name, type(m), m.training, _module_extras(m))
                 for name, m in model.named_modules(remove_duplicate=False)],
        global_hooks={name: dict(getattr(module_globals, name, {})) for name in _GLOBAL_HOOKS},
        loader=_loader_state(loader),
    )


def assert_unchanged(before: Snapshot, model: nn.Module, loader: Any = None) -> None:
    """Assert ``model`` (and ``loader``) are bit-identical to what ``before`` recorded."""
    after = snapshot(model, loader)
    assert after.state.keys() == before.state.keys(), \
        f"state_dict keys changed: {sorted(after.state.keys() ^ before.state.keys())}"
    for key, tensor in before.state.items():
        assert _same(tensor, after.state[key]), f"state_dict tensor {key!r} changed"
    assert [p[0] for p in after.params] == [p[0] for p in before.params], "the parameter names changed"
    for (name, param, grad_flag, grad), (_, param_now, grad_flag_now, grad_now) in zip(before.params, after.params):
        assert param_now is param, f"parameter {name!r} was replaced by another object (an optimizer holds the old)"
        assert grad_flag_now == grad_flag, f"requires_grad of {name!r} changed"
        assert (grad is None) == (grad_now is None) and (grad is None or _same(grad, grad_now)), \
            f"the gradient of {name!r} changed"
    assert [m[:2] for m in after.modules] == [m[:2] for m in before.modules], "the submodules changed"
    for (name, _, training, extras), (_, _, training_now, extras_now) in zip(before.modules, after.modules):
        assert training_now == training, f"training flag of {name or 'the model'!r} changed"
        for what, value in extras.items():
            assert _same_dict(value, extras_now[what]), f"{what} of {name or 'the model'!r} changed"
    for name, hooks in before.global_hooks.items():
        assert _same_dict(hooks, after.global_hooks[name]), f"torch's {name} changed"
    for what, value in before.loader.items():
        assert _same(value, after.loader[what]) if isinstance(value, torch.Tensor) else value == after.loader[what], \
            f"the loader's {what} changed (its next epoch would not shuffle as if the call never happened)"


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_meta else tensor.detach().clone()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape, device and bytes (so NaN equals NaN and -0.0 differs from 0.0)."""
    if (a.dtype, a.shape, a.device) != (b.dtype, b.shape, b.device):
        return False
    if a.is_meta:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _same_dict(a: dict, b: dict) -> bool:
    """The same keys holding the very same objects (a hook removed and re-added is another object)."""
    return list(a) == list(b) and all(a[key] is b[key] or a[key] == b[key] for key in a)


def _module_extras(module: nn.Module) -> dict[str, dict]:
    extras = {name: dict(getattr(module, name)) for name in _HOOK_DICTS if hasattr(module, name)}
    extras["parametrizations"] = ({name: [type(p) for p in plist] for name, plist in module.parametrizations.items()}
                                  if parametrize.is_parametrized(module) else {})
    return extras


def _loader_state(loader: Any) -> dict[str, Any]:
    """The shuffle RNG a loader's next epoch draws from, and the data a TensorDataset holds."""
    if loader is None:
        return {}
    state: dict[str, Any] = {}
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    for where, owner in [("generator", loader), ("sampler generator", sampler), ("batch sampler", batch_sampler)]:
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            state[where] = generator.get_state()
    if isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is None \
            and getattr(loader, "generator", None) is None:
        state["global torch RNG (its shuffle seed comes from there)"] = torch.get_rng_state()
    for i, tensor in enumerate(getattr(getattr(loader, "dataset", None), "tensors", ())):
        state[f"dataset tensor {i}"] = tensor.detach().clone()
    return state


# ---- bad inputs every verb's tests share ----

def on_meta() -> nn.Module:
    """A model whose tensors have no data (meta device)."""
    with torch.device("meta"):
        return kdnb.models.mlp(6, [8], 3)


def dict_batches() -> DataLoader:
    """Batches as dicts without the 'labels' key (their "target" is no keyword input of the model either)."""
    class D(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input": torch.randn(6), "target": torch.tensor(i % 3)}

    return DataLoader(D(), batch_size=4)


def labels(y: torch.Tensor, n: int = 8, features: int = 6) -> DataLoader:
    """Random inputs with the labels ``y``."""
    return DataLoader(TensorDataset(torch.randn(n, features), y), batch_size=4)


def unlabelled(features: int = 6, n: int = 8) -> DataLoader:
    """Inputs without labels."""
    return DataLoader(TensorDataset(torch.randn(n, features)), batch_size=4)


def make_loader(n: int = 32, features: int = 6, classes: int = 3, batch_size: int = 8, labels=None, **kwargs
                ) -> DataLoader:
    """A seeded, shuffled loader of random inputs and labels (its own generator, so tests can check its RNG)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if labels is None else labels
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(1), **kwargs)


def make_net(features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return kdnb.models.mlp(features, [8], classes)


class DictOut(nn.Module):
    """A model whose output is a dict, not logits."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.fc(x)}


class Raises(DictOut):
    """A model whose forward raises ``error`` (a bug in the user's code)."""

    def __init__(self, error: type[BaseException]):
        super().__init__()
        self.error = error

    def forward(self, x):
        raise self.error("index 7 is out of bounds for dimension 0")


class Items(Dataset):
    """Map-style (no .tensors): only a pass over the data sees a bad later item; ``bad`` maps index -> item."""

    def __init__(self, bad: dict, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.bad = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g), bad

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.bad.get(i, (self.x[i], self.y[i]))


def empty() -> DataLoader:
    """A loader with no batch."""
    return labels(torch.zeros(0, dtype=torch.long), n=0)


def interrupted_on_call(real: Callable, n: int) -> Callable:
    """``real``, except that its ``n``-th call raises KeyboardInterrupt (the stop button at that moment)."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper
