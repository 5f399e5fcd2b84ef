"""``nn.Module`` wrappers: :class:`FlashAttention` (the attention op) and :class:`MultiheadFlashAttention` (a block)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fa2dist.configs import KernelsConfig
from fa2dist.ops.attention import LAYOUTS, flash_attention, flash_attention_varlen


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's head slopes: a geometric sequence from 2^(-8/n) for n a power of two; otherwise the
    power of two below's slopes, then every other slope of the power of two above (as the paper's reference code)."""
    if num_heads <= 0:
        raise ValueError(f"`num_heads={num_heads}` must be positive.")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(lower)
    if lower < num_heads:
        slopes += power_of_two(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class _SelectRows(torch.autograd.Function):
    """``x[index]`` along the first axis, with a backward that copies (no atomics: bitwise deterministic)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows, *grad.shape[1:])).index_copy_(0, index, grad), None


class _ScatterRows(torch.autograd.Function):
    """Rows of ``x`` placed at ``index`` in zeros of ``rows`` rows; the inverse of :class:`_SelectRows`."""

    @staticmethod
    def forward(ctx, x, index, rows):
        ctx.save_for_backward(index)
        return x.new_zeros((rows, *x.shape[1:])).index_copy_(0, index, x)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def _packed(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Indices of the kept tokens of a (batch, seqlen) mask in the flattened batch, cu_seqlens and max seqlen."""
    seqlens = mask.sum(1, dtype=torch.int32)
    index = mask.flatten().nonzero().squeeze(1)
    cu_seqlens = F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))
    return index, cu_seqlens, int(seqlens.max()) if seqlens.numel() else 0


class FlashAttention(nn.Module):
    """Attention over already-projected heads, on fa2dist's kernels.

    The kernel config is looked up on the tensors' device at every call (cached per device), so each DDP rank uses
    its own GPU's tiles; on a CPU the PyTorch path runs, so the same model trains anywhere. Under autocast, q/k/v
    are cast to the autocast dtype first.

    Args:
        causal: bottom-right aligned causal mask.
        softmax_scale: defaults to 1/sqrt(headdim).
        window_size: (left, right) sliding window; -1 leaves a side unbounded (see ``fa2dist.flash_attention``).
        softcap: logit softcapping (> 0 turns it on).
        alibi_slopes: float32 (nheads,) ALiBi slopes (``fa2dist.module.alibi_slopes(nheads)`` gives the paper's),
            kept as a buffer so it follows ``.to(device)``.
        dropout: dropout on the attention weights, in training mode only.
        deterministic: backward mode; None follows ``fa2dist.set_deterministic`` and friends.
        layout: "bshd" (batch, seqlen, nheads, headdim) or "bhsd".
        config: a KernelsConfig (or ``{(major, minor): config}``) to use instead of the device's.

    Example::

        attn = FlashAttention(causal=True)
        out = attn(q, k, v)  # (batch, seqlen, nheads, headdim)
        out = attn(q, k, v, attention_mask=mask)  # mask (batch, seqlen): True for real tokens, False for padding
    """

    def __init__(
        self,
        causal: bool = False,
        softmax_scale: float | None = None,
        deterministic: bool | None = None,
        layout: str = "bshd",
        config: KernelsConfig | dict | None = None,
        window_size: tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        alibi_slopes: torch.Tensor | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"`FlashAttention(layout={layout!r})` is not supported; use 'bshd' or 'bhsd'.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`FlashAttention(dropout={dropout!r})` must be a float in [0, 1).")
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.deterministic = deterministic
        self.layout = layout
        self.config = config
        self.window_size = tuple(window_size)
        self.softcap = softcap
        self.dropout = float(dropout)
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention of q over k/v in the module's layout.

        ``attention_mask``: optional bool (batch, seqlen_k) key padding mask, True (or 1) for real tokens and False
        for padding (Hugging Face's ``attention_mask`` convention; the opposite of ``nn.MultiheadAttention``'s
        ``key_padding_mask``). The padding is removed and the sequences run packed through the variable-length
        kernels, so padded keys cost nothing. When q and k have the same length (self-attention) the mask applies
        to the queries too, and padded query positions return 0. Masks and ALiBi positions then count real tokens
        only (left padding and right padding give the same result). The packing synchronises with the GPU once
        (the number of real tokens) and breaks a ``torch.compile`` graph.
        """
        device_type = q.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        options = dict(
            causal=self.causal,
            softmax_scale=self.softmax_scale,
            window_size=self.window_size,
            softcap=self.softcap,
            alibi_slopes=self.alibi_slopes,
            dropout_p=self.dropout if self.training else 0.0,
            deterministic=self.deterministic,
            config=self.config,
        )
        if attention_mask is None:
            return flash_attention(q, k, v, layout=self.layout, **options)
        return self._padded(q, k, v, attention_mask, options)

    def _padded(self, q, k, v, attention_mask, options) -> torch.Tensor:
        if self.layout == "bhsd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (batch, seqlen_k):
            raise ValueError(
                f"`attention_mask` must be a (batch, seqlen_k) = ({batch}, {seqlen_k}) tensor, True for real tokens; "
                f"got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}."
            )
        mask = attention_mask.to(device=q.device, dtype=torch.bool)
        index_k, cu_k, max_k = _packed(mask)
        k_packed = _SelectRows.apply(k.flatten(0, 1), index_k)
        v_packed = _SelectRows.apply(v.flatten(0, 1), index_k)
        if seqlen_q == seqlen_k:
            index_q, cu_q, max_q = index_k, cu_k, max_k
            q_packed = _SelectRows.apply(q.flatten(0, 1), index_q)
        else:  # cross-attention: every query is real
            index_q = None
            cu_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, device=q.device, dtype=torch.int32)
            max_q, q_packed = seqlen_q, q.flatten(0, 1)
        out = flash_attention_varlen(q_packed, k_packed, v_packed, cu_q, cu_k, max_q, max_k, **options)
        if index_q is not None:
            out = _ScatterRows.apply(out, index_q, batch * seqlen_q)
        out = out.view(batch, seqlen_q, *out.shape[1:])
        return out.transpose(1, 2) if self.layout == "bhsd" else out

    def extra_repr(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("window_size", self.window_size, (-1, -1)), ("softcap", self.softcap, 0.0),
                ("dropout", self.dropout, 0.0),
            )
            if value != default
        )
        alibi = ", alibi=True" if self.alibi_slopes is not None else ""
        return f"causal={self.causal}, layout={self.layout!r}, deterministic={self.deterministic}{extra}{alibi}"


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
        attn_dropout: dropout on the attention weights (in the kernel).
        window_size: (left, right) sliding-window attention; -1 leaves a side unbounded.
        softcap: logit softcapping (> 0 turns it on).
        alibi: add ALiBi biases with the paper's slopes (usually instead of ``rotary``).
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
        attn_dropout: float = 0.0,
        window_size: tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        alibi: bool = False,
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
        self.attn = FlashAttention(
            causal=causal, deterministic=deterministic, layout="bshd", config=config, window_size=window_size,
            softcap=softcap, alibi_slopes=alibi_slopes(num_heads) if alibi else None, dropout=attn_dropout,
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, seqlen, embed_dim) -> (batch, seqlen, embed_dim). ``attention_mask``: optional (batch, seqlen)
        bool, True for real tokens (see :meth:`FlashAttention.forward`); padded positions return the output
        projection's bias."""
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
        out = self.attn(q, k, v, attention_mask).reshape(b, s, self.embed_dim)
        return self.dropout(self.out_proj(out))
