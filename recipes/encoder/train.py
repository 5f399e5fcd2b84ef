"""Encoder (BERT-style) byte-level masked language model on fa2dist's bidirectional attention.

    python recipes/encoder/train.py fit --config recipes/encoder/configs/tiny.yaml

15% of the bytes of each window become targets (80% of them replaced by a mask token, 10% by a random byte, 10%
kept); the model predicts them from both sides. The tiny config runs on a CPU in a couple of minutes, ``small.yaml``
on one GPU. The same switches as the GPT recipe apply:

    python -m recipes.encoder.train fit --config recipes/encoder/configs/tiny.yaml --model.attention sdpa
    python recipes/encoder/train.py fit --config recipes/encoder/configs/tiny.yaml --ckpt_path last
    python recipes/encoder/train.py fit --help

Outputs go to ``trainer.default_root_dir`` (``runs/encoder-tiny`` for the tiny config).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch import LightningModule  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy  # noqa: E402
from torchmetrics.text import Perplexity  # noqa: E402

from recipes.common import (  # noqa: E402
    ByteTokenizer,
    CompiledTraining,
    MaskedLMDataModule,
    RecipeCLI,
    Transformer,
    configure_adamw,
)
from recipes.common.data import IGNORE_INDEX  # noqa: E402


class MaskedLM(LightningModule):
    """A bidirectional transformer predicting masked bytes; the loss counts the masked positions only.

    Args:
        block_size: window length in bytes; set through ``--data.block_size``.
        embed_dim: model width, a multiple of ``num_heads``.
        num_layers: transformer blocks.
        num_heads: query heads; the head dim is ``embed_dim // num_heads``.
        num_kv_heads: key/value heads for grouped-query attention; null means ``num_heads``.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        dropout: dropout after the attention and MLP projections.
        attention: "fa2dist" (fa2dist's kernels; a PyTorch path on CPU) or "sdpa" (torch's
            scaled_dot_product_attention, the same parameters) for comparisons.
        deterministic: fa2dist's backward mode: true (bitwise reproducible), false (sequence-parallel, faster) or
            null (follow ``fa2dist.set_deterministic``, ``FA2DIST_DETERMINISTIC`` or ``Trainer(deterministic=)``).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay on matrices and embeddings.
        betas: AdamW betas.
        warmup_steps: steps of linear learning-rate warm-up; a cosine decay follows until the last step.
        min_lr_ratio: final learning rate over the peak.
        compile: train through ``torch.compile`` with this mode: "default", "reduce-overhead" (forward and backward
            replayed from CUDA graphs: for short sequences, where launching kernels costs more than running them),
            "max-autotune" or "max-autotune-no-cudagraphs"; null trains eagerly. Validation stays eager.
    """

    def __init__(
        self,
        block_size: int = 128,
        embed_dim: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention: str = "fa2dist",
        deterministic: bool | None = None,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 30,
        min_lr_ratio: float = 0.1,
        compile: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = ByteTokenizer()
        self.model = Transformer(
            vocab_size=self.tokenizer.vocab_size,
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            mlp_ratio=mlp_ratio,
            causal=False,
            dropout=dropout,
            attention=attention,
            deterministic=deterministic,
        )
        # A plain attribute (CompiledTraining is no nn.Module): checkpoints keep the model's own parameter names.
        self.train_forward = CompiledTraining(self.model, compile)
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_acc = MulticlassAccuracy(
            num_classes=self.tokenizer.vocab_size, average="micro", ignore_index=IGNORE_INDEX
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, seqlen) with masks -> logits (batch, seqlen, vocab)."""
        return self.model(tokens)

    def on_fit_start(self) -> None:
        self.train_forward.check(self.trainer)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        logits = self.train_forward(inputs).float()  # the loss in fp32 under mixed precision
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self.model(inputs).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        self.val_ppl(logits, targets)
        self.val_acc(logits.argmax(-1), targets)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", self.val_ppl, prog_bar=True)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return configure_adamw(
            self.model,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            betas=tuple(hp.betas),
            warmup_steps=hp.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_lr_ratio=hp.min_lr_ratio,
        )


def main(args: list[str] | None = None) -> RecipeCLI:
    return RecipeCLI(MaskedLM, MaskedLMDataModule, args=args)


if __name__ == "__main__":
    main()
