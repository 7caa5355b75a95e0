"""Does 2:4 sparsity make a model faster? Only on sparse tensor cores, and this script measures both sides.

A feed-forward block of a transformer (Linear d -> 4d, ReLU, Linear 4d -> d: ``kdnb.models.mlp``) is pruned
with ``kdnb.prune(..., pattern="2:4")`` (L1, no data: the speed does not depend on which weights are kept),
then timed against its dense self in alternating rounds (medians):

- on a CUDA GPU of compute capability 8.0+: in float16, the dense model against
  ``result.export(semi_structured=True)`` (each 2:4 weight as ``torch.sparse.to_sparse_semi_structured``, run
  by cuSPARSELt or CUTLASS), for d = 1024, 2048, 4096 at 4096 tokens a batch; the outputs are compared too;
- always: on the CPU (fp32, one thread, d = 512, 256 tokens), the 2:4 model with its masks folded
  (``make_permanent``) against the dense one, the 1.00x that `PruneResult.summary` states.

    .venv/bin/python bench/nm_speed.py            # prints "speed-up" lines; needs no GPU for the CPU line

Published sparse-tensor-core speed-ups for 2:4 fp16 matmuls of this size are 1.1-1.7x (NVIDIA A100/H100);
the script prints what this machine gives.
"""
from __future__ import annotations

import statistics
import warnings

import torch

import kdnb
from kdnb.engine.prune import export, make_permanent, prune
from timing import alternating_times  # bench/timing.py: this script's folder is on sys.path
import report  # bench/report.py: this script's folder is on sys.path

ROUNDS = 50


def block(d: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return kdnb.models.mlp(d, [4 * d], d).eval()


def two_four(d: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no data: scored by magnitude, said once
        return prune(block(d), 0.5, pattern="2:4", criterion="l1", device="cpu").model


def speedup(dense: torch.nn.Module, sparse: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    times = alternating_times({"dense": dense, "sparse": sparse}, x, ROUNDS)  # on a GPU it waits for the kernels
    dense_ms, sparse_ms = statistics.median(times["dense"]), statistics.median(times["sparse"])
    return dense_ms, dense_ms / sparse_ms


def cpu_line() -> None:
    torch.set_num_threads(1)
    d, x = 512, torch.randn(256, 512)
    ms, ratio = speedup(block(d), make_permanent(two_four(d)), x)
    print(f"CPU fp32, 1 thread, d={d}, 256 tokens: dense {ms:.2f} ms, 2:4 (masks folded) speed-up {ratio:.2f}x")


def cuda_lines() -> None:
    name, capability = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    if capability[0] < 8:
        print(f"{name} (capability {capability}) has no sparse tensor cores: no CUDA line")
        return
    for d in (1024, 2048, 4096):
        dense, pruned = block(d).cuda().half(), two_four(d).cuda().half()
        sparse, masked = export(pruned, semi_structured=True), export(pruned)  # masked: the zeros stored dense
        x = torch.randn(4096, d, device="cuda", dtype=torch.half)
        with torch.inference_mode():
            error = float((sparse(x).float() - masked(x).float()).abs().max())
        ms, ratio = speedup(dense, sparse, x)
        print(f"{name} fp16, d={d} (Linear {d}->{4 * d}->{d}), 4096 tokens: dense {ms:.3f} ms, 2:4 on sparse "
              f"tensor cores speed-up {ratio:.2f}x (max |output - masked dense output| {error:.1e})")


def main() -> None:
    cpu_line()
    if torch.cuda.is_available():
        cuda_lines()
    else:
        print("no CUDA device: the 2:4 speed-up on sparse tensor cores is not measured on this machine")


if __name__ == "__main__":
    report.run(main)
