"""Launchers (checks, grids, allocation) and the autograd Function behind ``fa2dist.flash_attention``."""

from __future__ import annotations

import math
import os
import warnings

import torch
import triton
from triton.runtime.errors import OutOfResources

from fa2dist.configs import MAX_HEADDIM, MIN_HEADDIM, BlockConfig, KernelsConfig, select_config
from fa2dist.determinism import resolve_deterministic
from fa2dist.ops import fit
from fa2dist.ops.kernels.backward import (
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess_kernel,
)
from fa2dist.ops.kernels.forward import _attn_fwd_kernel
from fa2dist.ops.reference import attention_reference

# Read once, as Triton does when it decorates the kernels: with it set, the kernels above are interpreted on CPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LAYOUTS = ("bshd", "bhsd")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs are multiplied in IEEE fp32 (3 passes on tensor cores) so fp32 means fp32 accuracy, unless the
    # user opted into TF32 for matmuls; fp16/bf16 use the tensor cores directly with fp32 accumulation.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
    if layout not in LAYOUTS:
        raise ValueError(f"`layout={layout!r}` is not supported; use 'bshd' (batch, seqlen, nheads, headdim) or 'bhsd'.")
    shape_doc = "(batch, seqlen, nheads, headdim)" if layout == "bshd" else "(batch, nheads, seqlen, headdim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"`{name}` must be 4-D {shape_doc} for layout={layout!r}, got shape {tuple(t.shape)}."
            )
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"`{name}` has dtype {t.dtype}; fa2dist supports float16, bfloat16 and float32. "
                f"Convert with `{name}.to(torch.bfloat16)`."
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}. Convert them to one dtype."
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q={q.device}, k={k.device}, v={v.device}.")
    if k.shape != v.shape:
        raise ValueError(f"`k` and `v` must have the same shape, got k={tuple(k.shape)} and v={tuple(v.shape)}.")
    hq, hk = (q.shape[2], k.shape[2]) if layout == "bshd" else (q.shape[1], k.shape[1])
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}.")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}.")
    head_dim = q.shape[-1]
    if head_dim > MAX_HEADDIM or (head_dim < MIN_HEADDIM and head_dim != 0):
        raise ValueError(
            f"head dim {head_dim} is not supported: fa2dist's kernels take head dims {MIN_HEADDIM}-{MAX_HEADDIM}; "
            "pad the head dim or split it."
        )
    if hk == 0 or hq % hk != 0:
        raise ValueError(
            f"nheads of q ({hq}) must be a multiple of nheads of k/v ({hk}) for grouped-query attention."
        )


def _bhsd_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, head, seq) strides in elements of a 4-D tensor in ``layout``."""
    if layout == "bshd":
        return t.stride(0), t.stride(2), t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _dims(q: torch.Tensor, k: torch.Tensor, layout: str) -> tuple[int, int, int, int, int, int]:
    if layout == "bshd":
        return q.shape[0], q.shape[2], k.shape[2], q.shape[1], k.shape[1], q.shape[3]
    return q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernels need unit stride in the head dim; any other stride costs one copy.
    return t if t.stride(-1) == 1 else t.contiguous()



# (kernel, device, dtype, head dim, flags, requested tiles) -> tiles that compiled within the device's shared memory.
_fitted: dict[tuple, BlockConfig] = {}


def _fit_fp32(name: str, cfg: BlockConfig, head_dim: int, config: KernelsConfig) -> BlockConfig:
    # Configs are fitted for 2-byte inputs; fp32 tiles take twice the shared memory. Ask the compiler's allocator
    # (a fraction of a second per step) instead of launching and catching failures (a full compile per step).
    if not config.shared_memory_bytes or getattr(config, "capability", None) is None:
        return cfg
    try:
        return fit.fit_block(name, cfg, head_dim, config.capability, config.shared_memory_bytes, torch.float32)
    except Exception:  # the launch below still shrinks on failure
        return cfg


def _launch(kernel, key: tuple, cfg: BlockConfig, grid, args: tuple, constexprs: dict, prefit=None) -> None:
    """Launch ``kernel`` with ``cfg``'s tiles; if they need more shared memory than the GPU has (fp32 inputs, a
    custom config), shrink them step by step (fewer stages, then smaller tiles; no timing involved, so the choice is
    the same in every run) and remember the tiles that fit. ``prefit(cfg)``, if given, runs once per key, before
    the first launch."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), *key, cfg)
    tiles = _fitted.get(key)
    if tiles is None:
        tiles = cfg = prefit(cfg) if prefit is not None else cfg
    while True:
        try:
            kernel[grid(tiles)](
                *args, **constexprs, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages,
            )
            break
        except OutOfResources as err:
            smaller = tiles.shrink()
            if smaller is None:
                raise ValueError(
                    f"no tile size of {key[0]} fits this GPU's shared memory for {key[1:-1]}: {err}"
                ) from err
            tiles = smaller
    if tiles != cfg and key not in _fitted:
        warnings.warn(
            f"fa2dist: {key[0]} tiles {cfg} need more shared memory than this GPU has for {key[2:-1]}; using {tiles}.",
            stacklevel=3,
        )
    _fitted[key] = tiles


def attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    softmax_scale: float,
    layout: str,
    config: KernelsConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel. Returns (out like q, lse (batch, nheads, seqlen_q) fp32)."""
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = _dims(q, k, layout)
    out = torch.empty_like(q)
    lse = torch.empty((batch, nheads, seqlen_q), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if seqlen_k == 0:
        out.zero_()
        lse.fill_(float("inf"))
        return out, lse
    block_d = max(triton.next_power_of_2(head_dim), 16)
    upcast = INTERPRET and q.dtype == torch.bfloat16
    fp32 = q.dtype == torch.float32 and q.device.type == "cuda"
    _launch(
        _attn_fwd_kernel, (q.device, q.dtype, head_dim, causal), config.forward_for(head_dim),
        lambda t: (triton.cdiv(seqlen_q, t.block_m), batch * nheads),
        (
            q, k, v, out, lse, softmax_scale,
            *_bhsd_strides(q, layout), *_bhsd_strides(k, layout), *_bhsd_strides(v, layout),
            *_bhsd_strides(out, layout), nheads, nheads // nheads_kv, seqlen_q, seqlen_k,
        ),
        dict(HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, UPCAST=upcast, PRECISION=_precision(q.dtype)),
        prefit=(lambda t: _fit_fp32("forward", t, head_dim, config)) if fp32 else None,
    )
    return out, lse


def attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    softmax_scale: float,
    layout: str,
    config: KernelsConfig,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels in the given mode. Returns (dq, dk, dv) with the inputs' shapes and strides."""
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = _dims(q, k, layout)
    do = _last_dim_contiguous(do)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), dk.zero_(), dv.zero_()
    group = nheads // nheads_kv
    block_d = max(triton.next_power_of_2(head_dim), 16)
    upcast = INTERPRET and q.dtype == torch.bfloat16
    precision = _precision(q.dtype)
    bcfg = config.backward_for(head_dim, deterministic)

    delta = torch.empty_like(lse)
    pre_block = 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(seqlen_q, pre_block), batch * nheads)](
        out, do, delta, *_bhsd_strides(out, layout), *_bhsd_strides(do, layout), nheads, seqlen_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_block,
    )
    if deterministic:
        dq = torch.empty_like(q)
        dq_acc = dq  # unused by the dK/dV kernel when ATOMIC_DQ is False
        dq_strides = _bhsd_strides(dq, layout)
    else:
        dq_acc = torch.zeros((batch, nheads, seqlen_q, head_dim), device=q.device, dtype=torch.float32)
        dq_strides = (dq_acc.stride(0), dq_acc.stride(1), dq_acc.stride(2))

    key = (q.device, q.dtype, head_dim, causal, deterministic)
    fp32 = q.dtype == torch.float32 and q.device.type == "cuda"
    dkdv_name = "dkdv" if deterministic else "dkdv_atomic"
    _launch(
        _attn_bwd_dkdv_kernel, key, bcfg.dkdv, lambda t: (triton.cdiv(seqlen_k, t.block_n), batch * nheads_kv),
        (
            q, k, v, do, dk, dv, dq_acc, lse, delta, softmax_scale,
            *_bhsd_strides(q, layout), *_bhsd_strides(k, layout), *_bhsd_strides(v, layout),
            *_bhsd_strides(do, layout), *_bhsd_strides(dk, layout), *_bhsd_strides(dv, layout), *dq_strides,
            nheads_kv, group, seqlen_q, seqlen_k,
        ),
        dict(HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, ATOMIC_DQ=not deterministic, UPCAST=upcast,
             PRECISION=precision),
        prefit=(lambda t: _fit_fp32(dkdv_name, t, head_dim, config)) if fp32 else None,
    )
    if deterministic:
        _launch(
            _attn_bwd_dq_kernel, key, bcfg.dq, lambda t: (triton.cdiv(seqlen_q, t.block_m), batch * nheads),
            (
                q, k, v, do, dq, lse, delta, softmax_scale,
                *_bhsd_strides(q, layout), *_bhsd_strides(k, layout), *_bhsd_strides(v, layout),
                *_bhsd_strides(do, layout), *dq_strides, nheads, group, seqlen_q, seqlen_k,
            ),
            dict(HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, UPCAST=upcast, PRECISION=precision),
            prefit=(lambda t: _fit_fp32("dq", t, head_dim, config)) if fp32 else None,
        )
    else:
        dq_acc = dq_acc if layout == "bhsd" else dq_acc.transpose(1, 2)
        dq = torch.empty_like(q)
        dq.copy_(dq_acc)
    return dq, dk, dv


class FlashAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale, layout, config, deterministic):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = attn_fwd(q, k, v, causal, softmax_scale, layout, config)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.softmax_scale, ctx.layout = causal, softmax_scale, layout
        ctx.config, ctx.deterministic = config, deterministic
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attn_bwd(
            do, q, k, v, out, lse, ctx.causal, ctx.softmax_scale, ctx.layout, ctx.config, ctx.deterministic
        )
        return dq, dk, dv, None, None, None, None, None


# torch.compile: the kernels run behind two custom ops (opaque to the compiler, with fake implementations that give
# the outputs' shapes and strides), so `torch.compile(model, fullgraph=True)` traces attention without a graph break.
# Eager calls keep the autograd.Function above.
@torch.library.custom_op("fa2dist::attn_fwd", mutates_args=())
def _attn_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float, layout: str,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # `deterministic` only travels to the backward (through setup_context); the forward is the same in both modes.
    return attn_fwd(q, k, v, causal, softmax_scale, layout, select_config(q.device))


@_attn_fwd_op.register_fake
def _(q, k, v, causal, softmax_scale, layout, deterministic):
    batch, nheads, _, seqlen_q, _, _ = _dims(q, k, layout)
    return torch.empty_like(q), q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)


@torch.library.custom_op("fa2dist::attn_bwd", mutates_args=())
def _attn_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    softmax_scale: float,
    layout: str,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attn_bwd(do, q, k, v, out, lse, causal, softmax_scale, layout, select_config(q.device), deterministic)


