"""A real Slurm 22.05 cluster on this host, for tests of ``slurm/``: one slurmctld and one slurmd per simulated node.

Every node is a ``slurmd -D -N <name>`` with its own port on 127.0.0.1 (Slurm's ``SlurmdParameters=config_overrides``
lets one host pose as several), its own features and a fake GPU: a character device that gres.conf points to (Slurm
checks that the file exists and is a device; nothing opens it). munged runs on a private socket. Everything lives under
one directory; the daemons are started as children of the test process and stopped by their process ids.

Needs root (slurmd runs jobs as the submitting user and must own its spool) and the Debian packages installed by
tests/slurm_setup.sh.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")
#: Job states after which a job runs no more (REQUEUED is not one: the job is pending again).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root: slurmd runs jobs as their user and munged as the munge user"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"Slurm/munge binaries missing ({', '.join(missing)}); run `bash tests/slurm_setup.sh` as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no `munge` user; run `bash tests/slurm_setup.sh` as root"
    if not Path("/etc/munge/munge.key").is_file():
        return "no /etc/munge/munge.key; run `bash tests/slurm_setup.sh` as root"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Node:
    """A simulated node: its name (must resolve, e.g. via /etc/hosts), features and one GPU's GRES type."""

    name: str
    features: str
    gpu_type: str
    cpus: int = 2


@dataclass
class JobEnd:
    """A finished job as the jobcomp/filetxt plugin recorded it (its last record if the job was requeued)."""

    job_id: int
    state: str
    node_list: str
    exit_code: str
    records: list[dict[str, str]] = field(default_factory=list)


