"""How much shared memory a kernel's tiles need on an architecture, and shrinking tiles until they fit a GPU.

Two measures, both deterministic and both usable without a GPU:

- :func:`estimate_shared_memory`: an upper bound from a per-architecture formula (instant). Its coefficients were
  fitted so that it is never below what Triton 3.6 allocates, over about 31,000 cross-compilations (every kernel,
  capabilities 7.5-12.0, fp16/bf16/fp32, tiles 16-128, head dims 16-256, 4 and 8 warps, 1-3 stages, causal or not,
  aligned or ragged shapes); it overestimates by 10-50% on large tiles.
- :func:`compiled_shared_memory`: Triton cross-compiles the kernel for the architecture and reports what it allocates
  (exact; about 0.3 s, since only the passes up to shared-memory allocation run).

:func:`fit_block` keeps a tile when the bound fits, asks the compiler when it does not, and shrinks the tile
(``BlockConfig.shrink``: fewer stages, then smaller tiles) until the compiler's number fits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import triton

#: Kernel names: the forward, the dK/dV kernel of the deterministic backward, the same kernel with atomic dQ (the
#: sequence-parallel backward), the dQ kernel of the deterministic backward, and the delta preprocessing.
KERNELS = ("forward", "dkdv", "dkdv_atomic", "dq", "preprocess")
#: Query rows per program of the preprocessing kernel (fixed by the launcher, not part of any config).
PREPROCESS_BLOCK_M = 64

_TRITON_VERSION = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
# Triton >= 3.3 allocates more shared memory than 3.1/3.2 on pre-Blackwell GPUs; the formula was fitted on 3.6 and is
# trusted up to it. A newer Triton is asked directly (compiled_shared_memory) every time.
_FORMULA_MAX_TRITON = (3, 6)

# Upper-bound coefficients per architecture class, kernel and input element size e (2: fp16/bf16, 4: fp32). With
# P = max(1, num_stages - 1) the pipelined copies of a loop operand and (m, n, d) = (BLOCK_M, BLOCK_N, BLOCK_D):
#   bytes = e * (a*m*d + b*n*d + c*m*n + P*(pa*m*d + pb*n*d + pc*m*n) + ax*m*max(n, d) + bx*n*max(m, d) + 512*k)
# Fitted by linear programming (never below a measured value; smallest excess over the cases needing >= 32 KB),
# rounded up to eighths. Exact on Turing for 16-bit inputs; 10-20% over on average for Ampere-class tiles and 35-55%
# for Hopper and Blackwell, whose allocation depends on more than tile areas (there the compiler is asked whenever
# the bound is too high). Class 80 covers 8.x and 12.x, whose allocations were identical in every measured case;
# class 100 covers 10.x and 11.x.
# Each entry: (a, b, c, pa, pb, pc, ax, bx, k).
_COEFFICIENTS: dict[int, dict[tuple[str, int], tuple[float, ...]]] = {
    75: {
        ("forward", 2): (2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0),
        ("forward", 4): (1.125, 1.0, 0.125, 0.0, 0.0, 0.0, 0.0, 1.125, 0.125),
        ("dkdv", 2): (0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0),
        ("dkdv", 4): (2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("dkdv_atomic", 2): (0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0),
        ("dkdv_atomic", 4): (2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("dq", 2): (4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0),
        ("dq", 4): (2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    },
    80: {
        ("forward", 2): (1.0, 0.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0),
        ("forward", 4): (1.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.125),
        ("dkdv", 2): (1.375, 1.875, 0.0, 1.625, 0.0, 0.0, 0.0, 0.25, 0.75),
        ("dkdv", 4): (2.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.25),
        ("dkdv_atomic", 2): (1.625, 1.25, 0.0, 2.125, 0.0, 0.0, 0.0, 0.875, 5.5),
        ("dkdv_atomic", 4): (2.125, 2.0, 0.125, 0.0, 0.0, 0.0, 1.0, 0.125, 0.75),
        ("dq", 2): (2.0, 0.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0),
        ("dq", 4): (2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    },
    90: {
        ("forward", 2): (1.0, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0),
        ("forward", 4): (1.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.125),
        ("dkdv", 2): (2.125, 2.0, 0.0, 2.0, 0.125, 0.125, 0.0, 0.0, 0.75),
        ("dkdv", 4): (2.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.25),
        ("dkdv_atomic", 2): (3.0, 2.875, 0.0, 2.0, 0.125, 0.125, 0.625, 0.25, 1.75),
        ("dkdv_atomic", 4): (2.125, 2.0, 0.125, 0.0, 0.0, 0.0, 1.0, 0.125, 0.75),
        ("dq", 2): (2.0, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0),
        ("dq", 4): (2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    },
    100: {
        ("forward", 2): (1.0, 1.625, 0.0, 0.0, 2.0, 0.0, 0.0, 0.5, 1.125),
        ("forward", 4): (1.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.125),
        ("dkdv", 2): (4.0, 2.0, 0.0, 2.0, 0.0, 0.125, 0.0, 0.0, 0.75),
        ("dkdv", 4): (2.125, 2.0, 1.125, 0.0, 0.0, 0.0, 0.0, 0.125, 0.25),
        ("dkdv_atomic", 2): (3.875, 2.5, 0.625, 2.0, 0.0, 0.125, 0.25, 0.25, 0.0),
        ("dkdv_atomic", 4): (2.125, 2.0, 0.125, 0.0, 0.0, 0.0, 1.0, 0.125, 0.75),
        ("dq", 2): (2.0, 3.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0),
        ("dq", 4): (2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    },
}
# The preprocessing kernel needed at most 512 bytes in every measured case (one 64-row reduction).
_PREPROCESS_BOUND = 1024
# The measured range: outside it (other warps, deeper pipelines, 256-wide tiles) the compiler is asked.
_MEASURED_WARPS = (4, 8)
_MEASURED_MAX_STAGES = {2: 3, 4: 2}  # by element size: fp32 inputs were measured with 1-2 stages
_MEASURED_MAX_BLOCK = 128
#: The bound never exceeded 3.6 times the allocation in the measured range; above 4 times the limit a tile is too big
#: without asking the compiler (an error in this shortcut could only shrink a tile more than needed).
MAX_OVERESTIMATE = 4


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"`kernel={kernel!r}` is not one of fa2dist's kernels; use one of {', '.join(KERNELS)}.")


def _arch_class(capability: tuple[int, int]) -> int | None:
    major = capability[0]
    if capability == (7, 5):
        return 75
    if major in (8, 12):
        return 80
    if major == 9:
        return 90
    if major in (10, 11):
        return 100
    return None


_TRITON_TYPES = {torch.float16: ("fp16", 2), torch.bfloat16: ("bf16", 2), torch.float32: ("fp32", 4)}


def _itemsize(dtype: torch.dtype) -> int:
    if dtype not in _TRITON_TYPES:
        raise TypeError(f"`dtype={dtype}` is not supported by the kernels; use torch.float16, bfloat16 or float32.")
    return _TRITON_TYPES[dtype][1]


def block_d_for(head_dim: int) -> int:
    """The padded head dim (``BLOCK_D``) the launchers use: the next power of two, at least 16."""
    # Plain integer arithmetic: triton.next_power_of_2 goes through Triton's constexpr-function wrapper, a
    # measurable share of a short call's host time (the launchers call this per call).
    return max(1 << (head_dim - 1).bit_length(), 16)


def formula_applies(kernel: str, block: Any, capability: tuple[int, int], dtype: torch.dtype = torch.float16) -> bool:
    """Whether :func:`estimate_shared_memory` is a measured upper bound for these tiles with this Triton."""
    if kernel == "preprocess":
        return True
    return (
        _arch_class(capability) is not None
        and _TRITON_VERSION <= _FORMULA_MAX_TRITON
        and block.num_warps in _MEASURED_WARPS
        and block.num_stages <= _MEASURED_MAX_STAGES[_itemsize(dtype)]
        and max(block.block_m, block.block_n) <= _MEASURED_MAX_BLOCK
    )


def estimate_shared_memory(
    kernel: str, block: Any, head_dim: int, capability: tuple[int, int], dtype: torch.dtype = torch.float16
) -> int:
    """Upper bound, in bytes, of the shared memory ``kernel`` needs with ``block``'s tiles.

    Args:
        kernel: one of :data:`KERNELS`.
        block: a ``BlockConfig`` (ignored for ``"preprocess"``, whose tiles are fixed).
        head_dim: the head dim (its padded power of two is what counts).
        capability: (major, minor) of the target GPU. Unknown architectures get the largest bound of all classes.
        dtype: the inputs' dtype.

    Only a bound where :func:`formula_applies`; elsewhere use :func:`compiled_shared_memory`.
    """
    _check_kernel(kernel)
    if kernel == "preprocess":
        return _PREPROCESS_BOUND
    e = _itemsize(dtype)
    m, n, d = block.block_m, block.block_n, block_d_for(head_dim)
    pipelined = max(1, block.num_stages - 1)
    cls = _arch_class(capability)
    classes = [cls] if cls is not None else list(_COEFFICIENTS)
    bounds = []
    for c in classes:
        a, b, cc, pa, pb, pc, ax, bx, k = _COEFFICIENTS[c][(kernel, e)]
        total = e * (
            a * m * d
            + b * n * d
            + cc * m * n
            + pipelined * (pa * m * d + pb * n * d + pc * m * n)
            + ax * m * max(n, d)
            + bx * n * max(m, d)
            + 512 * k
        )
        bounds.append(math.ceil(total))
    return max(bounds)


def _kernel_function(kernel: str):
    from triton.runtime.jit import JITFunction

    from fa2dist.ops.kernels.backward import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_bwd_preprocess_kernel
    from fa2dist.ops.kernels.forward import _attn_fwd_kernel

    fn = {
        "forward": _attn_fwd_kernel,
        "dkdv": _attn_bwd_dkdv_kernel,
        "dkdv_atomic": _attn_bwd_dkdv_kernel,
        "dq": _attn_bwd_dq_kernel,
        "preprocess": _attn_bwd_preprocess_kernel,
    }[kernel]
    while not isinstance(fn, JITFunction):  # @triton.heuristics wraps the JITFunction
        fn = fn.fn
    return fn


def kernel_source(
    kernel: str,
    block: Any,
    head_dim: int,
    dtype: torch.dtype = torch.float16,
    *,
    causal: bool = True,
    aligned: bool = True,
):
    """The ``triton.compiler.ASTSource`` of ``kernel`` as the launcher compiles it.

    ``aligned=True`` is the common case (strides and sequence lengths multiples of 16, as many query heads as key
    heads, full tiles); ``aligned=False`` the ragged one (no divisibility, grouped-query heads, partial tiles), which
    can need a little more shared memory.
    """
    from triton.compiler import ASTSource

    _check_kernel(kernel)
    fn = _kernel_function(kernel)
    _itemsize(dtype)
    ty = _TRITON_TYPES[dtype][0]
    block_d = block_d_for(head_dim)
    constexprs: dict[str, Any] = {"HEAD_DIM": head_dim, "BLOCK_D": block_d}
    if kernel == "preprocess":
        constexprs["BLOCK_M"] = PREPROCESS_BLOCK_M
        pointers = {"O": ty, "DO": ty, "DELTA": "fp32"}
    else:
        constexprs.update(
            BLOCK_M=block.block_m,
            BLOCK_N=block.block_n,
            VARLEN=False,
            HAS_LEFT=False,
            HAS_RIGHT=causal,
            SOFTCAP=False,
            ALIBI=False,
            DROPOUT=False,
            UPCAST=False,
            PRECISION="ieee" if dtype == torch.float32 else "tf32",
        )
        pointers = {"Q": ty, "K": ty, "V": ty, "LSE": "fp32", "DELTA": "fp32"}
        if kernel == "forward":
            constexprs.update(EVEN_M=aligned, EVEN_D=head_dim == block_d, TMA=False)
            pointers.update(O=ty)
        elif kernel in ("dkdv", "dkdv_atomic"):
            constexprs.update(ATOMIC_DQ=kernel == "dkdv_atomic", KEY_TAIL=not aligned, TMA=False, TMA_DQ=False)
            pointers.update(DO=ty, DK=ty, DV=ty, DQ="fp32" if kernel == "dkdv_atomic" else ty)
        else:
            constexprs["TMA"] = False
            pointers.update(DO=ty, DQ=ty)
    if kernel != "preprocess":
        # Pointers of features this compile leaves out (variable length, ALiBi, dropout) are passed as None.
        constexprs.update(CU_Q=None, CU_K=None, ALIBI_SLOPES=None, SEED=None)
    if aligned and "GROUP" in fn.arg_names:
        constexprs["GROUP"] = 1  # Triton specialises an int argument equal to 1 into a constant
    signature, attrs = {}, {}
    divisible = [["tt.divisibility", 16]]
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
            attrs[(i,)] = divisible  # PyTorch allocations are 16-byte aligned
        elif name in ("sm_scale", "cap_in", "cap_out", "dropout_p", "dropout_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if aligned and (name.startswith("stride") or name in ("N_Q", "N_K")):
                attrs[(i,)] = divisible
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs]
    if missing:
        raise RuntimeError(f"kernel_source does not set the constexprs {missing} of {fn.__name__}; update it.")
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _allocated_shared_memory(src, target, options: dict) -> int:
    # Runs Triton's own stages up to its shared-memory allocation pass and reads the size it assigned, skipping
    # the LLVM lowering and ptxas, which take 5-100x longer (35 s for a 128x128 Turing tile) and change nothing here.
    # Uses Triton 3.6's internal pass API; compiled_shared_memory falls back to a full compile if it moves.
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.compiler import Language
    from triton.backends.nvidia.compiler import get_ptx_version_from_options
    from triton.compiler import make_backend

    backend = make_backend(target)
    opts = backend.parse_options(options)
    stages: dict = {}
    backend.add_stages(stages, opts, Language.TRITON)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), context)
    metadata: dict = {}
    for stage in ("ttir", "ttgir"):
        module = stages[stage](module, metadata)
    # The first passes of the NVIDIA backend's make_llir, through shared-memory allocation.
    pm = ir.pass_manager(module.context)
    passes.ttgpuir.add_combine_tensor_select_and_if(pm)
    passes.ttgpuir.add_allocate_warp_groups(pm)
    passes.convert.add_scf_to_cf(pm)
    passes.gluon.add_inliner(pm)
    nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(
        pm, target.arch, get_ptx_version_from_options(opts, target.arch)
    )
    pm.run(module, "fa2dist_shared_memory")
    return int(module.get_int_attr("ttg.shared") or 0)


@functools.lru_cache(maxsize=4096)
def compiled_shared_memory(
    kernel: str,
    block: Any,
    head_dim: int,
    capability: tuple[int, int],
    dtype: torch.dtype = torch.float16,
    *,
    causal: bool = True,
    aligned: bool = True,
    full_compile: bool = False,
) -> int:
    """Shared memory, in bytes, that Triton allocates for ``kernel`` compiled for ``capability`` (no GPU needed).

    ``full_compile=True`` runs the whole compilation (through ptxas) and reads ``metadata.shared``; the default stops
    after the allocation pass, which gives the same number far sooner. Other arguments as in :func:`kernel_source`.
    Raises ``triton.compiler.errors.CompilationError`` if the kernel does not compile.
    """
    from triton.backends.compiler import GPUTarget

    src = kernel_source(kernel, block, head_dim, dtype, causal=causal, aligned=aligned)
    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    if kernel == "preprocess":
        options = {"num_warps": 4, "num_stages": 3}  # the launcher's (Triton's defaults)
    else:
        options = {"num_warps": block.num_warps, "num_stages": block.num_stages}
    if not full_compile:
        try:
            return _allocated_shared_memory(src, target, options)
        except (ImportError, AttributeError, TypeError, KeyError):
            pass  # another Triton's internals: compile fully below
    return int(triton.compile(src, target=target, options=options).metadata.shared)


def required_shared_memory(
    kernel: str, block: Any, head_dim: int, capability: tuple[int, int], dtype: torch.dtype = torch.float16
) -> int:
    """The most shared memory ``kernel`` needs at this padded head dim: the larger of the aligned case (head dim a
    power of two) and the ragged one (a smaller head dim, odd strides, grouped-query heads), both causal (the causal
    kernels never needed less than the non-causal ones)."""
    block_d = block_d_for(head_dim)
    ragged = max(block_d - 8, 8)
    return max(
        compiled_shared_memory(kernel, block, block_d, capability, dtype, aligned=True),
        compiled_shared_memory(kernel, block, ragged, capability, dtype, aligned=False),
    )


def fits(kernel: str, block: Any, head_dim: int, capability: tuple[int, int], limit: int, dtype=torch.float16) -> bool:
    """Whether ``block`` fits ``limit`` bytes: decided by the bound where it applies and is clear either way (below
    the limit, or more than :data:`MAX_OVERESTIMATE` times it), else by compiling."""
    if formula_applies(kernel, block, capability, dtype):
        bound = estimate_shared_memory(kernel, block, head_dim, capability, dtype)
        if bound <= limit:
            return True
        if bound > MAX_OVERESTIMATE * limit:
            return False
    if _arch_class(capability) is None:
        try:
            return required_shared_memory(kernel, block, head_dim, capability, dtype) <= limit
        except Exception:
            # This Triton cannot target an architecture newer than it knows: the largest bound of all classes.
            return estimate_shared_memory(kernel, block, head_dim, capability, dtype) <= limit
    return required_shared_memory(kernel, block, head_dim, capability, dtype) <= limit


def fit_block(
    kernel: str,
    block: Any,
    head_dim: int,
    capability: tuple[int, int],
    limit: int,
    dtype: torch.dtype = torch.float16,
):
    """``block`` itself if it fits ``limit`` bytes of shared memory, else the first of its shrinks that does.

    Raises:
        ValueError: even the smallest tiles (16x16, one stage) do not fit.
    """
    _check_kernel(kernel)
    candidate = block
    while not fits(kernel, candidate, head_dim, capability, limit, dtype):
        smaller = candidate.shrink() if kernel != "preprocess" else None
        if smaller is None:
            raise ValueError(
                f"fa2dist's {kernel} kernel at head dim {block_d_for(head_dim)} ({dtype}) needs more than the {limit} "
                f"bytes of shared memory per block of this GPU (compute capability {capability[0]}.{capability[1]}), "
                f"even with its smallest tiles ({candidate}). Use a smaller head dim, fp16/bf16 "
                "inputs, or a GPU with more shared memory."
            )
        candidate = smaller
    return candidate
