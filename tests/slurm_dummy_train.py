"""A small stand-in for a recipe, for tests of slurm/: same command line shape, tiny model, data that resumes exactly.

    python tests/slurm_dummy_train.py fit --trainer.max_steps 20 --trainer.default_root_dir runs/x

Each training batch is drawn from a generator seeded by (seed, global step, rank), so a run resumed from a checkpoint
sees the batches the uninterrupted run saw. At the end rank 0 writes ``<default_root_dir>/final_weights.pt`` (the
model's state dict) for bitwise comparisons between runs.
"""

from __future__ import annotations

import os
import time

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fa2dist


class _Steps(Dataset):
    """Indices only; the batch content is made in ``training_step`` from the global step."""

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> int:
        return index


class TinyAttentionModel(L.LightningModule):
    """One causal ``fa2dist.MultiheadFlashAttention`` block regressing a fixed random map.

    Args:
        embed_dim: model width.
        num_heads: attention heads.
        seq_len: tokens per sample.
        batch_size: samples per rank per step.
        lr: SGD learning rate.
        step_seconds: sleep this long per step, so a test can signal the job mid-training.
        slow_rank: only this rank sleeps (a slower GPU in a mixed job): the other ranks then wait inside the gradient
            all-reduce, where a signal handler cannot run until it returns. None: every rank sleeps.
        seed: seeds the weights and every batch.
    """

    def __init__(
        self,
        embed_dim: int = 32,
        num_heads: int = 2,
        seq_len: int = 16,
        batch_size: int = 4,
        lr: float = 0.05,
        step_seconds: float = 0.0,
        slow_rank: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.attn = fa2dist.MultiheadFlashAttention(embed_dim, num_heads, causal=True, rotary=True)
        self.head = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        g = torch.Generator().manual_seed(
            hp.seed * 1_000_003 + self.global_step * self.trainer.world_size + self.global_rank
        )
        x = torch.randn(hp.batch_size, hp.seq_len, hp.embed_dim, generator=g).to(self.device)
        loss = (self(x) - x.flip(-1)).pow(2).mean()
        self.log("train_loss", loss)
        if self.global_rank == 0:
            print(f"step {self.global_step} loss {loss.item():.6f}", flush=True)
        if hp.step_seconds and hp.slow_rank in (None, self.global_rank):
            time.sleep(hp.step_seconds)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=1)

    def on_fit_end(self) -> None:
        if self.global_rank == 0:
            os.makedirs(self.trainer.default_root_dir, exist_ok=True)
            path = os.path.join(self.trainer.default_root_dir, "final_weights.pt")
            torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, path)
            print(f"final weights at step {self.global_step}: {path}", flush=True)


if __name__ == "__main__":
    LightningCLI(
        TinyAttentionModel,
        trainer_defaults={"enable_progress_bar": False, "logger": False, "enable_checkpointing": False},
        save_config_callback=None,
    )
