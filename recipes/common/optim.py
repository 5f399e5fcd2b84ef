"""AdamW with decoupled weight decay on matrices only, linear warm-up and cosine decay (per step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def configure_adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
) -> dict:
    """The ``configure_optimizers`` return value: AdamW and a per-step LambdaLR.

    Weight decay applies to parameters with two or more dimensions (matrices, embeddings), not to biases and norms.
    The rate rises linearly over ``warmup_steps``, then follows a cosine to ``min_lr_ratio * learning_rate`` at
    ``total_steps``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