@dataclass
class LocalSlurm:
    """Writes the configuration under ``root``, starts munged, slurmctld and the slurmds, and stops them.

    Example::

        cluster = LocalSlurm(tmp, [Node("n1", "turing", "t4"), Node("n2", "ampere", "a100")])
        cluster.start()
        job = cluster.sbatch(["--wait", "slurm/train.sh"])
        cluster.job_end(job)
        cluster.stop()
    """

    root: Path
    nodes: Sequence[Node]
    partition: str = "debug"
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _munge_dir: Path | None = None

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.txt"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm commands aimed at this cluster (jobs inherit it through sbatch)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- configuration -------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged runs as the munge user and checks every directory above its socket: it must own the last one, and
        # reach it. pytest's temporary folders are private to root, so the socket lives in a folder of its own.
        if self._munge_dir is None:
            self._munge_dir = Path(tempfile.mkdtemp(prefix="fa2dist-munge-"))
            munge_pw = pwd.getpwnam("munge")
            os.chown(self._munge_dir, munge_pw.pw_uid, munge_pw.pw_gid)
            self._munge_dir.chmod(0o755)
        munge_dir = self._munge_dir
        gres_lines = ["AutoDetect=off"]
        node_lines = []
        for i, node in enumerate(self.nodes):
            device = self.root / "dev" / f"nvidia{i}"
            if not device.exists():
                # /dev/null's numbers (1, 3): Slurm only checks that a GPU's File= is a character device.
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
            gres_lines.append(f"NodeName={node.name} Name=gpu Type={node.gpu_type} File={device}")
            node_lines.append(
                f"NodeName={node.name} NodeAddr=127.0.0.1 NodeHostname={node.name} Port={_free_port()} "
                f"CPUs={node.cpus} RealMemory=2000 Features={node.features} Gres=gpu:{node.gpu_type}:1 State=UNKNOWN"
            )
        r = self.root
        lines = [
            "ClusterName=fa2dist",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it may start again (default 120 s).
            f"AuthInfo=socket={munge_dir / 'munge.socket'},cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No systemd and no cgroups here: track processes through /proc, bind nothing.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            # Job end states land in this file (there is no accounting database to ask).
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            # Heterogeneous jobs are started by the backfill scheduler only: run it every second. A requeued job waits
            # for the main scheduler (every 60 s by default): run that every 2 s.
            "SchedulerParameters=bf_interval=1,sched_interval=2",
            # Finished jobs leave slurmctld's memory after 5 s (the default, 300 s, slows `sbatch --wait`).
            "MinJobAge=5",
            # Refuse at submission a job no partition could ever run (more nodes than exist, ...).
            "EnforcePartLimits=ALL",
            "GresTypes=gpu",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "JobRequeue=1",
            # Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
            "KillWait=5",
            "MailProg=/bin/true",
            "MpiDefault=none",
            *node_lines,
            f"PartitionName={self.partition} Nodes={','.join(n.name for n in self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.root / "etc" / "gres.conf").write_text("\n".join(gres_lines) + "\n")

    # -- daemons -------------------------------------------------------------------------------------------------

    def _spawn(self, key: str, cmd: list[str], **kwargs) -> None:
        log = open(self.root / "log" / f"{key}.stdout", "ab")  # noqa: SIM115 - the daemon owns it until stop()
        self._procs[key] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, **kwargs
        )
        log.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and every slurmd, and wait until all nodes are idle."""
        self._write_config()
        munge_dir = self._munge_dir
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--socket={munge_dir / 'munge.socket'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            user="munge",
            group="munge",
        )
        self._wait(lambda: (munge_dir / "munge.socket").exists(), timeout, "munged to open its socket")
        # -i: ignore state saved by an earlier run in this directory.
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run(["scontrol", "ping"], check=False).returncode == 0, timeout, "slurmctld")
        for node in self.nodes:
            (self.root / "spool" / node.name).mkdir(parents=True, exist_ok=True)
            self._spawn(f"slurmd-{node.name}", [_which("slurmd"), "-D", "-N", node.name, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "all nodes to come up idle")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmds, slurmctld, munged) by their process ids."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", f"--partition={self.partition}"], check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        order = [k for k in self._procs if k.startswith("slurmd-")] + ["slurmctld", "munged"]
        for key in order:
            proc = self._procs.pop(key, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
            self._munge_dir = None

    def _all_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return len(states) == len(self.nodes) and all(s == "idle" for s in states.values())

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{key} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            if predicate():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- jobs ----------------------------------------------------------------------------------------------------

    def _run(self, cmd: list[str], check: bool = True, env: dict | None = None, timeout: float = 600, **kw):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env or self.env, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(
        self, args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run ``sbatch --parsable <args>``; ``env`` adds to the cluster's environment (jobs inherit it)."""
        return self._run(
            ["sbatch", "--parsable", *args], check=False, env={**self.env, **(env or {})}, cwd=cwd, timeout=timeout
        )

    def job_records(self, job_id: int) -> list[dict[str, str]]:
        """Every jobcomp record of a job, oldest first (a requeued job has one per run)."""
        if not self.jobcomp.exists():
            return []
        records = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("JobId") == str(job_id):
                records.append(fields)
        return records

    def job_end(self, job_id: int, timeout: float = 300) -> JobEnd:
        """Wait until the job has a final state in the jobcomp file and return it."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.job_records(job_id)
            if records and records[-1].get("JobState") in FINAL_STATES:
                last = records[-1]
                return JobEnd(job_id, last["JobState"], last.get("NodeList", ""), last.get("ExitCode", ""), records)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} has no final state after {timeout:.0f} s: {records}\n{self.logs()}")
            time.sleep(0.5)

    def job_field(self, job_id: int, name: str) -> str | None:
        """A field of ``scontrol show job`` while slurmctld still knows the job."""
        out = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False).stdout
        match = re.search(rf"\b{name}=(\S*)", out)
        return match.group(1) if match else None

    def signal(self, job_id: int, sig: str = "USR1") -> None:
        """Send ``sig`` to the job's steps (not the batch shell), as ``#SBATCH --signal=...`` without ``B:`` does."""
        self._run(["scancel", f"--signal={sig}", str(job_id)])
