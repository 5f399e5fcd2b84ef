"""Helpers for A/B timings on one GPU: what the scripts under ``benchmarks/results/`` share.

- ``warm_up``: matmuls until the GPU runs at its sustained-load clock (a cold GPU favours whichever provider runs
  first after a pause);
- ``interleaved``: every provider timed within each round, the order reversed every other round; each timing is
  CUDA-graph replays (``bench_attention._graph_ms``), or ``triton.testing.do_bench`` where a provider cannot be
  captured;
- ``replays_interleaved``: each provider's graph captured once, then short batches of replays alternating between
  providers: the sharpest A/B where every provider can be captured;
- ``import_copy``: a copy of the package under another name (``fa2dist_old``: the committed code before a change), so
  that both run in one process;
- ``environment``: the card and versions a result was measured with.

A script using them::

    times = ab.interleaved({"new": step_new, "old": step_old}, rounds=5)
    ratio = ab.median_ratio(times, "new", "old")  # > 1: "new" is faster
"""

from __future__ import annotations

import gc
import importlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
from bench_attention import _capture, _graph_ms  # noqa: E402


def warm_up(seconds: float = 10.0) -> None:
    """bf16 8k matmuls for ``seconds``: the GPU's clock settles where it stays under load."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        a @ a
    torch.cuda.synchronize()


def time_ms(step: Callable[[], object], rep_ms: float = 100.0, graphs: bool = True) -> float:
    """Milliseconds per ``step`` from CUDA-graph replays (where it cannot be captured, or without ``graphs``, timed
    eagerly: the median of ``triton.testing.do_bench``)."""
    if graphs:
        try:
            return _graph_ms(step, rep_ms)
        except RuntimeError:
            pass
    return triton.testing.do_bench(step, warmup=25, rep=rep_ms, return_mode="median")


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, rep_ms: float = 100.0,
                graphs: bool = True) -> dict[str, list[float]]:
    """Milliseconds of each step in each of ``rounds`` rounds: all steps in every round, the order reversed every
    other round (``time_ms``)."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(time_ms(steps[name], rep_ms, graphs))
            # Each capture's pool is freed: cached, it would be kept for that graph alone.
            gc.collect()
            torch.cuda.empty_cache()
    return times


def replays_interleaved(steps: dict[str, Callable[[], object]], rounds: int, batch_ms: float = 20.0
                        ) -> dict[str, list[float]]:
    """Milliseconds per replay of each step's CUDA graph in each of ``rounds`` rounds. The graphs are captured once;
    then each round replays every graph for about ``batch_ms`` in turn (the order reversed every other round), so
    that the steps alternate within a fraction of a second and run at the same clock, without the pauses of a
    capture between them."""
    graphs = {name: _capture(step) for name, step in steps.items()}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    counts = {}
    for name, graph in graphs.items():
        start.record()
        for _ in range(3):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        counts[name] = max(1, int(batch_ms / max(start.elapsed_time(end) / 3, 1e-3)))
    names = list(graphs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start.record()
            for _ in range(counts[name]):
                graphs[name].replay()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / counts[name])
    del graphs
    gc.collect()
    torch.cuda.empty_cache()
    return times


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of b's time over a's (above 1: ``a`` is faster). Per-round ratios cancel the clock's
    drift between rounds, which the ratio of medians does not."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def import_copy(path: str, name: str = "fa2dist_old"):
    """Imports the package copy ``path/name`` (the package with its name replaced in its imports)."""
    if not os.path.isdir(os.path.join(path, name)):
        raise ValueError(f"path: {path!r} has no package {name!r}; copy the package there under that name")
    sys.path.insert(0, path)
    return importlib.import_module(name)


def environment() -> dict:
    """The card, driver, versions and date a timing was taken with."""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        driver = None
    return {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d")}
