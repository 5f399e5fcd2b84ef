"""Bitwise reproducibility of Lightning training on fa2dist attention in deterministic mode.

Each training run is ``tests/repro_train.py`` in its own process (Lightning's DDP launcher starts the other ranks by
running that script again), with ``Trainer(deterministic=True)`` turning fa2dist's switch on. The tests compare every
parameter's gradient after every step, and the final weights, with ``torch.equal``:

- two DDP runs (2 processes, gloo) on the CPU, PyTorch path;
- two DDP runs with ``TRITON_INTERPRET=1``, so the Triton kernels' deterministic backward is what is compared;
- a run stopped after one epoch and resumed from its checkpoint against the uninterrupted run;
- on a GPU (``-m gpu``): two runs on one GPU, two DDP runs over NCCL if 2 GPUs are visible, and a report of what the
  sequence-parallel mode gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import child_environment

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "repro_train.py"

pytestmark = pytest.mark.slow


def train(out: Path, *args: str, devices: int = 2, env: dict[str, str] | None = None) -> list[dict]:
    """Run repro_train.py into ``out`` and return each rank's record."""
    child_env = child_environment()
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    child_env.update(env or {})
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--devices", str(devices), *args]
    proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=600, cwd=out.parent)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(devices)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def differences(
    a: list[dict], b: list[dict], steps: list[int] | None = None, weights: bool = True
) -> list[tuple[str, float]]:
    """Every gradient (per rank, step and parameter) and final weight of ``a`` that is not bitwise equal to ``b``'s,
    with its largest absolute difference; empty when the runs are bitwise equal."""
    found = []
    for rank, (ra, rb) in enumerate(zip(a, b, strict=True)):
        for step in steps if steps is not None else sorted(ra["grads"]):
            if step not in ra["grads"] or step not in rb["grads"]:
                found.append((f"rank {rank} step {step}: recorded in one run only", float("inf")))
                continue
            ga, gb = ra["grads"][step], rb["grads"][step]
            if ga.keys() != gb.keys():
                found.append((f"rank {rank} step {step}: different parameters have gradients", float("inf")))
            for name in sorted(ga.keys() & gb.keys()):
                if not torch.equal(ga[name], gb[name]):
                    found.append((f"rank {rank} step {step} grad {name}", _max_diff(ga[name], gb[name])))
        for name, wa in ra["weights"].items() if weights else ():
            if not torch.equal(wa, rb["weights"][name]):
                found.append((f"rank {rank} final weight {name}", _max_diff(wa, rb["weights"][name])))
    return found


def assert_bitwise_equal(a: list[dict], b: list[dict], steps: list[int] | None = None, weights: bool = True) -> None:
    found = differences(a, b, steps, weights)
    lines = [f"{where}: max |diff| {diff:.3e}" for where, diff in found[:40]]
    assert not found, f"{len(found)} tensors differ between the runs:\n" + "\n".join(lines)


def assert_sane(run: list[dict], world_size: int, steps: int, interpret: bool) -> None:
    for rank, record in enumerate(run):
        assert record["world_size"] == world_size
        assert record["global_step"] == steps
        assert record["deterministic"], f"rank {rank}: fa2dist's switch was off ({record['deterministic_source']})"
        assert record["deterministic_source"] == "torch.use_deterministic_algorithms(True)"
        assert record["uses_kernels"] == interpret
        # Under the interpreter every backward ran the deterministic kernels; on the PyTorch path none ran.
        assert record["backward_modes"] == ([True] if interpret else [])
    # DDP averages the gradients, so every rank must hold the same ones before the optimizer step.
    for step in run[0]["grads"]:
        for name, grad in run[0]["grads"][step].items():
            assert torch.equal(grad, run[1]["grads"][step][name]), f"ranks disagree at step {step} on {name}"


STEPS = 6  # 12 samples / (batch 2 x 2 ranks) = 3 steps per epoch, 2 epochs


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> list[dict]:
    """An uninterrupted 2-epoch DDP run on the PyTorch path."""
    run = train(tmp_path_factory.mktemp("baseline") / "run", "--epochs", "2")
    assert_sane(run, world_size=2, steps=STEPS, interpret=False)
    return run


def test_ddp_cpu_runs_are_bitwise_equal(baseline, tmp_path):
    again = train(tmp_path / "run", "--epochs", "2")
    assert sorted(again[0]["grads"]) == list(range(STEPS))
    assert_bitwise_equal(baseline, again)


