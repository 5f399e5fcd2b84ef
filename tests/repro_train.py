"""Train a tiny transformer on fa2dist attention with Lightning and save every step's gradients, for the
reproducibility tests (tests/test_reproducibility.py).

    python tests/repro_train.py --out /tmp/run1 --accelerator cpu --devices 2 --epochs 2

Each rank writes ``rank{N}.pt`` into ``--out``: the gradients of every parameter after each step (recorded in
``on_before_optimizer_step``, so after DDP's all-reduce), the final weights, the losses, the deterministic switch's
state and source, and which backward modes fa2dist's kernels ran in. ``--save-checkpoint`` writes a checkpoint when
training ends; ``--resume`` continues from one. Run as its own process so Lightning's DDP launcher can start the other
ranks by running this script again.
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as pl
except ImportError:  # machines with only the standalone pytorch-lightning package
    import pytorch_lightning as pl

import fa2dist
from fa2dist.determinism import resolve_deterministic
from fa2dist.ops import attention
from fa2dist.ops.attention import uses_kernels

# Record the mode of every backward the kernels run, so a test can tell which backward it compared. The autograd
# Function looks ``attn_bwd`` up in its module at call time, so replacing the module attribute is enough.
BACKWARD_MODES: list[bool] = []
_attn_bwd = attention.attn_bwd
_attn_bwd_signature = inspect.signature(_attn_bwd)


def _recording_attn_bwd(*args, **kwargs):
    BACKWARD_MODES.append(bool(_attn_bwd_signature.bind(*args, **kwargs).arguments["deterministic"]))
    return _attn_bwd(*args, **kwargs)


attention.attn_bwd = _recording_attn_bwd


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = fa2dist.MultiheadFlashAttention(
            dim, heads, num_kv_heads=kv_heads, causal=True, rotary=True, attn_dropout=attn_dropout
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(pl.LightningModule):
    """A causal language model: embedding, ``layers`` pre-norm blocks, tied-free output head; AdamW with warm-up."""

    def __init__(
        self, vocab: int, dim: int, heads: int, kv_heads: int, layers: int, lr: float, attn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, attn_dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.grads: dict[int, dict[str, torch.Tensor]] = {}
        self.losses: dict[int, torch.Tensor] = {}
        self.used_kernels: bool | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def on_train_start(self) -> None:
        # Read while training: when fit ends, Lightning moves the model back to the CPU.
        self.used_kernels = uses_kernels(self.device)

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        logits = self(tokens)
        # 2-D cross-entropy: the 3-D (N, C, L) form has no deterministic CUDA kernel.
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        self.losses[self.global_step] = loss.detach().cpu()
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.grads[self.global_step] = {
            name: p.grad.detach().float().cpu().clone() for name, p in self.named_parameters() if p.grad is not None
        }

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _data(samples: int, seqlen: int, vocab: int) -> TensorDataset:
    # A fixed dataset, independent of the training seed: every run sees the same tokens.
    g = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, vocab, (samples, seqlen + 1), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for rank{N}.pt (and the checkpoint)")
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    parser.add_argument("--devices", type=int, default=2, help="processes (DDP ranks)")
    parser.add_argument("--epochs", type=int, default=2, help="max_epochs")
    parser.add_argument(
        "--samples", type=int, default=12, help="dataset size (steps per epoch: samples / (batch*ranks))"
    )
    parser.add_argument("--batch", type=int, default=2, help="batch size per rank")
    parser.add_argument("--seqlen", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn-dropout", type=float, default=0.0, help="dropout on the attention weights")
    parser.add_argument(
        "--deterministic", choices=("true", "false", "warn"), default="true", help="Trainer(deterministic=...)"
    )
    parser.add_argument("--save-checkpoint", action="store_true", help="write OUT/last.ckpt when training ends")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    args = parser.parse_args()

    # One thread per rank: ranks share the cores, and a fixed thread count keeps CPU reductions in a fixed order.
    torch.set_num_threads(1)
    pl.seed_everything(args.seed, workers=True)
    deterministic = {"true": True, "false": False, "warn": "warn"}[args.deterministic]
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        precision=args.precision,
        deterministic=deterministic,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    model = TinyLM(args.vocab, args.dim, args.heads, args.kv_heads, args.layers, lr=3e-3, attn_dropout=args.attn_dropout)
    loader = DataLoader(_data(args.samples, args.seqlen, args.vocab), batch_size=args.batch, shuffle=True)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.fit(model, loader, ckpt_path=args.resume)

    if args.save_checkpoint:
        trainer.save_checkpoint(args.out / "last.ckpt")
    mode, source = resolve_deterministic(None)
    record = {
        "grads": model.grads,
        "losses": model.losses,
        "weights": {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "deterministic": mode,
        "deterministic_source": source,
        "uses_kernels": model.used_kernels,
        "backward_modes": sorted(set(BACKWARD_MODES)),
        "interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    torch.save(record, args.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
