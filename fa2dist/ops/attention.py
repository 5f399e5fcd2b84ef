"""Launchers (checks, grids, allocation) and the autograd Function behind ``fa2dist.flash_attention``."""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import NamedTuple

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4: no host-side tensor descriptors; the forward uses pointer loads
    TensorDescriptor = None

try:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from fa2dist.ops.kernels.hopper import (
        attn_bwd_dkdv_split_kernel,
        attn_bwd_dkdv_ws_kernel,
        attn_bwd_dq_ws_kernel,
        attn_fwd_ws_kernel,
        ws_bwd_tiles,
        ws_dq_permuted,
        ws_dq_tiles,
        ws_dynamic,
        ws_fused_dq,
        ws_interleave,
        ws_k_free,
        ws_launch_options,
        ws_output_buffer,
        ws_persistent,
        ws_row_shares,
        ws_split_tail,
        ws_tiles,
    )
except ImportError:  # a Triton without Gluon: the Triton kernels run everywhere
    attn_fwd_ws_kernel = attn_bwd_dkdv_ws_kernel = attn_bwd_dkdv_split_kernel = attn_bwd_dq_ws_kernel = None

from fa2dist.configs import MAX_HEADDIM, MIN_HEADDIM, BlockConfig, KernelsConfig, select_config
from fa2dist.determinism import resolve_deterministic
from fa2dist.ops import fit
from fa2dist.ops.kernels.backward import (
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess_kernel,
)
from fa2dist.ops.kernels.forward import _attn_fwd_kernel, _dropout_mask_kernel
from fa2dist.ops.reference import attention_reference, varlen_reference

# Read once, as Triton does when it decorates the kernels: with it set, the kernels above are interpreted on CPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LAYOUTS = ("bshd", "bhsd")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: The most programs a CUDA launch grid holds on its second and third axes: the kernels' grids are (tiles, heads,
#: batch), so batch and heads (and the sequences of a packed batch) are each bounded by it.
MAX_GRID_AXIS = 65535


