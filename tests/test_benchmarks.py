"""The benchmark script's CPU-side parts: the FLOP convention and writing its table into BENCHMARKS.md."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", os.path.join(ROOT, "benchmarks", "bench_attention.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_follow_the_fa2_convention(bench):
    forward = 4 * 2 * 16 * 1024**2 * 128
    assert bench.flops(2, 16, 1024, 128, False, "fwd") == forward
    assert bench.flops(2, 16, 1024, 128, True, "fwd") == forward / 2
    assert bench.flops(2, 16, 1024, 128, False, "bwd") == 2.5 * forward
    assert bench.flops(2, 16, 1024, 128, True, "fwdbwd") == 3.5 * forward / 2


def test_update_md_replaces_only_its_own_block(bench, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nCurated text.\n")
    bench.update_benchmarks_md("| first |\n", str(path))
    first = path.read_text()
    assert first.startswith("# Benchmarks\n\nCurated text.\n") and "| first |" in first
    path.write_text(first + "\nMore curated text after the table.\n")
    bench.update_benchmarks_md("| second |\n", str(path))
    second = path.read_text()
    assert "| first |" not in second and second.count("| second |") == 1
    assert second.count(bench.MD_BEGIN) == 1 and second.count(bench.MD_END) == 1
    assert second.startswith("# Benchmarks\n\nCurated text.\n") and second.endswith("More curated text after the table.\n")


def test_rounds_interleave_providers_and_keep_medians(bench, monkeypatch):
    calls = []
    times = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 4.0, 6.0])}

    def bench_one(provider, q, k, v, mode, warmup, rep, cuda_graphs):
        calls.append(provider)
        if provider == "bad":
            raise RuntimeError("shape refused")
        return next(times[provider])

    monkeypatch.setattr(bench, "make_provider", lambda name, causal: name)
    monkeypatch.setattr(bench, "bench_one", bench_one)
    monkeypatch.setattr(bench, "peak_memory", lambda provider, q, k, v: 2**20)
    args = bench.argparse.Namespace(rounds=3, warmup=1, rep=1, cuda_graphs=False)
    meta = {"dtype": "bf16", "head_dim": 64, "seqlen": 128, "batch": 2, "nheads": 4, "causal": False}
    rows = bench.time_shape(args, ["a", "bad", "b"], ["fwd"], None, None, None, meta)
    assert calls == ["a", "bad", "b", "b", "a", "a", "b"]  # reversed every other round; a refusal is not retried
    a, bad, b = rows
    assert a["fwd_ms"] == 2.0 and b["fwd_ms"] == 5.0 and a["peak_mem_mb"] == 1.0
    assert a["fwd_tflops"] == bench.flops(2, 4, 128, 64, False, "fwd") / 2.0 * 1e-9
    assert bad["error"] == "RuntimeError: shape refused" and "fwd_ms" not in bad


def test_ab_helpers_ratio_and_package_copy(tmp_path, monkeypatch):
    """The A/B helpers' per-round ratio (above 1: the first step is faster; the median over rounds, so one slow round
    does not move it) and their import of a package copy, which names a path without the copy."""
    spec = importlib.util.spec_from_file_location("ab", os.path.join(ROOT, "benchmarks", "ab.py"))
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    times = {"new": [1.0, 2.0, 1.0, 9.0], "old": [2.0, 2.0, 3.0, 1.0]}
    assert ab.median_ratio(times, "new", "old") == pytest.approx(1.5)  # ratios 2, 1, 3, 1/9
    assert ab.median_ratio(times, "old", "new") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no package 'fa2dist_old'"):
        ab.import_copy(str(tmp_path))
    package = tmp_path / "fa2dist_old"
    package.mkdir()
    (package / "__init__.py").write_text("VERSION = 'copy'\n")
    monkeypatch.setattr(sys, "path", sys.path[:])  # the copy's folder leaves the path again
    try:
        assert ab.import_copy(str(tmp_path)).VERSION == "copy"
    finally:
        sys.modules.pop("fa2dist_old", None)