def test_resume_from_checkpoint_matches_uninterrupted_run(baseline, tmp_path):
    first = train(tmp_path / "first", "--epochs", "1", "--save-checkpoint")
    assert sorted(first[0]["grads"]) == [0, 1, 2]
    assert_bitwise_equal(baseline, first, steps=[0, 1, 2], weights=False)
    resumed = train(tmp_path / "resumed", "--epochs", "2", "--resume", str(tmp_path / "first" / "last.ckpt"))
    assert sorted(resumed[0]["grads"]) == [3, 4, 5], "the resumed run must continue at step 3"
    assert_sane(resumed, world_size=2, steps=STEPS, interpret=False)
    assert_bitwise_equal(baseline, resumed, steps=[3, 4, 5])


def test_ddp_cpu_triton_interpreter_runs_are_bitwise_equal(baseline, tmp_path):
    """Both runs execute fa2dist's Triton kernels (forward and deterministic backward) in Triton's interpreter."""
    env = {"TRITON_INTERPRET": "1"}
    # One epoch (3 steps): the interpreter runs each kernel program in Python.
    first = train(tmp_path / "first", "--epochs", "1", env=env)
    second = train(tmp_path / "second", "--epochs", "1", env=env)
    assert_sane(first, world_size=2, steps=STEPS // 2, interpret=True)
    assert_bitwise_equal(first, second)
    # The kernels and the PyTorch path agree to rounding, and are not the same arithmetic.
    steps = sorted(first[0]["grads"])
    for step in steps:
        torch.testing.assert_close(first[0]["losses"][step], baseline[0]["losses"][step], rtol=1e-4, atol=1e-5)
    # This also shows the comparison can fail: the two arithmetics must be told apart.
    found = differences(baseline, first, steps=steps, weights=False)
    assert found and all(diff < 1e-3 for _, diff in found), found


def test_ddp_cpu_attention_dropout_in_the_kernels_is_bitwise_repeatable(tmp_path):
    """Attention dropout inside the Triton kernels (interpreted): the masks come from the seeded generator, so two
    2-rank DDP runs are bitwise equal at every step, and differ from a run without dropout."""
    env = {"TRITON_INTERPRET": "1"}
    first = train(tmp_path / "first", "--epochs", "1", "--attn-dropout", "0.2", env=env)
    second = train(tmp_path / "second", "--epochs", "1", "--attn-dropout", "0.2", env=env)
    assert_sane(first, world_size=2, steps=STEPS // 2, interpret=True)
    assert_bitwise_equal(first, second)
    no_dropout = train(tmp_path / "none", "--epochs", "1", env=env)
    assert differences(first, no_dropout, weights=False), "the dropout must change the gradients"


# --- GPU ---------------------------------------------------------------------------------------------------------

# Long enough for several key blocks per query row (the sequence-parallel mode's atomic dQ adds then race), small
# enough to take seconds.
GPU_ARGS = (
    "--accelerator",
    "gpu",
    "--precision",
    "bf16-mixed",
    "--seqlen",
    "1024",
    "--dim",
    "256",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--vocab",
    "512",
    "--samples",
    "32",
    "--batch",
    "4",
    "--epochs",
    "1",
)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_reproducibility_and_sequence_parallel_report(tmp_path):
    from fa2dist.diagnostics import check_determinism, format_report

    steps = 32 // 4  # one epoch on one GPU
    one = [train(tmp_path / f"gpu1_{i}", *GPU_ARGS, devices=1) for i in range(2)]
    for record in one[0]:
        assert record["deterministic"] and record["uses_kernels"] and record["backward_modes"] == [True]
        assert record["global_step"] == steps
    assert_bitwise_equal(one[0], one[1])

    if torch.cuda.device_count() >= 2:
        two = [train(tmp_path / f"gpu2_{i}", *GPU_ARGS, devices=2) for i in range(2)]
        assert two[0][0]["world_size"] == 2
        assert_bitwise_equal(two[0], two[1])
        print(f"2 GPUs, NCCL: 2 DDP runs bitwise equal over {two[0][0]['global_step']} steps")
    else:
        print("1 GPU visible: the NCCL comparison was not run")

    # Sequence-parallel mode: the environment outranks Trainer(deterministic=True) for fa2dist only, so everything
    # but the attention backward stays deterministic and any difference comes from the atomic dQ accumulation.
    runs = 4
    seq = [train(tmp_path / f"seq_{i}", *GPU_ARGS, devices=1, env={"FA2DIST_DETERMINISTIC": "0"}) for i in range(runs)]
    assert seq[0][0]["backward_modes"] == [False]
    differing = [differences(seq[0], other) for other in seq[1:]]
    largest = max((diff for found in differing for _, diff in found), default=0.0)
    print(
        f"sequence-parallel training, 1 GPU ({torch.cuda.get_device_name()}): {sum(bool(d) for d in differing)} of "
        f"{runs - 1} repeated runs differ from the first; largest difference {largest:.3e}; "
        f"tensors differing per run: {[len(d) for d in differing]}"
    )
    report = check_determinism(runs=10)
    print(format_report(report))
    assert report.passed, format_report(report)