def _cdiv(a: int, b: int) -> int:
    # Plain integer arithmetic: triton.cdiv goes through Triton's constexpr-function wrapper, a measurable share of
    # a short call's host time.
    return -(-a // b)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs are multiplied in IEEE fp32 (FMA dots, see _dot) so fp32 means fp32 accuracy, unless the user opted
    # into TF32 for matmuls; fp16/bf16 use the tensor cores directly with fp32 accumulation.
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
    if q.shape[0] > MAX_GRID_AXIS or hq > MAX_GRID_AXIS:
        raise ValueError(
            f"batch {q.shape[0]} and nheads {hq}: each must be at most {MAX_GRID_AXIS} (the kernels launch one grid "
            "axis per batch and per head); split the batch into several calls."
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

# fp32 tiles by head-dim tier. The configs' tiles are tuned for 2-byte inputs; in fp32 (IEEE: FMA dots, each tile's
# product held apart from the accumulator, see _dot) the same tiles run out of registers, and ptxas spills up to 32 KB
# per thread (the driver then reserves 8 GiB of local memory for a forward at head dim 128 on an H100). These tiles
# keep the spill stack at or under 3.7 KB per thread on sm_90 in every variant (aligned or ragged, causal or not;
# cross-compiled and measured with ptxas), and fit every family's shared memory.
FP32_TILES: dict[int, dict[str, BlockConfig]] = {
    64: dict(forward=BlockConfig(128, 64, 8, 2), dkdv=BlockConfig(16, 64, 4, 2),
             dkdv_atomic=BlockConfig(16, 64, 4, 2), dq=BlockConfig(64, 16, 4, 2)),
    128: dict(forward=BlockConfig(64, 32, 8, 2), dkdv=BlockConfig(16, 64, 8, 2),
              dkdv_atomic=BlockConfig(16, 64, 8, 2), dq=BlockConfig(64, 32, 8, 2)),
    256: dict(forward=BlockConfig(64, 16, 8, 1), dkdv=BlockConfig(16, 32, 4, 1),
              dkdv_atomic=BlockConfig(16, 64, 8, 1), dq=BlockConfig(32, 16, 4, 1)),
}


def _fit_fp32(name: str, cfg: BlockConfig, head_dim: int, config: KernelsConfig) -> BlockConfig:
    """The fp32 tiles of ``name`` for ``head_dim``, shrunk to the device's shared memory if needed."""
    cfg = next(tiles[name] for max_d, tiles in FP32_TILES.items() if head_dim <= max_d)
    # Ask the compiler's allocator (a fraction of a second per step) instead of launching and catching failures
    # (a full compile per step).
    if not config.shared_memory_bytes or getattr(config, "capability", None) is None:
        return cfg
    try:
        return fit.fit_block(name, cfg, head_dim, config.capability, config.shared_memory_bytes, torch.float32)
    except Exception:  # the launch below still shrinks on failure
        return cfg


def _launch(kernel, key: tuple, cfg: BlockConfig, grid, args, constexprs: dict, prefit=None) -> None:
    """Launch ``kernel`` with ``cfg``'s tiles (``args``: a tuple, or a function of the tiles, for arguments such as
    tensor descriptors whose blocks follow them); if the tiles need more shared memory than the GPU has (fp32
    inputs, a custom config), shrink them step by step (fewer stages, then smaller tiles; no timing involved, so the
    choice is the same in every run) and remember the tiles that fit. ``prefit(cfg)``, if given, runs once per key,
    before the first launch."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), *key, cfg)
    tiles = _fitted.get(key)
    if tiles is None:
        tiles = cfg = prefit(cfg) if prefit is not None else cfg
    while True:
        try:
            kernel[grid(tiles)](
                *(args(tiles) if callable(args) else args), **constexprs,
                BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
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


class Features(NamedTuple):
    """What one attention call computes beyond softmax(scale * q k^T) v; hashable, so it keys the tile cache.

    ``window_left``/``window_right`` are -1 where unbounded (causal sets ``window_right = 0``); ``softcap`` 0 and
    ``dropout_p`` 0 are off; ``alibi`` says slopes are given; ``varlen`` that sequences are packed (layout "thd").
    """

    softmax_scale: float
    window_left: int = -1
    window_right: int = -1
    softcap: float = 0.0
    alibi: bool = False
    dropout_p: float = 0.0
    varlen: bool = False

    def constexprs(self) -> dict:
        """The kernels' feature flags (one shared dict per distinct Features: do not modify it)."""
        return _feature_constexprs(self)

    def scalars(self) -> tuple:
        """sm_scale, cap_in, cap_out, dropout_p, dropout_scale: the kernels' float arguments."""
        cap_in = self.softmax_scale / self.softcap if self.softcap > 0 else 0.0
        cap_out = self.softcap * _LOG2E if self.softcap > 0 else 0.0
        dropout_scale = 1.0 / (1.0 - self.dropout_p)
        return self.softmax_scale, cap_in, cap_out, self.dropout_p, dropout_scale

    def flags(self) -> tuple:
        """The part of the features that changes the compiled kernel (for the tile cache)."""
        return tuple(_feature_constexprs(self).values())


@functools.lru_cache(maxsize=256)
def _feature_constexprs(feats: Features) -> dict:
    return dict(
        VARLEN=feats.varlen, HAS_LEFT=feats.window_left >= 0, HAS_RIGHT=feats.window_right >= 0,
        SOFTCAP=feats.softcap > 0, ALIBI=feats.alibi, DROPOUT=feats.dropout_p > 0,
    )


_LOG2E = 1.4426950408889634


def _strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, head, seq) strides in elements; "thd" (packed varlen) has no batch stride."""
    if layout == "thd":
        return 0, t.stride(1), t.stride(0)
    return _bhsd_strides(t, layout)


def _shape(q, k, layout, cu_q, max_q, max_k):
    """batch, nheads, nheads_kv, seqlen_q, seqlen_k (the maxima for varlen), head_dim."""
    if layout == "thd":
        return cu_q.numel() - 1, q.shape[1], k.shape[1], max_q, max_k, q.shape[2]
    return _dims(q, k, layout)


def _lse_strides(lse: torch.Tensor, layout: str) -> tuple[int, int]:
    # Dense: (batch, nheads, seqlen_q). Varlen: (nheads, total_q), no batch stride (rows are offset by the starts).
    return (0, lse.stride(0)) if layout == "thd" else (lse.stride(0), lse.stride(1))


def _extras(cu_q, cu_k, alibi_slopes, seed):
    """The optional pointer arguments (None where unused: Triton specialises them away) and the ALiBi batch stride."""
    stride_az = alibi_slopes.stride(0) if alibi_slopes is not None and alibi_slopes.dim() == 2 else 0
    return (cu_q, cu_k, alibi_slopes, seed), stride_az


def _check_offsets(tensors, layout: str, seqlen_q: int, seqlen_k: int) -> None:
    """The kernels address rows inside one sequence with 32-bit offsets (64-bit per-element offsets cost the MMA
    pipelining on sm_90); batch, head and sequence starts are 64-bit. Refuse inputs whose offsets would overflow."""
    longest = max(seqlen_q, seqlen_k) + 256  # + one tile past the end
    if longest * max(max(t.stride()) for _, t in tensors) < 2**31 - 2**16:
        return  # no in-sequence offset can reach 2^31 (the common case: one check, no per-layout strides)
    for name, t in tensors:
        if longest * abs(_strides(t, layout)[2]) + t.shape[-1] >= 2**31:
            raise ValueError(
                f"`{name}` is too long for one sequence: seqlen {max(seqlen_q, seqlen_k)} x row stride "
                f"{_strides(t, layout)[2]} elements exceeds the kernels' 32-bit in-sequence offsets. Use "
                "layout='bhsd' (row stride = headdim), or split the sequence."
            )


def new_seed(device: torch.device) -> torch.Tensor:
    """A dropout seed drawn from torch's default generator of ``device`` (so ``torch.manual_seed`` fixes it), kept
    on the device: no host synchronisation, and CUDA-graph safe."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feats: Features,
    layout: str,
    config: KernelsConfig,
    cu_q: torch.Tensor | None = None,
    cu_k: torch.Tensor | None = None,
    max_q: int = 0,
    max_k: int = 0,
    alibi_slopes: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel. Returns (out like q, lse fp32: (batch, nheads, seqlen_q), or (nheads, total_q) for
    layout "thd")."""
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = _shape(q, k, layout, cu_q, max_q, max_k)
    if layout == "thd":
        # Packed tokens past cu_seqlens_q[-1] belong to no sequence and are never written: 0, LSE +inf.
        out = torch.zeros_like(q)
        lse = torch.full((nheads, q.shape[0]), float("inf"), device=q.device, dtype=torch.float32)
    else:
        out = torch.empty_like(q)
        lse = torch.empty((batch, nheads, seqlen_q), device=q.device, dtype=torch.float32)
    if out.numel() == 0 or batch == 0 or seqlen_q == 0:
        return out, lse
    if k.numel() == 0 or seqlen_k == 0:
        out.zero_()
        lse.fill_(float("inf"))
        return out, lse
    _check_offsets((("q", q), ("k", k), ("v", v), ("out", out)), layout, seqlen_q, seqlen_k)
    block_d = fit.block_d_for(head_dim)
    upcast = INTERPRET and q.dtype == torch.bfloat16
    fp32 = q.dtype == torch.float32 and q.device.type == "cuda"
    pointers, stride_az = _extras(cu_q, cu_k, alibi_slopes, seed)
    tma = config.tma and _tma_ready(layout, q, k, v, out)
    ws_ready = tma or (config.tma and layout == "thd" and _tma_ready(layout, q, k, v, out, packed=True))
    if config.warp_specialize and ws_ready and _warp_specialized(q, head_dim, seqlen_k, feats):
        try:
            _attn_fwd_ws(q, k, v, out, lse, feats, layout, batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim,
                         cu_q, cu_k)
            return out, lse
        except _GLUON_ERRORS as err:
            _gluon_failed("forward", err)

    def args(t: BlockConfig) -> tuple:
        tensors = (q, k, v, out)
        if tma:
            tensors = _descriptors(
                block_d, (q, layout, t.block_m), (k, layout, t.block_n), (v, layout, t.block_n),
                (out, layout, t.block_m),
            )
        return (
            *tensors, lse, *pointers, *feats.scalars(),
            *_strides(q, layout), *_strides(k, layout), *_strides(v, layout), *_strides(out, layout),
            *_lse_strides(lse, layout), stride_az,
            nheads, nheads // nheads_kv, seqlen_q, seqlen_k, max(feats.window_left, 0), max(feats.window_right, 0),
        )

    _launch(
        _attn_fwd_kernel, (q.device, q.dtype, head_dim, feats.flags(), tma), config.forward_for(head_dim),
        lambda t: (_cdiv(seqlen_q, t.block_m), nheads, batch), args,
        dict(HEAD_DIM=head_dim, BLOCK_D=block_d, **feats.constexprs(), UPCAST=upcast, PRECISION=_precision(q.dtype),
             TMA=tma),
        prefit=(lambda t: _fit_fp32("forward", t, head_dim, config)) if fp32 else None,
    )
    return out, lse


_ws_error: str | None = None  # why a warp-specialised kernel failed to compile, if one did
# Gluon is experimental: a Triton whose Gluon differs from the one these kernels were written for (3.6) runs the
# Triton kernels instead, with one warning.
_GLUON_ERRORS = (CompilationError, OutOfResources, AttributeError, TypeError)


def _gluon_failed(what: str, err: Exception) -> None:
    global _ws_error
    _ws_error = f"{type(err).__name__}: {err}"
    warnings.warn(f"fa2dist: the warp-specialised {what} does not compile here ({_ws_error[:300]}); using the Triton "
                  "kernels.", stacklevel=3)


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _warp_specialized(q: torch.Tensor, head_dim: int, seqlen_k: int, feats: Features) -> bool:
    """Whether this forward runs the warp-specialised Hopper kernel: a head dim and length it has tiles for
    (``hopper.WS_TILES``) and :func:`_hopper_kernels_apply`. The caller has checked that the tensors suit tensor
    descriptors."""
    span = _key_span(feats, seqlen_k)
    return _hopper_kernels_apply(q, feats) and ws_tiles(head_dim, span, _banded(feats)) is not None


def _hopper_kernels_apply(q: torch.Tensor, feats: Features) -> bool:
    """Gluon kernels available and compiling, fp16/bf16 on an sm_90 GPU, attention without scores beyond q.k
    (causal or not, any sliding window, padded or packed sequences; no softcap, ALiBi or dropout) with a positive
    scale."""
    return (
        attn_fwd_ws_kernel is not None and _ws_error is None and not INTERPRET
        and q.dtype in (torch.float16, torch.bfloat16) and feats.softmax_scale > 0
        and feats.softcap == 0 and not feats.alibi and feats.dropout_p == 0 and _capability(q.device) == (9, 0)
    )


def _banded(feats: Features) -> bool:
    """Whether the Hopper kernels run this call as causal (their CAUSAL): keys bounded on the right, at
    ``window_right`` past each row's diagonal (0: causal attention)."""
    return feats.window_right >= 0


def _window_args(feats: Features) -> dict:
    """The Hopper kernels' window arguments: the right bound (with CAUSAL, ``_banded``) and the left one."""
    return dict(LEFT=max(feats.window_left, 0), RIGHT=max(feats.window_right, 0), HAS_LEFT=feats.window_left >= 0)


def _packed_args(cu_q, cu_k, out, dummy, varlen: bool, name="O", head="stride_oh", row="stride_om") -> dict:
    """The Hopper kernels' packed-sequence arguments: the cumulative lengths, and the output a sequence's last rows
    are stored into one by one (``name``, with its head and row strides); for padded batches, unread placeholders."""
    if varlen:
        return {"CU_Q": cu_q, "CU_K": cu_k, name: out, head: out.stride(1), row: out.stride(0), "VARLEN": True}
    return {"CU_Q": dummy, "CU_K": dummy, name: out, head: 0, row: 0, "VARLEN": False}


def _key_span(feats: Features, seqlen_k: int) -> int:
    """The most keys one query row sees: the window's width where both sides are bounded, else seqlen_k. The Hopper
    forward's tiles and grid follow it (``hopper.ws_tiles`` and the tables beside it): a 256-key window over 16k keys
    runs like attention over 256 keys."""
    if feats.window_left >= 0 and feats.window_right >= 0:
        return max(min(seqlen_k, feats.window_left + feats.window_right + 1), 1)
    return seqlen_k


@functools.cache
def _ws_layout(rows: int, cols: int, dtype: torch.dtype):
    gl_dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}[dtype]
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, cols], gl_dtype)