@_attn_bwd_op.register_fake
def _(do, q, k, v, out, lse, causal, softmax_scale, layout, deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _op_setup_context(ctx, inputs, output):
    q, k, v, causal, softmax_scale, layout, deterministic = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal, ctx.softmax_scale, ctx.layout, ctx.deterministic = causal, softmax_scale, layout, deterministic


def _op_backward(ctx, do, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attn_bwd_op(
        _last_dim_contiguous(do), q, k, v, out, lse, ctx.causal, ctx.softmax_scale, ctx.layout, ctx.deterministic
    )
    return dq, dk, dv, None, None, None, None


_attn_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


@torch.compiler.assume_constant_result
def _compiled_mode(deterministic: bool | None) -> bool:
    # The switch reads a ContextVar, a global and the environment: evaluated once at trace time, so a compiled model
    # keeps the mode it was compiled under (recompile, or pass deterministic= explicitly, to change it).
    return resolve_deterministic(deterministic)[0]


def uses_kernels(device: torch.device) -> bool:
    """True where the Triton kernels run (CUDA, or CPU under TRITON_INTERPRET=1); else the PyTorch path."""
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    deterministic: bool | None = None,
    layout: str = "bshd",
    return_lse: bool = False,
    config: KernelsConfig | dict | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2: ``softmax(softmax_scale * q @ k^T [+ causal mask]) @ v`` without materialising the scores.

    Args:
        q: (batch, seqlen_q, nheads, headdim) for ``layout="bshd"`` (flash-attn's layout, the default), or
            (batch, nheads, seqlen_q, headdim) for ``layout="bhsd"`` (PyTorch SDPA's). Any strides with a unit
            stride in the head dim work without a copy.
        k, v: (batch, seqlen_k, nheads_kv, headdim) (or bhsd); nheads a multiple of nheads_kv (GQA/MQA; K/V are never
            repeated in memory).
        causal: causal mask aligned to the bottom-right corner (flash-attn >= 2.1): query i sees key j iff
            ``j <= i + seqlen_k - seqlen_q``; rows that see no key return 0.
        softmax_scale: defaults to 1/sqrt(headdim).
        deterministic: backward mode. True: bitwise reproducible, no atomics. False: sequence-parallel, atomic dQ
            accumulation, faster. None (default): the global switch decides (see ``fa2dist.set_deterministic``).
        layout: "bshd" or "bhsd", as above.
        return_lse: also return the log-sum-exp of each row, (batch, nheads, seqlen_q) float32 (natural log; +inf for
            rows that see no key).
        config: a ``KernelsConfig`` (or ``{(major, minor): config}`` dict) that replaces the device's own for this call.

    Dtypes: float16 and bfloat16 run natively with fp32 accumulation; float32 is multiplied in IEEE fp32 unless
    ``torch.backends.cuda.matmul.allow_tf32`` is True, then in TF32. The output has the inputs' dtype.
    On the CPU the same Triton kernels run in Triton's interpreter when ``TRITON_INTERPRET=1``; otherwise a PyTorch
    implementation with identical semantics (fp32 arithmetic) runs, so models using fa2dist train anywhere.
    """
    _check_inputs(q, k, v, layout)
    if not isinstance(causal, bool):
        raise TypeError(f"`causal={causal!r}` must be True or False.")
    head_dim = q.shape[-1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0
    elif not isinstance(softmax_scale, (int, float)) or not math.isfinite(softmax_scale):
        raise TypeError(f"`softmax_scale={softmax_scale!r}` must be a finite float or None (1/sqrt(headdim)).")
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"`deterministic={deterministic!r}` must be True, False or None (the global switch decides).")
    if torch.compiler.is_compiling() and uses_kernels(q.device) and config is None:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = _attn_fwd_op(q, k, v, causal, float(softmax_scale), layout, _compiled_mode(deterministic))
        return (out, lse) if return_lse else out
    if uses_kernels(q.device):
        mode, _ = resolve_deterministic(deterministic)
        cfg = select_config(q.device, config)  # refuses GPUs older than Turing with a clear message
        if head_dim > cfg.max_headdim:
            raise ValueError(
                f"head dim {head_dim} exceeds the {cfg.family} config's max_headdim={cfg.max_headdim}."
            )
        out, lse = FlashAttnFunction.apply(q, k, v, causal, float(softmax_scale), layout, cfg, mode)
    else:
        # The PyTorch path has one backward (autograd's, deterministic on the CPU): no mode to resolve.
        qh, kh, vh = (t if layout == "bhsd" else t.transpose(1, 2) for t in (q, k, v))
        out, lse = attention_reference(qh, kh, vh, causal=causal, softmax_scale=float(softmax_scale))
        if layout == "bshd":
            out = out.transpose(1, 2)
    return (out, lse) if return_lse else out
