"""Train a small causal transformer on fa2dist attention with Lightning, for the GPU training tests
(tests/test_gpu_training.py).

    python tests/gpu_train_script.py --out /tmp/uniform --devices 2 --deterministic
    python tests/gpu_train_script.py --out /tmp/mixed --devices 2 --deterministic --arch-per-rank turing,hopper
    python tests/gpu_train_script.py --out /tmp/cpu --accelerator cpu --devices 2 --arch-per-rank turing,hopper \
        --steps 4 --seqlen 32 --dim 32 --layers 2 --heads 2 --batch 2

``--arch-per-rank`` sets ``FA2DIST_ARCH`` in each rank's process from its ``LOCAL_RANK`` before any kernel config is
looked up, so one machine of identical GPUs stands in for a cluster of different ones. On the CPU the PyTorch path
runs and the variable has no effect, but it is still set and recorded.

Each rank writes into ``--out``: ``rank{N}.json`` (its losses, its ``FA2DIST_ARCH``, the callback's per-rank table,
the deterministic mode, timings) and ``state_rank{N}.pt`` (its final weights); rank 0 also writes the table alone as
``rank_table.json``. The data are synthetic sequences from
a seeded generator; nothing is downloaded. Run as its own process: Lightning's DDP launcher starts the other ranks by
running this script again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `recipes` is importable from the repository root
    sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from fa2dist.configs import ENV_ARCH, FAMILIES  # noqa: E402
from fa2dist.lightning import FlashAttentionCallback, format_rank_table  # noqa: E402
from fa2dist.ops.attention import uses_kernels  # noqa: E402
from recipes.common import Transformer, configure_adamw  # noqa: E402


class SmallLM(pl.LightningModule):
    """The recipes' transformer (fa2dist's MultiheadFlashAttention blocks) as a next-token model; records every
    step's loss on this rank."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, lr: float, steps: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Transformer(vocab, embed_dim=dim, num_layers=layers, num_heads=heads, attention="fa2dist")
        self.losses: list[torch.Tensor] = []
        self.used_kernels: bool | None = None

    def on_train_start(self) -> None:
        # Read while training: when fit ends, Lightning moves the model back to the CPU.
        self.used_kernels = uses_kernels(self.device)

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        logits = self.model(tokens).float()
        # The 2-D form: 3-D (N, C, L) cross-entropy has no deterministic CUDA kernel.
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return configure_adamw(
            self.model,
            learning_rate=hp.lr,
            weight_decay=0.1,
            betas=(0.9, 0.95),
            warmup_steps=max(hp.steps // 6, 1),
            total_steps=hp.steps,
        )


def sequences(n: int, seqlen: int, vocab: int, seed: int = 1234) -> TensorDataset:
    """Token i of a sequence is (start + i * stride) mod vocab, stride in 1..8: the next token follows from the
    current one and the stride, which the model reads off earlier tokens through attention. The same data for every
    run, whatever the training seed."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(vocab, (n, 1), generator=g)
    stride = torch.randint(1, 9, (n, 1), generator=g)
    tokens = (start + stride * torch.arange(seqlen + 1)) % vocab
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def set_arch_for_this_rank(arch_per_rank: str | None, devices: int) -> str | None:
    """Set ``FA2DIST_ARCH`` from this process's ``LOCAL_RANK`` (0 in the process that starts the job) and return it.

    The launcher copies rank 0's environment into the other ranks, so each rank sets the variable again here (or
    removes it for an empty entry) rather than trusting what it inherited.
    """
    if arch_per_rank is None:
        return os.environ.get(ENV_ARCH)
    archs = [a.strip().lower() for a in arch_per_rank.split(",")]
    if len(archs) != devices:
        raise SystemExit(f"--arch-per-rank {arch_per_rank!r} names {len(archs)} families for --devices {devices}.")
    unknown = [a for a in archs if a and a not in FAMILIES]
    if unknown:
        raise SystemExit(f"--arch-per-rank: unknown families {unknown}; use {', '.join(FAMILIES)} (or empty).")
    arch = archs[int(os.environ.get("LOCAL_RANK", "0"))]
    if arch:
        os.environ[ENV_ARCH] = arch
    else:
        os.environ.pop(ENV_ARCH, None)
    return arch or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for rank{N}.json and state_rank{N}.pt")
    parser.add_argument("--accelerator", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--devices", type=int, default=2, help="processes (DDP ranks when > 1)")
    parser.add_argument("--arch-per-rank", default=None, help="FA2DIST_ARCH per local rank, e.g. turing,hopper")
    parser.add_argument("--deterministic", action="store_true", help="Trainer(deterministic=True)")
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning precision")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (one epoch of the data)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per rank and step")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    # 1.5e-3 gives a smooth curve (5.6 -> ~2.7 in 30 steps); at 3e-3 the loss spikes around step 8, and the spike
    # amplifies rounding differences between runs about 30-fold (measured on a CPU: see test_gpu_training.py).
    parser.add_argument("--lr", type=float, default=1.5e-3, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # First, before anything looks a kernel config up.
    arch = set_arch_for_this_rank(args.arch_per_rank, args.devices)
    if args.accelerator == "cpu":
        # Ranks share the cores; a fixed thread count also keeps CPU reductions in a fixed order.
        torch.set_num_threads(1)

    started = time.perf_counter()
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = SmallLM(args.vocab, args.dim, args.layers, args.heads, args.lr, args.steps)
    data = sequences(args.steps * args.batch * args.devices, args.seqlen, args.vocab)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    callback = FlashAttentionCallback(warmup=True, warmup_seqlen=args.seqlen)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        max_steps=args.steps,
        deterministic=args.deterministic,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    fit_start = time.perf_counter()
    trainer.fit(model, loader)
    fit_s = time.perf_counter() - fit_start

    rank = trainer.global_rank
    row = callback.rank_table[rank]
    losses = torch.stack(model.losses).float().cpu().tolist() if model.losses else []
    record = {
        "rank": rank,
        "local_rank": trainer.local_rank,
        "world_size": trainer.world_size,
        "fa2dist_arch": arch,
        "fa2dist_arch_env": os.environ.get(ENV_ARCH),
        "family": row["family"],
        "device": row["device"],
        "gpu": row["gpu"],
        "uses_kernels": model.used_kernels,
        "deterministic": callback.deterministic_mode,
        "deterministic_source": row["deterministic_source"],
        "precision": str(trainer.precision),
        "global_step": trainer.global_step,
        "losses": losses,
        "warmup_s": callback.warmup_time_s,
        "fit_s": fit_s,
        "total_s": time.perf_counter() - started,
        "rank_table": callback.rank_table,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.out / f"state_rank{rank}.pt")
    (args.out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))

    # One write per line: the ranks share the terminal (or the test's pipe).
    sys.stdout.write(
        f"rank {rank}: {ENV_ARCH}={record['fa2dist_arch_env']} family={row['family']} device={row['device']} "
        f"kernels={model.used_kernels} loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps, "
        f"fit {fit_s:.1f} s (warm-up {callback.warmup_time_s or 0:.1f} s)\n"
    )
    sys.stdout.flush()
    if trainer.is_global_zero:
        (args.out / "rank_table.json").write_text(json.dumps(callback.rank_table, indent=1))
        print(f"per-rank table ({args.out / 'rank_table.json'}):\n{format_rank_table(callback.rank_table)}", flush=True)


if __name__ == "__main__":
    main()