def _attn_fwd_ws(q, k, v, out, lse, feats, layout, batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim, cu_q=None,
                 cu_k=None) -> None:
    """Launch the warp-specialised forward (fa2dist/ops/kernels/hopper.py): O into ``out``, LSE into ``lse``. Packed
    sequences (layout "thd", ``cu_q``/``cu_k``): seqlen_q and seqlen_k are the longest, one tile a program."""
    causal = _banded(feats)
    span = _key_span(feats, seqlen_k)
    block_m, block_n, stages, ctas = ws_tiles(head_dim, span, causal)
    # Each compute warpgroup loads its own 64 rows of Q and stores its 64 rows of O.
    descs = _ws_descriptors(layout, head_dim, (q, 64), (k, block_n), (v, block_n), (out, 64))
    n_tiles = _cdiv(seqlen_q, block_m)
    # A persistent grid: as many programs as fit on the GPU at once, each taking every so-many-th tile, or (dynamic)
    # drawing its next tile from a counter as it comes free.
    varlen = layout == "thd"
    dynamic = not varlen and ws_dynamic(head_dim, causal, span)
    persistent = dynamic or (not varlen and ws_persistent(head_dim, causal, span))
    grid = (min(n_tiles * nheads * batch, _sm_count(q.device) * ctas),) if persistent else (n_tiles, nheads, batch)
    counter = _tile_counter(q.device) if dynamic else lse  # (unread where not dynamic)
    window = _window_args(feats)
    # Split tail: each program's part of the tiles past the last whole round; its flags (fresh zeros: launches on
    # other streams keep theirs) and the writers' unnormalised parts.
    # (The kernel counts the tail's key tiles times the programs in 32 bits.)
    split = (persistent and not dynamic and not window["HAS_LEFT"]
             and ws_split_tail(head_dim, causal, span, n_tiles * nheads * batch, grid[0])
             and grid[0] ** 2 * _cdiv(seqlen_k, block_n) < 2**31)
    partial = lse
    if split:
        counter = torch.zeros(grid[0] * block_m // 64, dtype=torch.int32, device=q.device)
        partial = torch.empty(counter.numel() * 64 * (head_dim + 2), dtype=torch.float32, device=q.device)
    attn_fwd_ws_kernel[grid](
        *descs, lse, counter, feats.softmax_scale, *_lse_strides(lse, layout), nheads // nheads_kv, nheads, batch,
        seqlen_q, seqlen_k, **window, **_packed_args(cu_q, cu_k, out, lse, varlen), PARTIAL=partial,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=causal,
        INTERLEAVE=ws_interleave(head_dim, span), PERSISTENT=persistent, DYNAMIC=dynamic,
        O_BUF=ws_output_buffer(head_dim, span), K_FREE=ws_k_free(stages), ROW_SHARES=ws_row_shares(head_dim),
        SPLIT_TAIL=split, num_warps=4, **ws_launch_options(block_m, ctas),
    )


def _tile_counter(device: torch.device) -> torch.Tensor:
    """A dynamic forward's tile counter, zero at launch. The kernel leaves it at zero, but a fresh one per call keeps
    launches on concurrent streams (or after a failed launch) apart; its fill costs about as much as a cached one
    saved (benchmarks/results/h100-2026-11-27-dynamic)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _ws_descriptors(layout: str, cols: int, *specs) -> list:
    """Gluon tensor descriptors over (batch, heads, seqlen, head dim) views of ``(tensor, rows)`` specs, with blocks
    of ``rows`` rows of one head, ``cols`` wide."""
    return [
        GluonTensorDescriptor(x, *_bhsd_view(x, layout), [1, 1, rows, cols], _ws_layout(rows, cols, x.dtype))
        for x, rows in specs
    ]


def _attn_bwd_dkdv_ws(q, k, v, do, dk, dv, dq_acc, lse, delta, feats, layout, batch, nheads_kv, group, seqlen_q,
                      seqlen_k, head_dim, dq_permuted=False, cu_q=None, cu_k=None) -> None:
    """Launch the warp-specialised dK/dV kernel (fa2dist/ops/kernels/hopper.py) into dk, dv, and with an fp32
    ``dq_acc`` ((batch, heads, seqlen_q, head dim), zeros) adding dQ into it; with ``dq_permuted`` its rows go in
    permuted within groups of 8, and ``dq_acc`` has seqlen_q rounded up to a multiple of 8 rows. Packed sequences
    (layout "thd", ``cu_q``/``cu_k``, no ``dq_acc``): seqlen_q and seqlen_k are the longest."""
    causal = _banded(feats)
    block_m, block_n, stages = ws_bwd_tiles(head_dim, causal)
    packed = _packed_bwd_args(cu_q, cu_k, dk, dv, lse, layout == "thd")
    if head_dim > 128:  # both computing warpgroups share the program's keys: one computes dV, the other dK
        attn_bwd_dkdv_split_kernel[(_cdiv(seqlen_k, block_n), nheads_kv, batch)](
            *_ws_descriptors(layout, head_dim, (q, block_m), (k, block_n), (v, block_n), (do, block_m),
                             (dk, block_n), (dv, block_n)),
            lse, delta, feats.softmax_scale, *_lse_strides(lse, layout), group, seqlen_q, seqlen_k,
            **_window_args(feats), **packed, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages,
            CAUSAL=causal, num_warps=4,
        )
        return
    # Each of the two computing warpgroups loads its own block_n / 2 keys and stores their dK and dV.
    descs = _ws_descriptors(layout, head_dim, (q, block_m), (k, block_n // 2), (v, block_n // 2), (do, block_m),
                            (dk, block_n // 2), (dv, block_n // 2))
    if dq_acc is None:
        descs.append(descs[-1])  # unused
    else:  # the first computing warpgroup adds each query tile's dQ, all columns
        descs += _ws_descriptors("bhsd", head_dim, (dq_acc, block_m))
    attn_bwd_dkdv_ws_kernel[(_cdiv(seqlen_k, block_n), nheads_kv, batch)](
        *descs, lse, delta, feats.softmax_scale, *_lse_strides(lse, layout), group, seqlen_q, seqlen_k,
        **_window_args(feats), **packed, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages,
        CAUSAL=causal, ATOMIC_DQ=dq_acc is not None, DQ_PERMUTED=dq_permuted, num_warps=4,
    )


def _packed_bwd_args(cu_q, cu_k, dk, dv, dummy, varlen: bool) -> dict:
    """The dK/dV kernels' packed-sequence arguments (``_packed_args``): dK and dV share their strides."""
    return {**_packed_args(cu_q, cu_k, dk, dummy, varlen, "DK", "stride_kh", "stride_km"), "DV": dv}


def _attn_bwd_dq_ws(q, k, v, do, dq, lse, delta, feats, layout, batch, nheads, group, seqlen_q, seqlen_k,
                    head_dim, cu_q=None, cu_k=None) -> None:
    """Launch the warp-specialised dQ kernel (fa2dist/ops/kernels/hopper.py) into dq (packed sequences as
    ``_attn_bwd_dkdv_ws``)."""
    block_m, block_n, stages = ws_dq_tiles(head_dim)
    # Each of the two computing warpgroups loads its own block_m / 2 rows of Q and dO and stores their dQ.
    rows = block_m // 2
    attn_bwd_dq_ws_kernel[(_cdiv(seqlen_q, block_m), nheads, batch)](
        *_ws_descriptors(layout, head_dim, (q, rows), (k, block_n), (v, block_n), (do, rows), (dq, rows)),
        lse, delta, feats.softmax_scale, *_lse_strides(lse, layout), group, seqlen_q, seqlen_k,
        **_window_args(feats), **_packed_args(cu_q, cu_k, dq, lse, layout == "thd", "DQ", "stride_qh", "stride_qm"),
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, STAGES=stages, CAUSAL=_banded(feats), num_warps=4,
    )


def _bhsd_view(x: torch.Tensor, layout: str) -> tuple[list[int], list[int]]:
    """Shape and strides of a dense 4-D tensor in ``layout`` seen as (batch, heads, seqlen, head dim); packed
    sequences ("thd": (tokens, heads, head dim)) as one batch item of all the tokens."""
    if layout == "thd":
        return [1, x.shape[1], x.shape[0], x.shape[2]], [x.numel(), x.stride(1), x.stride(0), 1]
    heads, seqlen = (x.shape[2], x.shape[1]) if layout == "bshd" else (x.shape[1], x.shape[2])
    return [x.shape[0], heads, seqlen, x.shape[3]], [*_bhsd_strides(x, layout), 1]


def _descriptors(block_d: int, *specs) -> tuple:
    """Tensor descriptors over (batch, heads, seqlen, head dim) views of dense ``(tensor, layout, rows)`` specs,
    with blocks of ``rows`` rows of one head, ``block_d`` wide (the copy engine zero-fills past the head dim)."""
    return tuple(TensorDescriptor(x, *_bhsd_view(x, layout), [1, 1, rows, block_d]) for x, layout, rows in specs)


def _tma_ready(layout: str, *tensors: torch.Tensor, packed: bool = False) -> bool:
    """Whether tensor descriptors can address these fp16/bf16 tensors: 16-byte aligned base and strides. Packed
    sequences (layout "thd") only where the kernel takes them (``packed``: the Hopper kernels)."""
    if TensorDescriptor is None or tensors[0].dtype not in (torch.float16, torch.bfloat16):
        return False
    if not (tensors[0].is_cuda or INTERPRET) or (layout == "thd" and not packed):
        return False
    size = tensors[0].element_size()
    first = 1 if layout == "thd" else 0  # no batch stride
    return all(
        t.data_ptr() % 16 == 0 and t.stride(-1) == 1
        and all(s > 0 and s * size % 16 == 0 for s in _strides(t, layout)[first:])
        for t in tensors
    )


def attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    feats: Features,
    layout: str,
    config: KernelsConfig,
    deterministic: bool,
    cu_q: torch.Tensor | None = None,
    cu_k: torch.Tensor | None = None,
    max_q: int = 0,
    max_k: int = 0,
    alibi_slopes: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels in the given mode. Returns (dq, dk, dv) with the inputs' shapes and strides."""
    batch, nheads, nheads_kv, seqlen_q, seqlen_k, head_dim = _shape(q, k, layout, cu_q, max_q, max_k)
    do = _last_dim_contiguous(do)
    # Packed tokens outside every sequence get no gradient from the kernels: start from zeros.
    new = torch.zeros_like if layout == "thd" else torch.empty_like
    dk = new(k)
    dv = new(v)
    if q.numel() == 0 or k.numel() == 0 or batch == 0 or seqlen_q == 0 or seqlen_k == 0:
        return torch.zeros_like(q), dk.zero_(), dv.zero_()
    _check_offsets((("grad_out", do),), layout, seqlen_q, seqlen_k)
    group = nheads // nheads_kv
    block_d = fit.block_d_for(head_dim)
    upcast = INTERPRET and q.dtype == torch.bfloat16
    precision = _precision(q.dtype)

    # delta = rowsum(O * dO) is laid out like the LSE; packed sequences are one long sequence to it.
    delta = torch.empty_like(lse)
    pre_block = 64
    pre_batch, pre_len = (1, q.shape[0]) if layout == "thd" else (batch, seqlen_q)
    _attn_bwd_preprocess_kernel[(_cdiv(pre_len, pre_block), nheads, pre_batch)](
        out, do, delta, *_strides(out, layout), *_strides(do, layout), nheads, pre_len,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_block,
    )
    tma = config.tma and _tma_ready(layout, q, k, v, do)
    varlen = layout == "thd"
    causal = _banded(feats)
    ws = (
        config.tma and config.warp_specialize and ws_bwd_tiles(head_dim, causal) is not None
        and _hopper_kernels_apply(q, feats) and _tma_ready(layout, q, k, v, do, dk, dv, packed=True)
        and (not varlen or dk.stride() == dv.stride())
    )
    if ws:
        # The sequence-parallel mode, where that pays: dQ too, added by the copy engine into an fp32 buffer (not for
        # packed sequences: the copy engine's adds would reach past a sequence's end).
        fused = not deterministic and not varlen and ws_fused_dq(head_dim, causal, _key_span(feats, seqlen_k))
        permuted = fused and ws_dq_permuted(head_dim)
        rows = _cdiv(seqlen_q, 8) * 8 if permuted else seqlen_q
        dq_acc = q.new_zeros((batch, nheads, rows, head_dim), dtype=torch.float32) if fused else None
        try:
            _attn_bwd_dkdv_ws(q, k, v, do, dk, dv, dq_acc, lse, delta, feats, layout, batch, nheads_kv, group,
                              seqlen_q, seqlen_k, head_dim, permuted, cu_q, cu_k)
            if dq_acc is not None:
                return _from_dq_acc(dq_acc, q, layout, permuted), dk, dv
            deterministic = True
        except _GLUON_ERRORS as err:
            _gluon_failed("backward", err)
            ws = False
    # Where atomics do not pay (`KernelsConfig.atomic_dq=False`: the H100), the sequence-parallel mode runs the
    # deterministic kernels (so it does after the warp-specialised dK/dV kernel without ATOMIC_DQ).
    deterministic = deterministic or not config.atomic_dq
    bcfg = config.backward_for(head_dim, deterministic)
    if deterministic:
        dq = new(q)
        dq_acc = dq  # unused by the dK/dV kernel when ATOMIC_DQ is False
        dq_strides = _strides(dq, layout)
    else:
        if layout == "thd":
            dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
            dq_strides = _strides(dq_acc, layout)
        else:
            dq_acc = torch.zeros((batch, nheads, seqlen_q, head_dim), device=q.device, dtype=torch.float32)
            dq_strides = (dq_acc.stride(0), dq_acc.stride(1), dq_acc.stride(2))

    # Reductions through descriptors: not in Triton's interpreter (it has no descriptor reduce).
    tma_dq = tma and not deterministic and not INTERPRET
    key = (q.device, q.dtype, head_dim, feats.flags(), deterministic, tma)
    fp32 = q.dtype == torch.float32 and q.device.type == "cuda"
    dkdv_name = "dkdv" if deterministic else "dkdv_atomic"
    pointers, stride_az = _extras(cu_q, cu_k, alibi_slopes, seed)
    tail = (
        *_lse_strides(lse, layout), stride_az,
    )
    windows = (max(feats.window_left, 0), max(feats.window_right, 0))
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, **feats.constexprs(), UPCAST=upcast, PRECISION=precision)

    def dkdv_args(t: BlockConfig) -> tuple:
        q_, do_, dq_ = q, do, dq_acc
        if tma:
            q_, do_ = _descriptors(block_d, (q, layout, t.block_m), (do, layout, t.block_m))
        if tma_dq:
            (dq_,) = _descriptors(block_d, (dq_acc, "bhsd", t.block_m))  # fp32 (batch, heads, seqlen, d)
        return (
            q_, k, v, do_, dk, dv, dq_, lse, delta, *pointers, *feats.scalars(),
            *_strides(q, layout), *_strides(k, layout), *_strides(v, layout),
            *_strides(do, layout), *_strides(dk, layout), *_strides(dv, layout), *dq_strides, *tail,
            nheads_kv, group, seqlen_q, seqlen_k, *windows,
        )

    if not ws:
        _launch(
            _attn_bwd_dkdv_kernel, key, bcfg.dkdv, lambda t: (_cdiv(seqlen_k, t.block_n), nheads_kv, batch),
            dkdv_args,
            # Every tile size is a power of two <= 256, so a multiple of 256 leaves no key block with a tail.
            dict(constexprs, ATOMIC_DQ=not deterministic, KEY_TAIL=feats.varlen or seqlen_k % 256 != 0, TMA=tma,
                 TMA_DQ=tma_dq),
            prefit=(lambda t: _fit_fp32(dkdv_name, t, head_dim, config)) if fp32 else None,
        )
    if deterministic and ws and ws_dq_tiles(head_dim) is not None:
        try:
            _attn_bwd_dq_ws(q, k, v, do, dq, lse, delta, feats, layout, batch, nheads, group, seqlen_q, seqlen_k,
                            head_dim, cu_q, cu_k)
            return dq, dk, dv
        except _GLUON_ERRORS as err:
            _gluon_failed("backward", err)
    if deterministic:

        def dq_args(t: BlockConfig) -> tuple:
            k_, v_ = _descriptors(block_d, (k, layout, t.block_n), (v, layout, t.block_n)) if tma else (k, v)
            return (
                q, k_, v_, do, dq, lse, delta, *pointers, *feats.scalars(),
                *_strides(q, layout), *_strides(k, layout), *_strides(v, layout),
                *_strides(do, layout), *dq_strides, *tail, nheads, group, seqlen_q, seqlen_k, *windows,
            )

        _launch(
            _attn_bwd_dq_kernel, key, bcfg.dq, lambda t: (_cdiv(seqlen_q, t.block_m), nheads, batch), dq_args,
            dict(constexprs, TMA=tma),
            prefit=(lambda t: _fit_fp32("dq", t, head_dim, config)) if fp32 else None,
        )
    else:
        dq = _from_dq_acc(dq_acc, q, layout)
    return dq, dk, dv


