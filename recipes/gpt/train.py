"""Decoder-only (GPT) byte-level language model on fa2dist's attention.

    python recipes/gpt/train.py fit --config recipes/gpt/configs/tiny.yaml

The tiny config trains on a 2-core CPU in about two minutes, on Python's standard-library source (no download), and
prints the validation perplexity against the unigram baseline and a generated sample. Other configs: ``small.yaml``
and ``medium.yaml`` (one GPU), ``multinode.yaml`` (several nodes; launch one task per GPU with ``srun``).

    python -m recipes.gpt.train fit --config recipes/gpt/configs/tiny.yaml --model.attention sdpa   # torch SDPA
    python recipes/gpt/train.py fit --config recipes/gpt/configs/tiny.yaml --ckpt_path last        # resume
    python recipes/gpt/train.py fit --config recipes/gpt/configs/tiny.yaml --data.path my_text/    # own data
    python recipes/gpt/train.py fit --help                                                         # every field

Outputs go to ``trainer.default_root_dir`` (``runs/gpt-tiny`` for the tiny config): CSV and TensorBoard logs,
``loss_curves.png`` and ``summary.json`` next to the CSV log, and checkpoints (best and last) in ``checkpoints/``.
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
    CausalLMDataModule,
    CompiledTraining,
    RecipeCLI,
    Transformer,
    configure_adamw,
)


class GPT(LightningModule):
    """A causal transformer predicting the next byte.

    Args:
        block_size: context length in bytes; set through ``--data.block_size``.
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
            "max-autotune" or "max-autotune-no-cudagraphs"; null trains eagerly. Validation and generation stay eager.
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
        learning_rate: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
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
            causal=True,
            dropout=dropout,
            attention=attention,
            deterministic=deterministic,
        )
        # A plain attribute (CompiledTraining is no nn.Module): checkpoints keep the model's own parameter names.
        self.train_forward = CompiledTraining(self.model, compile)
        self.val_ppl = Perplexity()
        self.val_acc = MulticlassAccuracy(num_classes=self.tokenizer.vocab_size, average="micro")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, seqlen) -> logits (batch, seqlen, vocab)."""
        return self.model(tokens)

    def on_fit_start(self) -> None:
        self.train_forward.check(self.trainer)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        logits = self.train_forward(inputs).float()  # the loss in fp32 under mixed precision
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self.model(inputs).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
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

    @torch.no_grad()
    def generate(
        self, prompt: str, num_tokens: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0
    ) -> str:
        """The prompt followed by ``num_tokens`` sampled bytes (the context cropped to ``block_size``)."""
        was_training = self.training
        self.eval()
        ids = self.tokenizer.encode(prompt or "\n").to(self.device)[None]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for _ in range(num_tokens):
            logits = self.model(ids[:, -self.hparams.block_size :])[:, -1].float()
            logits[:, self.tokenizer.num_bytes :] = float("-inf")  # special tokens never occur in text
            logits = logits / max(temperature, 1e-6)
            if top_k is not None:
                kth = logits.topk(min(top_k, self.tokenizer.num_bytes)).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            ids = torch.cat([ids, next_id], dim=1)
        self.train(was_training)
        return self.tokenizer.decode(ids[0])


def main(args: list[str] | None = None) -> RecipeCLI:
    return RecipeCLI(GPT, CausalLMDataModule, args=args)


if __name__ == "__main__":
    main()
