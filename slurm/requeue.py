"""Slurm's requeue signal handled at a step boundary by every rank together (added by slurm/train.sh).

Lightning's own SIGUSR1 handler saves the checkpoint from inside the signal handler, wherever each rank happens to
be, and ``Trainer.save_checkpoint`` starts with a barrier. A Python signal handler runs only between bytecodes, so a
rank blocked in the gradient all-reduce runs it after the all-reduce returns, while a rank still computing its step
runs it at once: its barrier is then matched with the other rank's all-reduce and both wait forever. On this
project's test cluster (2 DDP ranks on CPU, Lightning 2.6.6) jobs signalled with Lightning's handler alone hung in
2 of 11 tries with ranks of equal speed and in 3 of 3 with one rank slower (as a T4 beside an A100 is); with this
callback, 0 of 9, each resuming bitwise equal to the uninterrupted run.

This callback keeps Lightning's path (the same ``hpc_ckpt_<n>.ckpt``, ``scontrol requeue`` and resume) but only notes
the signal in the handler; after the next optimizer step all ranks agree on it in one all-reduce and act on it
together.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override


class StepBoundaryRequeue(Callback):
    """Save Lightning's HPC checkpoint and requeue the Slurm job after the step in which the signal came.

    Active when Lightning detects a Slurm job with auto-requeue on (``SLURMEnvironment(auto_requeue=True)``, the
    default); the signal is the environment's ``requeue_signal`` (SIGUSR1 unless set otherwise), sent by
    ``#SBATCH --signal=SIGUSR1@<seconds>`` or ``scancel --signal=USR1 <job>``. Costs one all-reduce of one number per
    optimizer step.

    Args:
        check_every_n_steps: agree on the signal every this many optimizer steps; raise it if steps are very short
            and the all-reduce shows in profiles (the checkpoint then waits up to that many steps).

    Raises:
        ValueError: if ``check_every_n_steps`` is not a positive integer.

    Example::

        python recipes/gpt/train.py fit --config ... --trainer.callbacks+=slurm.requeue.StepBoundaryRequeue
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(
                f"`StepBoundaryRequeue(check_every_n_steps={check_every_n_steps!r})` must be a positive integer."
            )
        self.check_every_n_steps = check_every_n_steps
        self._signum: int | None = None
        self._received = False
        self._step_at_batch_start = 0

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received = True

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its handler just before training starts; this replaces it for the training loop (its
        # teardown restores the handlers it found when training ends).
        env = trainer.strategy.cluster_environment
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None):
            return
        if not hasattr(signal, "SIGUSR1"):  # Windows has no SIGUSR1; Lightning sets no handler there either
            return
        self._signum = int(env.requeue_signal)
        self._received = False
        signal.signal(self._signum, self._note_signal)
        rank_zero_info(
            f"StepBoundaryRequeue: signal {signal.Signals(self._signum).name} saves a checkpoint and requeues the job "
            "after the current optimizer step."
        )

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signum is None:
            return
        # Only after an optimizer step (not inside gradient accumulation); every rank takes the same decision here,
        # so the collective below is reached by all of them.
        stepped = trainer.global_step > self._step_at_batch_start
        if not stepped or trainer.global_step % self.check_every_n_steps:
            return
        if not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        self._received = False
        # Lightning's own requeue: finalize loggers, write <default_root_dir>/hpc_ckpt_<n>.ckpt (all ranks, with its
        # barrier), then `scontrol requeue` from rank 0. Slurm then stops the job and starts it again; on restart
        # Lightning finds the newest hpc_ckpt_<n>.ckpt and resumes from it.
        trainer._signal_connector._slurm_sigusr_handler_fn(self._signum, None)