def _from_dq_acc(dq_acc: torch.Tensor, q: torch.Tensor, layout: str, permuted: bool = False) -> torch.Tensor:
    """dQ in q's dtype, shape and strides from the fp32 accumulator ((batch, heads, seqlen, d), or q's shape).
    ``permuted``: the accumulator has seqlen rounded up to a multiple of 8 rows, and row 8a + 4b + c of dQ is in its
    row 8a + 2c + b (the fused Hopper backward's ``DQ_PERMUTED``)."""
    dq = torch.empty_like(q)
    if not permuted:
        dq.copy_(dq_acc.transpose(1, 2) if layout == "bshd" else dq_acc)
        return dq
    target = dq.transpose(1, 2) if layout == "bshd" else dq  # (batch, heads, seqlen, d)
    seqlen = target.shape[2]
    whole = seqlen // 8 * 8
    # Row 8a + 2c + b of the accumulator, as [a, c, b], transposed to [a, b, c]: rows in dQ's order, 8 at a time.
    groups = dq_acc.unflatten(2, (-1, 4, 2)).transpose(3, 4)
    target[:, :, :whole].unflatten(2, (-1, 2, 4)).copy_(groups[:, :, : whole // 8])
    if whole < seqlen:
        target[:, :, whole:].copy_(groups[:, :, whole // 8].flatten(2, 3)[:, :, : seqlen - whole])
    return dq


def _optional(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.numel() > 0 else None


class FlashAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, alibi_slopes, feats, max_q, max_k, layout, config, deterministic):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        seed = new_seed(q.device) if feats.dropout_p > 0 else None
        extra = dict(cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k, alibi_slopes=alibi_slopes, seed=seed)
        out, lse = attn_fwd(q, k, v, feats, layout, config, **extra)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi_slopes, seed)
        ctx.feats, ctx.max_q, ctx.max_k, ctx.layout = feats, max_q, max_k, layout
        ctx.config, ctx.deterministic = config, deterministic
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, out, lse, cu_q, cu_k, alibi_slopes, seed = ctx.saved_tensors
        dq, dk, dv = attn_bwd(
            do, q, k, v, out, lse, ctx.feats, ctx.layout, ctx.config, ctx.deterministic,
            cu_q=cu_q, cu_k=cu_k, max_q=ctx.max_q, max_k=ctx.max_k, alibi_slopes=alibi_slopes, seed=seed,
        )
        return dq, dk, dv, *([None] * 9)


# torch.compile: the kernels run behind two custom ops (opaque to the compiler, with fake implementations that give
# the outputs' shapes and strides), so `torch.compile(model, fullgraph=True)` traces attention without a graph break.
# The forward op draws the dropout seed itself (a device tensor, returned for the backward), so no Python-side
# randomness enters the graph. Eager calls keep the autograd.Function above.
@torch.library.custom_op("fa2dist::attn_fwd", mutates_args=())
def _attn_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    max_q: int,
    max_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    dropout_p: float,
    layout: str,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # `deterministic` only travels to the backward (through setup_context); the forward is the same in both modes.
    feats = Features(softmax_scale, window_left, window_right, softcap, alibi_slopes is not None, dropout_p,
                     layout == "thd")
    seed = new_seed(q.device) if dropout_p > 0 else q.new_empty(0, dtype=torch.int64)
    out, lse = attn_fwd(q, k, v, feats, layout, select_config(q.device), cu_q=cu_q, cu_k=cu_k, max_q=max_q,
                        max_k=max_k, alibi_slopes=alibi_slopes, seed=_optional(seed))
    return out, lse, seed


@_attn_fwd_op.register_fake
def _(q, k, v, cu_q, cu_k, alibi_slopes, max_q, max_k, softmax_scale, window_left, window_right, softcap, dropout_p,
      layout, deterministic):
    batch, nheads, _, seqlen_q, _, _ = _shape(q, k, layout, cu_q, max_q, max_k)
    lse_shape = (nheads, q.shape[0]) if layout == "thd" else (batch, nheads, seqlen_q)
    seed = q.new_empty(1 if dropout_p > 0 else 0, dtype=torch.int64)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32), seed


@torch.library.custom_op("fa2dist::attn_bwd", mutates_args=())
def _attn_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    max_q: int,
    max_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    dropout_p: float,
    layout: str,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = Features(softmax_scale, window_left, window_right, softcap, alibi_slopes is not None, dropout_p,
                     layout == "thd")
    return attn_bwd(do, q, k, v, out, lse, feats, layout, select_config(q.device), deterministic, cu_q=cu_q,
                    cu_k=cu_k, max_q=max_q, max_k=max_k, alibi_slopes=alibi_slopes, seed=_optional(seed))


@_attn_bwd_op.register_fake
def _(do, q, k, v, out, lse, seed, cu_q, cu_k, alibi_slopes, max_q, max_k, softmax_scale, window_left,
      window_right, softcap, dropout_p, layout, deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _op_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, alibi_slopes, *rest = inputs
    out, lse, seed = output
    ctx.save_for_backward(q, k, v, out, lse, seed, cu_q, cu_k, alibi_slopes)
    ctx.rest = rest


def _op_backward(ctx, do, _dlse, _dseed):
    q, k, v, out, lse, seed, cu_q, cu_k, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = _attn_bwd_op(_last_dim_contiguous(do), q, k, v, out, lse, seed, cu_q, cu_k, alibi_slopes, *ctx.rest)
    return dq, dk, dv, *([None] * 12)


_attn_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


@torch.compiler.assume_constant_result
def _compiled_mode(deterministic: bool | None) -> bool:
    # The switch reads a ContextVar, a global and the environment: evaluated once at trace time, so a compiled model
    # keeps the mode it was compiled under (recompile, or pass deterministic= explicitly, to change it).
    return resolve_deterministic(deterministic)[0]


def uses_kernels(device: torch.device) -> bool:
    """True where the Triton kernels run (CUDA, or CPU under TRITON_INTERPRET=1); else the PyTorch path."""
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


def _check_features(
    q: torch.Tensor, batch: int, nheads: int, window_size, softcap, alibi_slopes, dropout_p, causal, softmax_scale,
    deterministic,
) -> tuple[float, int, int]:
    """Validate the feature arguments; returns (softmax_scale, window_left, window_right)."""
    if not isinstance(causal, bool):
        raise TypeError(f"`causal={causal!r}` must be True or False.")
    head_dim = q.shape[-1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not math.isfinite(
        softmax_scale
    ):
        raise TypeError(f"`softmax_scale={softmax_scale!r}` must be a finite float or None (1/sqrt(headdim)).")
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"`deterministic={deterministic!r}` must be True, False or None (the global switch decides).")
    if (
        not isinstance(window_size, (tuple, list))
        or len(window_size) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window_size)
    ):
        raise ValueError(
            f"`window_size={window_size!r}` must be a pair (left, right) of ints >= 0, or -1 for an unbounded side; "
            "(-1, -1) is full attention."
        )
    left, right = window_size
    if causal:
        right = 0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not (softcap >= 0 and math.isfinite(softcap)):
        raise ValueError(f"`softcap={softcap!r}` must be a finite float >= 0 (0 turns it off; Gemma 2 uses 50.0).")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"`dropout_p={dropout_p!r}` must be a float in [0, 1); pass 0.0 in evaluation.")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor):
            raise TypeError(f"`alibi_slopes` must be a torch.Tensor or None, got {type(alibi_slopes).__name__}.")
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(
                f"`alibi_slopes` must be float32, got {alibi_slopes.dtype}; use `alibi_slopes.float()`."
            )
        if alibi_slopes.shape not in ((nheads,), (batch, nheads)):
            raise ValueError(
                f"`alibi_slopes` must have shape (nheads,) = ({nheads},) or (batch, nheads) = ({batch}, {nheads}), "
                f"got {tuple(alibi_slopes.shape)}."
            )
        if alibi_slopes.device != q.device:
            raise ValueError(f"`alibi_slopes` is on {alibi_slopes.device}, q on {q.device}; move it to q's device.")
    return float(softmax_scale), left, right


