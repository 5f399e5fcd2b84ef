"""Comparison helpers for attention tests: errors relative to PyTorch's own error at the same precision."""

from __future__ import annotations

import os

import torch

from fa2dist.ops.reference import attention_reference

# Variables a child training run must not inherit from the test process: fa2dist's switches (each test sets its
# own), Triton's interpreter, and the rank/rendezvous settings of any launcher (or Slurm job) the tests run under.
LAUNCHER_ENV = (
    "FA2DIST_DETERMINISTIC",
    "FA2DIST_ARCH",
    "TRITON_INTERPRET",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
)


def child_environment(drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without LAUNCHER_ENV, ``drop`` and Slurm's variables."""
    dropped = set(LAUNCHER_ENV) | set(drop)
    return {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("SLURM_")}


def describe_diff(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    diff = torch.nan_to_num(diff, nan=float("inf"))
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return f"max {diff.max().item():.3e} at {idx}, mean {diff.mean().item():.3e}"


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return torch.nan_to_num((actual.double() - expected.double()).abs(), nan=float("inf")).max().item()


def make_qkv(batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, dtype, device, layout, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(h, s):
        t = torch.randn(batch, h, s, head_dim, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
        return t if layout == "bhsd" else t.transpose(1, 2).contiguous()

    return rand(nheads, seqlen_q), rand(nheads_kv, seqlen_k), rand(nheads_kv, seqlen_k)


def to_bhsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t if layout == "bhsd" else t.transpose(1, 2)


def reference_with_grads(q, k, v, do, causal, layout, compute_dtype):
    """Reference output, LSE and gradients (bhsd) in ``compute_dtype`` (None = the inputs' dtype)."""
    leaves = [to_bhsd(t, layout).detach().clone().requires_grad_() for t in (q, k, v)]
    if compute_dtype is not None:
        leaves = [t.detach().to(compute_dtype).requires_grad_() for t in leaves]
    out, lse = attention_reference(*leaves, causal=causal, compute_dtype=compute_dtype)
    grads = torch.autograd.grad(out, leaves, to_bhsd(do, layout).to(out.dtype))
    return out, lse, grads


def check_against_reference(name, actual, ref64, ref_lowp, factor, atol):
    """fa2dist's error vs the float64 reference must be at most ``factor`` x PyTorch's own (plus ``atol``)."""
    err = max_err(actual, ref64)
    base = max_err(ref_lowp, ref64)
    assert err <= factor * base + atol, (
        f"{name}: error {err:.3e} > {factor} x PyTorch's {base:.3e} + {atol:.0e}; {describe_diff(actual, ref64)}"
    )
