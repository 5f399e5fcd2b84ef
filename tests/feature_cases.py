"""Shared checks of the attention features (window, softcap, ALiBi, dropout, variable length) against the float64
reference, run by the interpreter tests (CPU) and the GPU tests with their own shapes."""

from __future__ import annotations

import zlib

import torch

import fa2dist
from fa2dist.ops.attention import dropout_mask, new_seed
from fa2dist.ops.reference import attention_reference, varlen_reference
from tests.helpers import check_against_reference

# Feature combinations: (name, keyword arguments; "alibi" is "h" for (nheads,) slopes or "bh" for (batch, nheads)).
FEATURES = [
    ("window-causal", dict(causal=True, window_size=(19, -1))),
    ("window-both", dict(window_size=(23, 9))),
    ("window-right", dict(window_size=(-1, 5))),
    ("window-narrow", dict(window_size=(2, 0))),
    ("softcap", dict(softcap=5.0)),
    ("alibi", dict(alibi="h")),
    ("alibi-batch-causal", dict(alibi="bh", causal=True)),
    ("dropout", dict(dropout_p=0.25)),
    ("dropout-causal-alibi", dict(dropout_p=0.1, causal=True, alibi="h")),
    ("window-softcap-alibi", dict(window_size=(31, 3), softcap=8.0, alibi="bh")),
    ("all", dict(causal=True, window_size=(40, -1), softcap=10.0, alibi="h", dropout_p=0.2)),
]


def _slopes(kind, batch, nheads, device, g):
    if kind is None:
        return None
    shape = (nheads,) if kind == "h" else (batch, nheads)
    return (torch.rand(shape, generator=g) * 0.5 + 0.01).to(device)


def _check(name, out, grads, ref64, grads64, reflp, gradslp, lse, lse64, dtype):
    atol = 1e-6 if dtype == torch.float32 else 1e-5
    check_against_reference(f"{name} out", out, ref64, reflp, 2, atol)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse64)), f"{name}: rows that see no key must have lse = +inf"
    finite = torch.isfinite(lse64)
    if finite.any():
        err = ((lse[finite].double() - lse64[finite]).abs() / (1 + lse64[finite].abs())).max().item()
        assert err <= 1e-4, f"{name}: lse relative error {err:.2e}"
    for gname, g, g64, glp in zip(("dq", "dk", "dv"), grads, grads64, gradslp):
        assert torch.isfinite(g).all(), f"{name} {gname}: non-finite gradient"
        check_against_reference(f"{name} {gname}", g, g64, glp, 3, atol)


def _reference(fn, leaves, do, dtype64, **kwargs):
    """Reference output, LSE and gradients with arithmetic in ``dtype64`` (None: the inputs' own dtype)."""
    leaves = [t.detach().to(dtype64 or t.dtype).requires_grad_() for t in leaves]
    out, lse = fn(*leaves, compute_dtype=dtype64, **kwargs)
    return out, lse, torch.autograd.grad(out, leaves, do.to(out.dtype))


def check_dense(name, features, shape, dtype, device, deterministic, config=None):
    """fa2dist.flash_attention with ``features`` on (batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim)."""
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = shape
    seed = zlib.crc32(repr((name, shape, dtype, deterministic)).encode())
    g = torch.Generator().manual_seed(seed)
    features = dict(features)
    slopes = _slopes(features.pop("alibi", None), batch, nheads, device, g)
    q = torch.randn(batch, nheads, seqlen_q, head_dim, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(batch, nheads_kv, seqlen_k, head_dim, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(batch, nheads_kv, seqlen_k, head_dim, generator=g).to(device, dtype).requires_grad_()
    do = torch.randn(batch, nheads, seqlen_q, head_dim, generator=g).to(device, dtype)
    torch.manual_seed(seed)
    out, lse = fa2dist.flash_attention(q, k, v, layout="bhsd", alibi_slopes=slopes, deterministic=deterministic,
                                       return_lse=True, config=config, **features)
    grads = torch.autograd.grad(out, (q, k, v), do)
    mask = None
    if features.get("dropout_p", 0) > 0:
        torch.manual_seed(seed)  # the call above drew its seed first thing: draw it again
        mask = dropout_mask(new_seed(q.device), batch, nheads, seqlen_q, seqlen_k, features["dropout_p"])
    kw = dict(features, alibi_slopes=slopes, dropout_mask=mask)
    ref64, lse64, grads64 = _reference(attention_reference, (q, k, v), do, torch.float64, **kw)
    reflp, _, gradslp = _reference(attention_reference, (q, k, v), do, None, **kw)
    _check(name, out, grads, ref64, grads64, reflp, gradslp, lse, lse64, dtype)


def check_varlen(name, features, seqlens_q, seqlens_k, nheads, nheads_kv, head_dim, dtype, device, deterministic):
    """fa2dist.flash_attention_varlen with ``features`` over sequences of the given lengths (0 allowed)."""
    seed = zlib.crc32(repr((name, seqlens_q, seqlens_k, nheads, head_dim, dtype, deterministic)).encode())
    g = torch.Generator().manual_seed(seed)
    features = dict(features)
    batch = len(seqlens_q)
    slopes = _slopes(features.pop("alibi", None), batch, nheads, device, g)
    cu_q = torch.tensor([0, *torch.tensor(seqlens_q).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, *torch.tensor(seqlens_k).cumsum(0).tolist()], dtype=torch.int32, device=device)
    total_q, total_k = sum(seqlens_q), sum(seqlens_k)
    q = torch.randn(total_q, nheads, head_dim, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(total_k, nheads_kv, head_dim, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(total_k, nheads_kv, head_dim, generator=g).to(device, dtype).requires_grad_()
    do = torch.randn(total_q, nheads, head_dim, generator=g).to(device, dtype)
    max_q, max_k = max(seqlens_q), max(seqlens_k)
    torch.manual_seed(seed)
    out, lse = fa2dist.flash_attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, alibi_slopes=slopes,
                                              deterministic=deterministic, return_lse=True, **features)
    grads = torch.autograd.grad(out, (q, k, v), do)
    mask = None
    if features.get("dropout_p", 0) > 0:
        torch.manual_seed(seed)
        mask = dropout_mask(new_seed(q.device), batch, nheads, max_q, max_k, features["dropout_p"])

    def ref(q, k, v, **kw):
        return varlen_reference(q, k, v, cu_q, cu_k, **kw)

    kw = dict(features, alibi_slopes=slopes, dropout_mask=mask)
    ref64, lse64, grads64 = _reference(ref, (q, k, v), do, torch.float64, **kw)
    reflp, _, gradslp = _reference(ref, (q, k, v), do, None, **kw)
    _check(name, out, grads, ref64, grads64, reflp, gradslp, lse, lse64, dtype)
