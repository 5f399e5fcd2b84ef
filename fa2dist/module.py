"""``nn.Module`` wrappers: :class:`FlashAttention` (the attention op) and :class:`MultiheadFlashAttention` (a block)."""

from __future__ import annotations

import torch
from torch import nn

from fa2dist.configs import KernelsConfig
from fa2dist.ops.attention import LAYOUTS, flash_attention


class FlashAttention(nn.Module):
    """Attention over already-projected heads, on fa2dist's kernels.

    The kernel config is looked up on the tensors' device at every call (cached per device), so each DDP rank uses
    its own GPU's tiles; on a CPU the PyTorch path runs, so the same model trains anywhere. Under autocast, q/k/v
    are cast to the autocast dtype first.

    Args:
        causal: bottom-right aligned causal mask.
        softmax_scale: defaults to 1/sqrt(headdim).
        deterministic: backward mode; None follows ``fa2dist.set_deterministic`` and friends.
        layout: "bshd" (batch, seqlen, nheads, headdim) or "bhsd".
        config: a KernelsConfig (or ``{(major, minor): config}``) to use instead of the device's.

    Example::

        attn = FlashAttention(causal=True)
        out = attn(q, k, v)  # (batch, seqlen, nheads, headdim)
    """

    def __init__(
        self,
        causal: bool = False,
        softmax_scale: float | None = None,
        deterministic: bool | None = None,
        layout: str = "bshd",
        config: KernelsConfig | dict | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"`FlashAttention(layout={layout!r})` is not supported; use 'bshd' or 'bhsd'.")
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.deterministic = deterministic
        self.layout = layout
        self.config = config

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        device_type = q.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return flash_attention(
            q,
            k,
            v,
            causal=self.causal,
            softmax_scale=self.softmax_scale,
            deterministic=self.deterministic,
            layout=self.layout,
            config=self.config,
        )

    def extra_repr(self) -> str:
        return f"causal={self.causal}, layout={self.layout!r}, deterministic={self.deterministic}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) on (batch, seqlen, nheads, headdim) tensors."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}.")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        seqlen = x.shape[1]
        t = torch.arange(offset, offset + seqlen, device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        xf = x.float()
        return (xf * emb.cos() + _rotate_half(xf) * emb.sin()).to(x.dtype)


class MultiheadFlashAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention block: QKV projection, optional RoPE, fa2dist attention, output
    projection.

    Args:
        embed_dim: model width; a multiple of ``num_heads``.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA); defaults to ``num_heads``; must divide it.
        causal: causal (decoder) or bidirectional (encoder) attention.
        bias: biases in the projections.
        rotary: apply rotary position embeddings to q and k.
        rotary_base: RoPE base.
        dropout: dropout on the output projection.
        deterministic: backward mode for this block; None follows the global switch.
        config: kernel config override.

    Example::

        block = MultiheadFlashAttention(512, 8, num_kv_heads=2, causal=True, rotary=True)
        y = block(x)  # x: (batch, seqlen, 512)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        causal: bool = False,
        bias: bool = True,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        dropout: float = 0.0,
        deterministic: bool | None = None,
        config: KernelsConfig | dict | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(
                f"`MultiheadFlashAttention(embed_dim={embed_dim}, num_heads={num_heads})`: embed_dim must be a "
                "positive multiple of num_heads."
            )
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(
                f"`MultiheadFlashAttention(num_kv_heads={num_kv_heads})` must divide num_heads={num_heads}."
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if rotary else None
        self.attn = FlashAttention(causal=causal, deterministic=deterministic, layout="bshd", config=config)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, seqlen, embed_dim) -> (batch, seqlen, embed_dim)."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"MultiheadFlashAttention expects (batch, seqlen, {self.embed_dim}), got {tuple(x.shape)}."
            )
        b, s, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim],
            dim=-1,
        )
        q = q.view(b, s, self.num_heads, self.head_dim)
        k = k.view(b, s, self.num_kv_heads, self.head_dim)
        v = v.view(b, s, self.num_kv_heads, self.head_dim)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        out = self.attn(q, k, v).reshape(b, s, self.embed_dim)
        return self.dropout(self.out_proj(out))