def _run(q, k, v, feats, layout, deterministic, config, cu_q=None, cu_k=None, max_q=0, max_k=0, alibi_slopes=None):
    """Dispatch to the compiled op, the autograd Function over the kernels, or (returns None) the PyTorch path."""
    if alibi_slopes is not None:
        alibi_slopes = _last_dim_contiguous(alibi_slopes)
    kernels = uses_kernels(q.device)
    if torch.compiler.is_compiling() and kernels and config is None:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse, _ = _attn_fwd_op(
            q, k, v, cu_q, cu_k, alibi_slopes, max_q, max_k, feats.softmax_scale, feats.window_left,
            feats.window_right, feats.softcap, feats.dropout_p, layout, _compiled_mode(deterministic),
        )
        return out, lse
    if kernels:
        mode, _ = resolve_deterministic(deterministic)
        cfg = select_config(q.device, config)  # refuses GPUs older than Turing with a clear message
        head_dim = q.shape[-1]
        if head_dim > cfg.max_headdim:
            raise ValueError(f"head dim {head_dim} exceeds the {cfg.family} config's max_headdim={cfg.max_headdim}.")
        return FlashAttnFunction.apply(q, k, v, cu_q, cu_k, alibi_slopes, feats, max_q, max_k, layout, cfg, mode)
    return None


