"""One set of training settings (`kdnb.engine.loop.Settings`): every verb that trains takes the same names,
keyword-only, with the same defaults, so a user (and the magics, which read the signatures) can move a
setting from `kdnb.train` to `kdnb.distill`, `kdnb.prune` or `kdnb.sensitivity` unchanged."""
import inspect

import pytest

import kdnb
from kdnb.engine import loop

VERBS = ("train", "distill", "prune", "sensitivity")
EXPECTED = {"optimizer": None, "lr": 1e-3, "scheduler": None, "amp": False, "grad_clip": None, "device": "auto",
            "seed": 0, "callbacks": ()}


def test_the_settings_record_is_the_documented_set():
    assert loop.SETTINGS == EXPECTED
    assert set(loop.SETTINGS) == set(inspect.signature(loop.fit).parameters) & set(EXPECTED)
    for line in loop.settings_help().splitlines():  # every setting documented once, for the verbs' help
        assert line.startswith("        ") and line.strip().split(":")[0] in EXPECTED


@pytest.mark.parametrize("verb", VERBS)
def test_every_training_verb_takes_the_same_settings_keyword_only(verb):
    params = inspect.signature(getattr(kdnb, verb)).parameters
    for name, default in loop.SETTINGS.items():
        assert name in params, f"kdnb.{verb} has no {name!r}"
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"kdnb.{verb}: {name} should be keyword-only"
        assert params[name].default == default, f"kdnb.{verb}: {name} defaults to {params[name].default!r}"


@pytest.mark.parametrize("verb", ("train", "distill"))
def test_the_training_length_is_epochs_and_prunes_is_finetune(verb):
    assert inspect.signature(getattr(kdnb, verb)).parameters["epochs"].kind is inspect.Parameter.KEYWORD_ONLY
    prune = inspect.signature(kdnb.prune).parameters
    assert "epochs" not in prune and prune["finetune"].default == 0


@pytest.mark.parametrize("verb", VERBS)
def test_the_magics_and_help_describe_every_setting(verb):
    from kdnb.magics import argument_help

    described = argument_help(getattr(kdnb, verb))
    assert all(described.get(name) for name in loop.SETTINGS), f"kdnb.{verb}'s docstring lacks a setting"
