"""slurm/ against a real Slurm 22.05 on this host: a simulated mixed cluster of two nodes, n1 (feature `turing`, one
fake T4) and n2 (feature `ampere`, one fake A100), each a slurmd of its own (tests/slurm_cluster.py).

The jobs run in CPU mode (ACCELERATOR=cpu: DDP over gloo, one rank per node) but ask for the nodes' GPUs, so Slurm
schedules them as it would on the real cluster. Job end states are read from the jobcomp file Slurm writes, not
from sbatch's exit code alone (a job cancelled while pending exits sbatch with 0).

Run as root after `bash tests/slurm_setup.sh`:  python -m pytest tests/test_slurm.py -m slurm
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import JobEnd, LocalSlurm, Node, missing_requirements  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

NODES = [Node("n1", features="turing", gpu_type="t4"), Node("n2", features="ampere", gpu_type="a100")]
#: One task, one (fake) GPU and one CPU on each node; every job here uses the cluster's two nodes.
RESOURCES = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"]
#: The tiny GPT recipe, shrunk further so a 2-rank CPU job takes seconds per step.
GPT = {"RECIPE": "recipes/gpt/train.py", "CONFIG": "recipes/gpt/configs/tiny.yaml"}
GPT_ARGS = (
    "--trainer.max_steps 4 --trainer.val_check_interval 4 --trainer.limit_val_batches 1 --model.warmup_steps 1 "
    "--model.embed_dim 32 --model.num_layers 1 --model.num_heads 2 "
    "--data.block_size 32 --data.batch_size 4 --data.max_bytes 50000"
).split()
#: For the requeue test, a stand-in with the recipe's command line whose batches depend on the step only, so a run
#: resumed from a mid-epoch checkpoint sees the batches the uninterrupted run saw (the recipe's shuffled loader does
#: not restore its position). Rank 1 sleeps in every step, like a slower GPU in a mixed job: rank 0 then spends the
#: step waiting inside the gradient all-reduce, which is where Lightning's own SIGUSR1 handler deadlocks DDP.
STAND_IN = {"RECIPE": "tests/slurm_dummy_train.py", "CONFIG": "none"}
STAND_IN_ARGS = ["--trainer.max_steps", "30", "--model.step_seconds", "0.15", "--model.slow_rank", "1"]


def _node_names_resolve() -> str | None:
    for node in NODES:
        try:
            if socket.gethostbyname(node.name) != "127.0.0.1":
                return f"{node.name} does not resolve to 127.0.0.1; run `bash tests/slurm_setup.sh` as root"
        except OSError:
            return f"{node.name} does not resolve; run `bash tests/slurm_setup.sh` as root (adds it to /etc/hosts)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LocalSlurm:
    reason = missing_requirements() or _node_names_resolve()
    if reason:
        pytest.skip(f"local Slurm unavailable: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), NODES)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


def submit(
    cluster: LocalSlurm,
    jobs_dir: Path,
    run_name: str,
    workload: dict[str, str],
    recipe_args: list[str],
    script: str = "slurm/train.sh",
    sbatch_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> int:
    """Submit ``script`` in CPU mode from the repository root; the job works in ``jobs_dir``. Returns the job id."""
    job_env = {
        "ACCELERATOR": "cpu",
        "PYTHON": sys.executable,
        "RUN_DIR": run_name,
        "OMP_NUM_THREADS": "1",
        **workload,
        **(env or {}),
    }
    args = [
        *RESOURCES,
        f"--job-name={run_name}",
        f"--chdir={jobs_dir}",
        f"--output={jobs_dir}/%x-%j.out",
        *(sbatch_args or []),
        *(["--wait"] if wait else []),
        script,
        *recipe_args,
    ]
    proc = cluster.sbatch(args, env=job_env, cwd=REPO, timeout=300)
    job_id = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    assert job_id.isdigit(), f"sbatch {' '.join(args)} gave no job id (exit {proc.returncode}):\n{proc.stderr}"
    if wait:
        assert proc.returncode == 0, f"job {job_id} exited {proc.returncode}:\n{job_log(jobs_dir, run_name, job_id)}"
    return int(job_id)


def job_log(jobs_dir: Path, run_name: str, job_id: int | str) -> str:
    path = jobs_dir / f"{run_name}-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no output file {path})"


def rank_nodes(log: str) -> dict[int, tuple[str, str]]:
    """{rank: (node, features)} from the per-rank lines slurm/train.sh prints before training."""
    found = re.findall(r"^rank (\d+)/\d+ node=(\S+) local_rank=\d+ ActiveFeatures=(\S+)", log, flags=re.M)
    return {int(rank): (node, features) for rank, node, features in found}


def assert_completed(end: JobEnd, log: str) -> None:
    assert end.state == "COMPLETED", f"job {end.job_id} ended {end.state} ({end.exit_code}):\n{log}"
    assert end.exit_code == "0:0", f"job {end.job_id} exit code {end.exit_code}:\n{log}"


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    assert path.exists(), f"no final weights at {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_sh_runs_ddp_with_one_rank_on_each_node(cluster: LocalSlurm, jobs_dir: Path) -> None:
    job_id = submit(cluster, jobs_dir, "ddp", GPT, GPT_ARGS, env={"FA2DIST_DETERMINISTIC": "1"})
    log = job_log(jobs_dir, "ddp", job_id)
    end = cluster.job_end(job_id)
    assert_completed(end, log)
    assert end.node_list == "n[1-2]", end
    assert rank_nodes(log) == {0: ("n1", "turing"), 1: ("n2", "ampere")}, log
    # Lightning took ranks, world size and the gloo backend from Slurm's environment, and trained to the end.
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log, log
    assert "SLURM auto-requeueing enabled" in log and "StepBoundaryRequeue: signal SIGUSR1" in log, log
    # The switch exported at submission reached both ranks (the recipe's per-rank table says where it came from).
    assert "FA2DIST_DETERMINISTIC=1" in log, log
    assert log.count("True (environment FA2DIST_DETERMINISTIC)") == 2, log
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in log, log


def test_mixed_script_puts_one_rank_on_each_feature(cluster: LocalSlurm, jobs_dir: Path) -> None:
    job_id = submit(cluster, jobs_dir, "mixed", GPT, GPT_ARGS, script="slurm/train_mixed.sh")
    log = job_log(jobs_dir, "mixed", job_id)
    end = cluster.job_end(job_id)
    assert_completed(end, log)
    assert "Features=[turing*1&ampere*1]" in log, log
    ranks = rank_nodes(log)
    assert sorted(ranks) == [0, 1], log
    assert {features for _, features in ranks.values()} == {"turing", "ampere"}, log
    assert {node for node, _ in ranks.values()} == {"n1", "n2"} and end.node_list == "n[1-2]", log
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in log, log


def test_sigusr1_requeues_resumes_and_matches_uninterrupted_run(cluster: LocalSlurm, jobs_dir: Path) -> None:
    deterministic = {"FA2DIST_DETERMINISTIC": "1", "REPORT": "0"}
    reference_id = submit(cluster, jobs_dir, "reference", STAND_IN, STAND_IN_ARGS, env=deterministic)
    assert_completed(cluster.job_end(reference_id), job_log(jobs_dir, "reference", reference_id))

    job_id = submit(cluster, jobs_dir, "requeue", STAND_IN, STAND_IN_ARGS, env=deterministic, wait=False)
    log_path = jobs_dir / f"requeue-{job_id}.out"
    deadline = time.monotonic() + 180
    while not re.search(r"^step 10 ", log_path.read_text() if log_path.exists() else "", flags=re.M):
        ended = cluster.job_records(job_id)
        assert time.monotonic() < deadline and not ended, (
            f"job {job_id} did not reach step 10 ({ended}):\n{job_log(jobs_dir, 'requeue', job_id)}"
        )
        time.sleep(0.2)
    # What `#SBATCH --signal=SIGUSR1@90` does before the time limit: SIGUSR1 to the job's tasks, not its batch shell.
    cluster.signal(job_id, "USR1")
    end = cluster.job_end(job_id, timeout=300)
    log = job_log(jobs_dir, "requeue", job_id)
    assert_completed(end, log)
    # The first run ended in a requeue (Slurm records the job as pending again), the second completed.
    assert [r["JobState"] for r in end.records] == ["PENDING", "COMPLETED"], end.records
    assert "Requeued SLURM job" in log, log
    assert "(run 2)" in log and "resuming from requeue/hpc_ckpt_1.ckpt" in log, log
    assert "Restored all states from the checkpoint at requeue/hpc_ckpt_1.ckpt" in log, log
    resumed = load_weights(jobs_dir / "requeue" / "final_weights.pt")
    reference = load_weights(jobs_dir / "reference" / "final_weights.pt")
    assert resumed.keys() == reference.keys()
    unequal = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not unequal, f"weights differ from the uninterrupted run in {unequal}"


@pytest.mark.parametrize(
    ("sbatch_args", "message"),
    [
        (["--nodes=3"], "Node count specification invalid"),
        (["--constraint=volta"], "Invalid feature specification"),
        (["--constraint=[turing*2]"], "Requested node configuration is not available"),
        (["--gpus-per-node=a100:2"], "Requested node configuration is not available"),
    ],
    ids=["more-nodes-than-exist", "unknown-feature", "two-turing-nodes", "two-a100-per-node"],
)
def test_impossible_submission_is_refused(cluster: LocalSlurm, sbatch_args: list[str], message: str) -> None:
    proc = cluster.sbatch([*RESOURCES, *sbatch_args, "--output=/dev/null", "slurm/train.sh"], cwd=REPO)
    assert proc.returncode != 0, f"sbatch {sbatch_args} was accepted: job {proc.stdout}"
    assert f"Batch job submission failed: {message}" in proc.stderr, proc.stderr


def test_tasks_and_gpus_per_node_must_match_in_gpu_mode(cluster: LocalSlurm, jobs_dir: Path) -> None:
    # Two tasks on one node with one GPU: Lightning would start two ranks on one device. train.sh stops first.
    job_id = submit(
        cluster,
        jobs_dir,
        "mismatch",
        STAND_IN,
        STAND_IN_ARGS,
        sbatch_args=["--nodes=1", "--ntasks-per-node=2"],
        env={"ACCELERATOR": "gpu"},
        wait=False,
    )
    end = cluster.job_end(job_id, timeout=120)
    log = job_log(jobs_dir, "mismatch", job_id)
    assert end.state == "FAILED" and end.exit_code == "2:0", (end, log)
    assert "--ntasks-per-node=2 but --gpus-per-node=1" in log, log
    assert not rank_nodes(log), f"tasks were started:\n{log}"


def test_step_boundary_requeue_rejects_a_bad_interval() -> None:
    sys.path.insert(0, str(REPO))
    from slurm.requeue import StepBoundaryRequeue

    with pytest.raises(ValueError, match=r"check_every_n_steps=0"):
        StepBoundaryRequeue(check_every_n_steps=0)


def test_train_sh_outside_slurm_says_how_to_submit() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "not inside a Slurm job" in proc.stderr and "sbatch slurm/train.sh" in proc.stderr