def flash_attention(
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
    deterministic: bool | None = None,
    layout: str = "bshd",
    return_lse: bool = False,
    config: KernelsConfig | dict | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2: ``softmax(scores) @ v`` without materialising the scores.

    ``scores = softmax_scale * q @ k^T``, then the softcap, then ALiBi, then the causal/window mask.

    Args:
        q: (batch, seqlen_q, nheads, headdim) for ``layout="bshd"`` (flash-attn's layout, the default), or
            (batch, nheads, seqlen_q, headdim) for ``layout="bhsd"`` (PyTorch SDPA's). Any strides with a unit
            stride in the head dim work without a copy.
        k, v: (batch, seqlen_k, nheads_kv, headdim) (or bhsd); nheads a multiple of nheads_kv (GQA/MQA; K/V are never
            repeated in memory).
        causal: causal mask aligned to the bottom-right corner (flash-attn >= 2.1): query i sees key j iff
            ``j <= i + seqlen_k - seqlen_q``; rows that see no key return 0.
        softmax_scale: defaults to 1/sqrt(headdim).
        window_size: (left, right) sliding-window (local) attention: query i sees keys j with
            ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``; -1 leaves a side unbounded.
            With ``causal=True`` the right side is 0. Key blocks outside every row's window are skipped.
        softcap: if > 0, ``scores = softcap * tanh(scores / softcap)`` (Gemma 2's logit softcapping).
        alibi_slopes: float32 (nheads,) or (batch, nheads): adds ``-slope * |i + seqlen_k - seqlen_q - j|``.
        dropout_p: dropout on the attention weights (training only: pass 0.0 in evaluation). The mask comes from a
            seed drawn from torch's generator on q's device (``torch.manual_seed`` fixes it) and is regenerated
            exactly in the backward.
        deterministic: backward mode. True: bitwise reproducible, no atomics. False: sequence-parallel, atomic dQ
            accumulation, faster. None (default): the global switch decides (see ``fa2dist.set_deterministic``).
        layout: "bshd" or "bhsd", as above.
        return_lse: also return the log-sum-exp of each row, (batch, nheads, seqlen_q) float32 (natural log of the
            scores before dropout; +inf for rows that see no key).
        config: a ``KernelsConfig`` (or ``{(major, minor): config}`` dict) that replaces the device's own for this call.

    Dtypes: float16 and bfloat16 run natively with fp32 accumulation; float32 is multiplied in IEEE fp32 unless
    ``torch.backends.cuda.matmul.allow_tf32`` is True, then in TF32. The output has the inputs' dtype.
    On the CPU the same Triton kernels run in Triton's interpreter when ``TRITON_INTERPRET=1``; otherwise a PyTorch
    implementation with identical semantics (fp32 arithmetic; its dropout masks come from torch's CPU generator)
    runs, so models using fa2dist train anywhere.
    """
    _check_inputs(q, k, v, layout)
    batch, nheads = (q.shape[0], q.shape[2] if layout == "bshd" else q.shape[1])
    scale, left, right = _check_features(
        q, batch, nheads, window_size, softcap, alibi_slopes, dropout_p, causal, softmax_scale, deterministic
    )
    feats = Features(scale, left, right, float(softcap), alibi_slopes is not None, float(dropout_p))
    result = _run(q, k, v, feats, layout, deterministic, config, alibi_slopes=alibi_slopes)
    if result is None:
        # The PyTorch path has one backward (autograd's, deterministic on the CPU): no mode to resolve.
        qh, kh, vh = (t if layout == "bhsd" else t.transpose(1, 2) for t in (q, k, v))
        out, lse = attention_reference(
            qh, kh, vh, softmax_scale=scale, window_size=(left, right), softcap=float(softcap),
            alibi_slopes=alibi_slopes, dropout_p=float(dropout_p),
        )
        result = (out.transpose(1, 2) if layout == "bshd" else out), lse
    out, lse = result
    return (out, lse) if return_lse else out


def _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> int:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 3:
            raise ValueError(
                f"`{name}` must be 3-D (total_tokens, nheads, headdim) with the sequences packed along the first "
                f"axis, got shape {tuple(t.shape)}. For padded (batch, seqlen, ...) inputs use "
                "fa2dist.flash_attention, or FlashAttention(...)(q, k, v, key_padding_mask=...)."
            )
    # The 4-D checks (dtypes, devices, GQA, head dims) apply to a batch of one.
    _check_inputs(q[None], k[None], v[None], "bshd")
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
            raise TypeError(
                f"`{name}` must be a 1-D int32 tensor of batch + 1 cumulative lengths starting at 0, e.g. "
                "`F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))`."
            )
        if cu.device != q.device:
            raise ValueError(f"`{name}` is on {cu.device}, q on {q.device}; move it to q's device.")
        if cu.device.type == "cpu" and not torch.compiler.is_compiling():  # on a GPU it would synchronise
            if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()) or int(cu[-1]) > total:
                raise ValueError(
                    f"`{name}` must start at 0, never decrease, and end at most at the {total} packed tokens; "
                    f"got {cu.tolist()}."
                )
    if cu_seqlens_q.numel() - 1 > MAX_GRID_AXIS:
        raise ValueError(
            f"`cu_seqlens_q` describes {cu_seqlens_q.numel() - 1} sequences: at most {MAX_GRID_AXIS} per call (the "
            "kernels launch one grid axis over them); split the packed batch into several calls."
        )
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"`cu_seqlens_q` and `cu_seqlens_k` must describe the same number of sequences, got "
            f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}."
        )
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise TypeError(f"`{name}={m!r}` must be an int >= 0: the longest sequence's length.")
    return cu_seqlens_q.numel() - 1


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    deterministic: bool | None = None,
    return_lse: bool = False,
    config: KernelsConfig | dict | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over variable-length sequences packed along one token axis (no padding), as flash-attn's
    ``flash_attn_varlen_func``.

    Args:
        q: (total_q, nheads, headdim): sequence b is ``q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]]``.
        k, v: (total_k, nheads_kv, headdim), split by ``cu_seqlens_k``.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) cumulative lengths starting at 0, on q's device.
        max_seqlen_q, max_seqlen_k: the longest sequence's length (Python ints: they size the grid; a smaller value
            leaves the tail of longer sequences uncomputed, as in flash-attn).
        Other arguments as in :func:`flash_attention`; masks, ALiBi positions and dropout coordinates are relative
        to each sequence (bottom-right aligned per sequence). A sequence of length 0 contributes nothing.

    Returns:
        out (total_q, nheads, headdim), and with ``return_lse`` the LSE as (nheads, total_q) float32.
    """
    batch = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scale, left, right = _check_features(
        q, batch, q.shape[1], window_size, softcap, alibi_slopes, dropout_p, causal, softmax_scale, deterministic
    )
    feats = Features(scale, left, right, float(softcap), alibi_slopes is not None, float(dropout_p), True)
    result = _run(q, k, v, feats, "thd", deterministic, config, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k,
                  max_q=max_seqlen_q, max_k=max_seqlen_k, alibi_slopes=alibi_slopes)
    if result is None:
        result = varlen_reference(
            q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale=scale, window_size=(left, right),
            softcap=float(softcap), alibi_slopes=alibi_slopes, dropout_p=float(dropout_p),
        )
        if result[0].shape[0] != q.shape[0]:  # tokens past cu_seqlens[-1] are not attended to: output 0
            out = q.new_zeros(q.shape)
            out[: result[0].shape[0]] = result[0]
            lse = q.new_full((q.shape[1], q.shape[0]), float("inf"), dtype=torch.float32)
            lse[:, : result[1].shape[1]] = result[1]
            result = out, lse
    out, lse = result
    return (out, lse) if return_lse else out


def dropout_mask(seed: torch.Tensor, batch: int, nheads: int, seqlen_q: int, seqlen_k: int, dropout_p: float):
    """The kernels' dropout keep mask for ``seed`` as a bool (batch, nheads, seqlen_q, seqlen_k) tensor on seed's
    device (a pure function of the seed and the coordinates: for tests and debugging; needs the kernels)."""
    mask = torch.empty((batch, nheads, seqlen_q, seqlen_k), device=seed.device, dtype=torch.int8)
    block = 32
    _dropout_mask_kernel[(triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block), batch * nheads)](
        seed, mask, nheads, seqlen_q, seqlen_k, float(dropout_p), BLOCK_M=block, BLOCK_N=block
    )
    return mask.bool()
