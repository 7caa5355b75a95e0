"""What the live loss chart costs a training run: kdnb.train with the chart drawing its PNGs vs without.

Both runs have the progress bar, as a notebook user sees them. The chart renders and publishes
exactly as in a Jupyter kernel (an IPython shell whose display publisher keeps the outputs), so
the cost measured is Agg drawing + PNG encoding + publishing. Timed in one process, alternating
A/B, median over rounds; the time spent inside the chart's own event handlers is reported too, and
the longest wall-time gap between two frames (the chart promises one at least every second).
The chart draws its first frame at the run's first event, then a frame every max(0.5 s, cost / 4 %), at most
0.9 s apart, each repainting only the lines over a saved background (a full redraw only when an axis, a
legend or the layout changes), and a last frame when the run ends. ``--epochs`` sets the run's length
(60 digits epochs: about 3 s on an idle 2-core machine). On a loaded machine the A/B ratio swings; the
time inside the chart's handlers is the steadier number. Last line: the ratio chart / no chart
(goal <= 1.05).

    python bench/chart_overhead.py [--rounds 5] [--epochs 60] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import kdnb
from kdnb.widgets.live import LiveChart
import report  # bench/report.py: this script's folder is on sys.path


class Timed:
    """Forwards each event to the chart and adds up the time the chart takes to handle it."""

    def __init__(self, chart: LiveChart):
        self.chart, self.seconds, self.frames = chart, 0.0, []
        show = chart._show

        def shown(*args) -> None:  # when each frame was published
            show(*args)
            self.frames.append(time.perf_counter())

        chart._show = shown

    def __getattr__(self, event: str):
        handler = getattr(self.chart, event)

        def timed(state) -> None:
            start = time.perf_counter()
            handler(state)
            self.seconds += time.perf_counter() - start

        return timed


def run(model, data, val, epochs: int, chart: Timed | None) -> None:
    kdnb.train(model, data, val, epochs=epochs, seed=0, device="cpu", progress=True, plot=False,
               callbacks=[chart] if chart else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as on Binder; 2 threads on a shared 2-core machine swing 20x)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    InteractiveShell.instance()
    data, val = kdnb.datasets.load("digits", batch_size=32, seed=0)
    make = lambda: kdnb.models.lenet_300_100(64, 10)  # noqa: E731
    times: dict[str, list[float]] = {"no chart": [], "chart": []}
    redraws, inside, gaps = [], [], []
    sys.stderr = open(os.devnull, "w")  # the progress bar draws to stderr; keep the report readable
    for round_ in range(args.rounds + 1):  # round 0 warms up both (matplotlib's first import and fonts)
        for name in (("no chart", "chart") if round_ % 2 else ("chart", "no chart")):
            torch.manual_seed(0)
            model = make()
            chart = Timed(LiveChart(image=True)) if name == "chart" else None
            with capture_output() as captured:
                start = time.perf_counter()
                run(model, data, val, args.epochs, chart)
                elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed)
                if chart:
                    redraws.append(chart.chart.redraws)
                    inside.append(chart.seconds / elapsed)
                    gaps.append(max(b - a for a, b in zip([start, *chart.frames], chart.frames)))
                    assert len(captured.outputs) == chart.chart.redraws  # one display, then updates of it
    sys.stderr = sys.__stderr__
    steps = args.epochs * len(data)
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:9s} median {median * 1000:8.1f} ms for {steps} steps ({median / steps * 1e6:6.0f} us/step)")
    print(f"redraws per run with the chart: {redraws}")
    print(f"time inside the chart's event handlers: median {100 * statistics.median(inside):.2f} % of the run "
          f"(the cost itself, less sensitive to a busy machine than the A/B ratio)")
    print(f"longest wait for a frame (from the start, then between frames): max {max(gaps):.2f} s, "
          f"median {statistics.median(gaps):.2f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratio = statistics.median(times["chart"]) / statistics.median(times["no chart"])
    print(f"ratio chart / no chart: {ratio:.3f}")


if __name__ == "__main__":
    report.run(main)
