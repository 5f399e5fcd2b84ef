"""Plain-PyTorch attention with fa2dist's semantics: the test reference and the CPU fallback.

Same conventions as the kernels: (batch, nheads, seqlen, headdim) here, GQA by head groups, the causal mask aligned
to the bottom-right corner, rows that see no key give output 0 and log-sum-exp +inf.
"""

from __future__ import annotations

import math

import torch


def causal_mask(seqlen_q: int, seqlen_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask, True where query i may see key j (j <= i + seqlen_k - seqlen_q)."""
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    return cols <= rows + (seqlen_k - seqlen_q)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    compute_dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain PyTorch; differentiable.

    Args:
        q: (batch, nheads, seqlen_q, headdim).
        k, v: (batch, nheads_kv, seqlen_k, headdim), nheads a multiple of nheads_kv.
        causal: bottom-right aligned causal mask.
        softmax_scale: defaults to 1/sqrt(headdim).
        compute_dtype: dtype of the arithmetic (float64 for a test reference; None keeps the input dtype, which is
            "PyTorch's own error" at that precision).

    Returns:
        (out, lse): out like q in q's dtype; lse (batch, nheads, seqlen_q) in float32 (natural log).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype if compute_dtype is None else compute_dtype
    group = q.shape[1] // k.shape[1]
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    if group > 1:
        kc = kc.repeat_interleave(group, dim=1)
        vc = vc.repeat_interleave(group, dim=1)
    scores = torch.matmul(qc, kc.transpose(-2, -1)) * scale
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    lse = torch.logsumexp(scores.float() if dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    empty = torch.isneginf(lse)
    # Rows that see no key: subtract 0 instead of -inf so their probabilities are 0, not NaN.
    probs = torch.exp(scores - torch.where(empty, 0.0, lse)[..., None].to(scores.dtype))
    out = torch.matmul(probs, vc)
    lse = torch.where(empty, torch.full_like(lse, float("inf")), lse)
    return out.to(q.dtype), lse.float()
