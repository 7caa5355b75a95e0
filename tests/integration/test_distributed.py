"""The one loop on two processes: ``torchrun --nproc_per_node=2`` (gloo, CPU) runs tests/distributed_worker.py,
which calls the verbs as a user's script would; here its per-rank results are checked against each other and
against the same calls in this one process."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdnb
from kdnb.engine import distributed
from kdnb.errors import KdnbError

TESTS = Path(__file__).resolve().parents[1]  # the shared helpers live in tests/, above this folder
WORKER = TESTS / "distributed_worker.py"
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (one torchrun launch for every check, bounded by a timeout: a hang fails)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDNB_DEVICE": "cpu"}
    # --standalone: torchrun's own store picks a free port (a port chosen here could be taken before it binds)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)], out


@pytest.fixture(scope="module")
def worker():
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_process(worker):
    return worker.runs(False, 64)


RUNS = ("train", "distill_cache=True", "distill_cache=False", "distill_fitnets", "prune")


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_both_ranks_end_with_the_same_parameters_and_history(ranks, run):
    (zero, one), _ = ranks
    assert zero[run]["status"] == one[run]["status"] == "completed"
    assert torch.equal(zero[run]["checksum"], one[run]["checksum"])
    assert zero[run]["steps"] == one[run]["steps"] and zero[run]["epochs"] == one[run]["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_two_processes_compute_the_one_process_run_on_the_same_global_batches(ranks, one_process, run):
    (zero, _), _ = ranks
    alone = one_process[run]
    # 1e-3: the all-reduce adds the two halves' gradients in another order than one process does; with torch's
    # generic kernels (ATEN_CPU_CAPABILITY=default) the prune run's parameter sums then differ by up to 1.4e-4
    torch.testing.assert_close(zero[run]["checksum"], alone["checksum"], rtol=1e-3, atol=1e-3)
    assert len(zero[run]["steps"]["loss"]) == len(alone["steps"]["loss"])  # per-rank batch = 64 / 2
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if name in alone["epochs"]:
            torch.testing.assert_close(torch.tensor(zero[run]["epochs"][name]), torch.tensor(alone["epochs"][name]),
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_only_rank_zero_draws_bars_warns_and_saves(ranks):
    (zero, one), out = ranks
    assert zero["bars"] and one["bars"] == []  # one bar per run: rank 0's
    assert any("does not split evenly over 2 processes" in w for w in zero["warnings"]) and one["warnings"] == []
    assert (out / "saved-by-rank-0.kdnb").exists() and not (out / "saved-by-rank-1.kdnb").exists()


@pytest.mark.slow
def test_a_batch_size_that_does_not_split_is_rounded_up_per_rank(ranks):
    (zero, one), _ = ranks
    assert len(zero["uneven"]["steps"]["loss"]) == 4  # 256 samples, 128 per rank, 32 a step: a global 64
    assert zero["uneven"]["epochs"] == one["uneven"]["epochs"]


@pytest.mark.slow
def test_pruning_replicas_that_started_apart_scores_and_masks_rank_zeros_weights(ranks):
    (zero, one), _ = ranks
    assert torch.equal(zero["pruned_from_own_init"]["checksum"], one["pruned_from_own_init"]["checksum"])


@pytest.mark.slow
def test_data_driven_pruning_on_each_ranks_own_data_takes_rank_zeros_scores_and_weights(ranks):
    (zero, one), _ = ranks
    for name in ("obs", "taylor_structured"):  # OBS: scores from each rank's Hessian, then re-solved weights
        assert zero["pruned_from_own_data"][name]["shapes"] == one["pruned_from_own_data"][name]["shapes"]
        assert torch.equal(zero["pruned_from_own_data"][name]["checksum"], one["pruned_from_own_data"][name]["checksum"])


@pytest.mark.slow
def test_batchnorm_statistics_are_rank_zeros_on_every_rank_after_training(ranks):
    (zero, one), _ = ranks
    assert zero["batchnorm"]["status"] == "completed" and zero["batchnorm"]["epochs"] == one["batchnorm"]["epochs"]
    assert torch.equal(zero["batchnorm"]["checksum"], one["batchnorm"]["checksum"])  # parameters and buffers


@pytest.mark.slow
def test_the_soft_label_cache_is_built_sharded_each_rank_labels_its_half_once(ranks, worker):
    (zero, one), _ = ranks
    alone = worker.cache_labels(False)  # the first batch's checks, plus all 256 samples
    assert zero["cache_labels"] == one["cache_labels"] == alone - 128


@pytest.mark.slow
def test_a_process_group_of_the_users_own_from_mp_spawn(tmp_path):
    """No torchrun: the user's script starts 2 processes with torch.multiprocessing.spawn and its own group."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDNB_DEVICE": "cpu"}
    for name in distributed.TORCHRUN_VARIABLES:
        env.pop(name, None)
    command = [sys.executable, str(WORKER), "--spawn", str(tmp_path)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (torch.load(tmp_path / f"spawned{r}.pt", weights_only=False) for r in (0, 1))
    assert zero["world"] == one["world"] == 2 and zero["status"] == one["status"] == "completed"
    assert torch.equal(zero["checksum"], one["checksum"]) and zero["epochs"] == one["epochs"]
    assert len(zero["steps"]["loss"]) == 4  # 256 samples, a global batch of 64: 4 steps, each rank 32 a step


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_before_the_update(ranks):
    (zero, one), _ = ranks
    for rank in (zero, one):
        assert rank["nan"]["status"] == "diverged" and len(rank["nan"]["steps"]["loss"]) == 2
        assert "at step 3" in rank["nan"]["message"]
    assert zero["nan"]["steps"] == one["nan"]["steps"]


@pytest.mark.slow
def test_an_interrupt_on_one_rank_stops_both_after_the_same_step(ranks):
    (zero, one), _ = ranks
    for rank in (zero, one):
        assert rank["interrupt"]["status"] == "interrupted" and len(rank["interrupt"]["steps"]["loss"]) == 2
    assert zero["interrupt"]["message"] == one["interrupt"]["message"]
    assert zero["again"]["status"] == "completed" and zero["again"]["epochs"] == one["again"]["epochs"]


@pytest.mark.slow
def test_a_loader_with_its_own_distributed_sampler_is_used_as_is(ranks):
    (zero, one), _ = ranks
    assert len(zero["own_sampler"]["steps"]["loss"]) == 2 * 8  # 128 samples per rank, 16 a step, 2 epochs
    assert zero["own_sampler"]["epochs"] == one["own_sampler"]["epochs"]


def test_distributed_true_without_torchrun_names_torchrun(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    train, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
    net = kdnb.models.mlp(64, [16], 10)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(KdnbError, match="torchrun --nproc_per_node"):
        kdnb.train(net, train, epochs=1, distributed=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(KdnbError, match="distributed should be 'auto', True or False"):
        kdnb.train(net, train, epochs=1, distributed="yes", progress=False)


def test_one_process_is_left_alone():
    train, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
    assert distributed.world_size() == 1 and distributed.is_main_process()
    history = kdnb.train(kdnb.models.mlp(64, [16], 10), train, epochs=1, distributed=False, progress=False)
    assert history.status == "completed"
