"""Plain-PyTorch attention with fa2dist's semantics: the test reference and the CPU fallback.

Same conventions as the kernels: (batch, nheads, seqlen, headdim) here, GQA by head groups, masks aligned to the
bottom-right corner (query i sees key j iff ``i + diag - left <= j <= i + diag + right`` with
``diag = seqlen_k - seqlen_q``; causal is ``right = 0``; -1 is unbounded), softcap before ALiBi, rows that see no
key give output 0 and log-sum-exp +inf.
"""

from __future__ import annotations

import math

import torch


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask, True where query i may see key j (j <= i + seqlen_k - seqlen_q)."""
    return window_mask(seqlen_q, seqlen_k, (-1, 0), device)


def window_mask(
    seqlen_q: int, seqlen_k: int, window_size: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask of a sliding window ``(left, right)``; -1 leaves that side unbounded."""
    rows = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    cols = torch.arange(seqlen_k, device=device)[None, :]
    left, right = window_size
    keep = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if right >= 0:
        keep &= cols <= rows + right
    if left >= 0:
        keep &= cols >= rows - left
    return keep


def alibi_bias(slopes: torch.Tensor, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
    """ALiBi bias ``-slope * |i + seqlen_k - seqlen_q - j|``: (nheads, sq, sk) for (nheads,) slopes, or
    (batch, nheads, sq, sk) for (batch, nheads) slopes."""
    rows = torch.arange(seqlen_q, device=slopes.device)[:, None] + (seqlen_k - seqlen_q)
    cols = torch.arange(seqlen_k, device=slopes.device)[None, :]
    return -slopes[..., None, None] * (rows - cols).abs().to(slopes.dtype)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain PyTorch; differentiable.

    Args:
        q: (batch, nheads, seqlen_q, headdim).
        k, v: (batch, nheads_kv, seqlen_k, headdim), nheads a multiple of nheads_kv.
        causal: bottom-right aligned causal mask (the window's right bound becomes 0).
        softmax_scale: defaults to 1/sqrt(headdim).
        window_size: (left, right) sliding window; -1 is unbounded.
        softcap: if > 0, scores become ``softcap * tanh(scores / softcap)``.
        alibi_slopes: (nheads,) or (batch, nheads); adds ``-slope * |i + seqlen_k - seqlen_q - j|``.
        dropout_p: dropout probability on the attention weights (kept ones rescaled by 1 / (1 - p)).
        dropout_mask: boolean keep mask broadcastable to (batch, nheads, seqlen_q, seqlen_k); drawn from torch's
            generator when None and ``dropout_p > 0``.
        compute_dtype: dtype of the arithmetic (float64 for a test reference; None keeps the input dtype, which is
            "PyTorch's own error" at that precision).

    Returns:
        (out, lse): out like q in q's dtype; lse (batch, nheads, seqlen_q) in float32 (natural log, of the scores
        before dropout).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype if compute_dtype is None else compute_dtype
    group = q.shape[1] // k.shape[1]
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    if group > 1:
        kc = kc.repeat_interleave(group, dim=1)
        vc = vc.repeat_interleave(group, dim=1)
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    scores = torch.matmul(qc, kc.transpose(-2, -1)) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    if alibi_slopes is not None:
        bias = alibi_bias(alibi_slopes.to(device=q.device, dtype=dtype), seqlen_q, seqlen_k)
        scores = scores + (bias if bias.dim() == 4 else bias[None])
    left, right = window_size
    if causal:
        right = 0
    if left >= 0 or right >= 0:
        scores = scores.masked_fill(~window_mask(seqlen_q, seqlen_k, (left, right), q.device), float("-inf"))
    lse = torch.logsumexp(scores.float() if dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    empty = torch.isneginf(lse)
    # Rows that see no key: subtract 0 instead of -inf so their probabilities are 0, not NaN.
    probs = torch.exp(scores - torch.where(empty, 0.0, lse)[..., None].to(scores.dtype))
    if dropout_p > 0:
        if dropout_mask is None:
            dropout_mask = torch.rand(probs.shape, device=probs.device) >= dropout_p
        probs = probs * dropout_mask.to(probs.dtype) / (1.0 - dropout_p)
    out = torch.matmul(probs, vc)
    lse = torch.where(empty, torch.full_like(lse, float("inf")), lse)
    return out.to(q.dtype), lse.float()


def varlen_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    alibi_slopes: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_reference`` over packed (total, nheads, headdim) sequences, one sequence at a time.

    ``dropout_mask``, if given, is (batch, nheads, max_seqlen_q, max_seqlen_k) with each sequence's mask in its top
    left corner. Returns (out (total_q, nheads, headdim), lse (nheads, total_q))."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(starts_q) - 1):
        sq, eq, sk, ek = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        slopes = None if alibi_slopes is None else (alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b])
        mask = None if dropout_mask is None else dropout_mask[b : b + 1, :, : eq - sq, : ek - sk]
        out, lse = attention_reference(
            q[sq:eq].transpose(0, 1)[None], k[sk:ek].transpose(0, 1)[None], v[sk:ek].transpose(0, 1)[None],
            alibi_slopes=slopes, dropout_mask=mask, **kwargs,
        )
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    return torch.cat(outs, 0), torch.cat(lses, -1)
