"""What the latency benches share: every model timed in every round, alternating, so a burst of other work
on the machine slows all of them alike instead of one."""
from __future__ import annotations

import time

import torch


def alternating_times(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int,
                      clock=time.perf_counter) -> dict[str, list[float]]:
    """Milliseconds per forward of each model on ``x``, one per round, after 5 warm-up forwards each.
    ``clock=time.thread_time``: CPU time of this thread, steadier on a busy machine (one torch thread only:
    it does not see the other intra-op threads). On a GPU (``x`` on CUDA) each reading first waits for the
    kernels, which run asynchronously."""
    def now() -> float:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return clock()

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            for _ in range(5):
                model(x)
        for _ in range(rounds):
            for name, model in models.items():
                start = now()
                model(x)
                times[name].append((now() - start) * 1000)
    return times
