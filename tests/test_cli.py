"""``python -m fa2dist info`` and ``python -m fa2dist check-determinism`` (fa2dist/__main__.py, fa2dist/diagnostics.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fa2dist
from fa2dist import diagnostics
from fa2dist.__main__ import main
from fa2dist.diagnostics import AttentionShape, check_determinism

REPO = Path(__file__).resolve().parents[1]
TINY = ["--shapes", "1x33x2x16", "2x20x4x16/2", "--runs", "2"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fa2dist ...`` in a fresh process (TRITON_INTERPRET is read when fa2dist is imported)."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FA2DIST_DETERMINISTIC")}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fa2dist", *args], env=child_env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(autouse=True)
def clean_switch(monkeypatch):
    monkeypatch.delenv("FA2DIST_DETERMINISTIC", raising=False)
    fa2dist.set_deterministic(None)
    yield
    fa2dist.set_deterministic(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_info_on_cpu():
    proc = cli("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"torch {torch.__version__}" in out
    assert "triton " in out
    assert "GPUs: none" in out
    assert "CPU tensors: PyTorch path" in out
    assert "deterministic switch: off (sequence-parallel backward), from default" in out


def test_info_reports_the_switch_and_its_source():
    proc = cli("info", env={"FA2DIST_DETERMINISTIC": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "deterministic switch: on (deterministic backward), from environment FA2DIST_DETERMINISTIC" in proc.stdout


@pytest.mark.parametrize(("interpret", "path"), [("0", "pytorch"), ("1", "triton-interpreter")])
def test_info_json(interpret, path):
    proc = cli("info", "--json", env={"TRITON_INTERPRET": interpret})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["torch"] == torch.__version__
    assert info["cpu_path"] == path
    assert info["deterministic"] == {"enabled": False, "mode": "sequence-parallel", "source": "default"}
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_info_in_process_follows_the_switch(capsys):
    with fa2dist.deterministic(True):
        assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["deterministic"]["source"] == "fa2dist.deterministic() context"


def test_check_determinism_with_the_interpreter_passes():
    proc = cli("check-determinism", *TINY, "--json", env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["path"] == "triton-interpreter"
    assert report["config_family"] == "interpreter"
    assert report["passed"] is True
    # 2 shapes x 2 masks x 2 modes, each compared bitwise
    assert len(report["results"]) == 8
    assert {(r["shape"], r["causal"], r["mode"]) for r in report["results"]} == {
        (s, c, m) for s in ("1x33x2x16", "2x20x4x16/2") for c in (False, True) for m in diagnostics.MODES
    }
    assert all(r["bitwise_equal"] and r["runs"] == 2 for r in report["results"])


def test_check_determinism_text_output():
    proc = cli("check-determinism", *TINY, "--causal", "yes", "--dtype", "fp16", env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Triton kernels in Triton's interpreter" in proc.stdout
    assert "float16" in proc.stdout
    assert "PASS: deterministic mode bitwise equal across 2 runs in all 2 cases." in proc.stdout


def test_check_determinism_fails_when_runs_differ(monkeypatch, capsys):
    """Exit code 1 when the deterministic mode is not bitwise equal: here every run gets its own rounding noise."""
    real = diagnostics.flash_attention
    calls = iter(range(1000))

    def noisy(q, k, v, **kwargs):
        out = real(q, k, v, **kwargs)
        return out * (1 + 2.0**-20 * next(calls))

    monkeypatch.setattr(diagnostics, "flash_attention", noisy)
    assert (
        main(
            [
                "check-determinism",
                "--shapes",
                "1x16x1x16",
                "--runs",
                "3",
                "--dtype",
                "fp32",
                "--causal",
                "no",
                "--mode",
                "deterministic",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "FAIL: deterministic mode differed between runs in 1 of 1 cases" in out


def test_check_determinism_core_returns_structured_results():
    report = check_determinism(
        ["1x16x1x16", AttentionShape(1, 24, 2, 32, 1)],
        runs=2,
        dtype="fp32",
        device="cpu",
        causal=(True,),
        modes=("deterministic",),
    )
    assert report.device == "cpu"
    assert report.dtype == "float32"
    assert [(r.shape, r.causal, r.mode) for r in report.results] == [
        ("1x16x1x16", True, "deterministic"),
        ("1x24x2x32/1", True, "deterministic"),
    ]
    assert report.passed
    assert report.to_dict()["passed"] is True
    assert all(r.max_abs_diff == {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0} for r in report.results)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runs", "1"], "at least 2"),
        (["--shapes", "2x1024"], "BATCHxSEQLENxNHEADSxHEADDIM"),
        (["--shapes", "1x16x4x16/3"], "must divide"),
        (["--shapes", "1x16x1x512"], "head dim"),
        (["--dtype", "fp8"], "invalid choice"),
    ],
)
def test_check_determinism_bad_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["check-determinism", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_shape_parsing():
    assert AttentionShape.parse("2x1024x16x128/4") == AttentionShape(2, 1024, 16, 128, 4)
    assert str(AttentionShape.parse(" 1x97x2x32 ")) == "1x97x2x32"
    with pytest.raises(ValueError, match="e.g. 2x1024x16x128"):
        AttentionShape.parse("2,1024,16,128")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_check_determinism_on_gpu():
    report = check_determinism(runs=3)
    print(diagnostics.format_report(report))
    assert report.path == "triton"
    assert report.passed


def test_info_text_names_each_gpus_config_and_load_path():
    """The GPU part of `python -m fa2dist info`, from what _gpu_info gathers on an H100 and on a T4."""
    from fa2dist.configs import config_for_capability

    def gpu(index, name, capability, family):
        config = config_for_capability(capability)
        return dict(
            index=index, name=name, capability=f"{capability[0]}.{capability[1]}", sm_count=132,
            shared_memory_per_block=config.shared_memory_bytes or 232448, total_memory=80 * 2**30, supported=True,
            family=config.family, config_source=config.source, max_headdim=config.max_headdim, tma=config.tma,
            warp_specialize=config.warp_specialize, atomic_dq=config.atomic_dq, warnings=[],
            tiles=diagnostics._config_tiles(config, (64, 128)),
        )

    info = diagnostics.collect_info()
    info["gpus"] = [gpu(0, "NVIDIA H100 80GB HBM3", (9, 0), "hopper"), gpu(1, "Tesla T4", (7, 5), "turing")]
    text = diagnostics.format_info(info)
    assert "GPUs: 2" in text
    assert (
        "config: hopper (max head dim 256; tensor descriptors (TMA) where aligned; warp-specialised forward and dK/dV"
        " (Gluon) where they apply; sequence-parallel backward without atomics;"
    ) in text
    assert "config: turing (max head dim 256; pointer loads;" in text
    assert "     128  128x128 w8 s3" in text
