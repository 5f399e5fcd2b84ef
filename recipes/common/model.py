"""A pre-norm transformer on fa2dist's :class:`~fa2dist.MultiheadFlashAttention`.

``attention="sdpa"`` builds the very same blocks (same parameters, same names, so checkpoints load either way) and
swaps only the attention op for ``torch.nn.functional.scaled_dot_product_attention``: the baseline for comparisons.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fa2dist import MultiheadFlashAttention

ATTENTION_IMPLS = ("fa2dist", "sdpa")
#: ``torch.compile`` modes the recipes accept (``--model.compile``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class SdpaAttention(nn.Module):
    """Stand-in for :class:`fa2dist.FlashAttention` (same (batch, seqlen, nheads, headdim) tensors in and out) on
    ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("the SDPA stand-in takes no attention_mask; use fa2dist's attention for padded batches.")
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"causal={self.causal}"


class Block(nn.Module):
    """LayerNorm -> attention -> residual, LayerNorm -> MLP (GELU) -> residual."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None,
        mlp_ratio: float,
        causal: bool,
        dropout: float,
        attention: str,
        deterministic: bool | None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiheadFlashAttention(
            embed_dim,
            num_heads,
            num_kv_heads=num_kv_heads,
            causal=causal,
            rotary=True,
            dropout=dropout,
            deterministic=deterministic,
        )
        if attention == "sdpa":
            self.attn.attn = SdpaAttention(causal)
        self.norm2 = nn.LayerNorm(embed_dim)
        hidden = int(mlp_ratio * embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Token embedding, ``num_layers`` blocks with rotary positions, final LayerNorm, LM head tied to the embedding.

    Args:
        vocab_size: tokens the model predicts; the embedding is padded to a multiple of 64 rows (faster matmuls) and
            the padding is cut from the logits.
        embed_dim: model width, a multiple of ``num_heads``.
        num_layers: transformer blocks.
        num_heads: query heads; the head dim is ``embed_dim // num_heads``.
        num_kv_heads: key/value heads (grouped-query attention); None means ``num_heads``.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        causal: causal (decoder) or bidirectional (encoder) attention.
        dropout: dropout after the attention and MLP output projections.
        attention: "fa2dist" (fa2dist kernels) or "sdpa" (torch's scaled_dot_product_attention).
        deterministic: fa2dist backward mode; None follows ``fa2dist.set_deterministic`` and friends.

    Example::

        model = Transformer(vocab_size=259, embed_dim=128, num_layers=4, num_heads=4)
        logits = model(tokens)  # tokens: (batch, seqlen) int64 -> (batch, seqlen, 259)
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        dropout: float = 0.0,
        attention: str = "fa2dist",
        deterministic: bool | None = None,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"`attention={attention!r}` is not known; use one of {ATTENTION_IMPLS}.")
        self.vocab_size = vocab_size
        self.causal = causal
        padded_vocab = math.ceil(vocab_size / 64) * 64
        self.embed = nn.Embedding(padded_vocab, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, num_kv_heads, mlp_ratio, causal, dropout, attention, deterministic)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, padded_vocab, bias=False)
        self.head.weight = self.embed.weight
        self._init_weights(num_layers)

    def _init_weights(self, num_layers: int) -> None:
        # GPT-2's scheme: N(0, 0.02) everywhere, and the projections that write into the residual stream scaled by
        # 1/sqrt(2 * num_layers) so the stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * num_layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, seqlen) int64 -> logits (batch, seqlen, vocab_size)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[..., : self.vocab_size]

    def num_parameters(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class CompiledTraining:
    """The training forward of a recipe's model, eager or through ``torch.compile`` with ``mode``.

    Call :meth:`__call__` once per training step. Modes with CUDA graphs ("reduce-overhead", "max-autotune") start a
    new step of the graphs there, so a step's outputs are not overwritten while the step still uses them. Keep it
    outside the module tree (a plain attribute, not a submodule), so checkpoints hold the weights once, under the
    model's own names.
    """

    def __init__(self, model: nn.Module, mode: str | None) -> None:
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(
                f"--model.compile={mode!r} is not a torch.compile mode: use one of {', '.join(COMPILE_MODES)}, "
                "or null to train eagerly."
            )
        self.mode = mode
        self.forward = torch.compile(model, mode=mode, fullgraph=True) if mode else model
        self.graphs = mode in ("reduce-overhead", "max-autotune")

    def check(self, trainer) -> None:
        """Refuse trainer settings the CUDA graphs get wrong; call it from ``on_fit_start``."""
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        if self.graphs and accumulate > 1:
            raise ValueError(
                f"--model.compile={self.mode!r} replays CUDA graphs, and a replay can overwrite the gradients that "
                f"--trainer.accumulate_grad_batches={accumulate} still holds from the previous batch: use "
                "--model.compile=default (no graphs) or accumulate_grad_batches=1."
            )

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.forward(tokens)
