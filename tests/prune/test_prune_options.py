"""`kdnb.prune`'s keywords become frozen records once, every "auto" resolved (`kdnb.engine.prune.options`)."""

import dataclasses

import pytest
import torch

import kdnb
from kdnb.engine.loop import Settings
from kdnb.engine.prune.options import PruneOptions, parse_prune
from kdnb.engine.prune.schedule import schedules
from kdnb.engine.prune.score import criteria

DEFAULTS = dict(criterion="auto", structured=False, scope="global", max_layer_sparsity=None, pattern=None,
                reconstruct=None, rounds=None, finetune=0, schedule="auto", steps=None, distill=False, inplace=False,
                example=None, prune_again=False, control=False, round_to=None, temperature=4.0, alpha=0.5,
                slimming_epochs=2, slimming_l1=1e-3, hessian_estimator="fisher", calibration_samples=2048,
                weight_decay=None)


@pytest.fixture(scope="module")
def digits():
    return kdnb.datasets.load("digits", batch_size=256, seed=0)


@pytest.mark.parametrize("structured, finetune, sparsity", [(False, 0, 0.5), (True, 0, 0.5), (False, 2, 0.96)])
def test_every_auto_is_resolved_and_the_records_are_frozen(digits, structured, finetune, sparsity):
    train, val = digits
    net = kdnb.models.mlp(64, [32], 10)
    options = parse_prune(net, sparsity, train, val, settings=Settings(),
                          **{**DEFAULTS, "structured": structured, "finetune": finetune})
    assert isinstance(options, PruneOptions)
    assert options.cut.criterion in criteria.REGISTRY and options.schedule.kind in set(schedules.SCHEDULES) - {"auto"}
    assert options.settings.device == torch.device("cpu") and options.rebuild.reconstruct  # with data: re-solved
    assert options.example is not None and options.teacher is None
    for record in (options, options.cut, options.rebuild, options.schedule, options.settings):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.__setattr__(dataclasses.fields(record)[0].name, None)


def test_prune_runs_what_the_records_say(digits):
    train, val = digits
    net = kdnb.models.mlp(64, [32], 10)
    options = parse_prune(net, 0.5, train, val, settings=Settings(), **DEFAULTS)
    result = kdnb.prune(net, 0.5, data=train, val=val, progress=False, plot=False)
    assert (result.criterion, result.schedule, result.steps, result.reconstructed) == (
        options.cut.criterion, options.schedule.kind, options.schedule.steps, options.rebuild.reconstruct)
    assert len(result.trajectory) == options.rebuild.rounds
