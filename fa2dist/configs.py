"""Kernel configurations keyed by compute capability, and their selection per device.

Every rank of a job calls :func:`config_for_device` on the device its tensors live on, so a job spread over a T4
and an H100 runs each GPU's own tiles. Selection order: a per-call ``config=`` > ``FA2DIST_ARCH`` (force a family on
any GPU able to run it) > configs registered with :func:`register_config` > the built-in table below > the nearest
older family (with a one-time warning). Capabilities below 7.5 are refused.

Whatever is selected is then fitted to the device: every tile that needs more shared memory per block than the GPU
has (``shared_memory_per_block_optin``) is shrunk (fewer stages, then smaller tiles) until it fits, or refused with
a ValueError if even 16x16 tiles do not. Shared memory is measured by Triton's own compiler for that architecture
(see :mod:`fa2dist.ops.fit`), so the choice is deterministic and needs no timing.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass, field, replace

import torch
import triton

from fa2dist.ops import fit

ENV_ARCH = "FA2DIST_ARCH"
MIN_HEADDIM = 16
MAX_HEADDIM = 256
_VALID_WARPS = (1, 2, 4, 8, 16)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_pow2(x) -> bool:
    return _is_int(x) and x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and launch options of one kernel.

    Args:
        block_m: query rows per tile (power of two, 16-256).
        block_n: key rows per tile (power of two, 16-256).
        num_warps: warps per program (1, 2, 4, 8 or 16).
        num_stages: software-pipelining depth of the key/query loop (1-8).
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not (_is_pow2(value) and 16 <= value <= 256):
                raise ValueError(
                    f"`BlockConfig({name}={value!r})` is not valid: use a power of two between 16 and 256."
                )
        if not (_is_int(self.num_warps) and self.num_warps in _VALID_WARPS):
            raise ValueError(f"`BlockConfig(num_warps={self.num_warps!r})` is not valid: use one of {_VALID_WARPS}.")
        if not (_is_int(self.num_stages) and 1 <= self.num_stages <= 8):
            raise ValueError(f"`BlockConfig(num_stages={self.num_stages!r})` is not valid: use an int from 1 to 8.")

    def shrink(self) -> BlockConfig | None:
        """The next smaller config (fewer stages first, then smaller tiles), or None at the floor."""
        if self.num_stages > 1:
            return replace(self, num_stages=self.num_stages - 1)
        if self.block_n > 16 and self.block_n >= self.block_m:
            return replace(self, block_n=self.block_n // 2)
        if self.block_m > 16:
            return replace(self, block_m=self.block_m // 2)
        return None


@dataclass(frozen=True)
class BackwardConfig:
    """Tiles of the backward kernels of one mode.

    Args:
        dkdv: dK/dV kernel: ``block_n`` keys per program, ``block_m`` query rows per loop step.
        dq: dQ kernel of the deterministic mode: ``block_m`` query rows per program, ``block_n`` keys per step
            (unused in sequence-parallel mode, where dQ is accumulated by the dK/dV kernel).
    """

    dkdv: BlockConfig
    dq: BlockConfig

    def __post_init__(self) -> None:
        for name in ("dkdv", "dq"):
            if not isinstance(getattr(self, name), BlockConfig):
                raise TypeError(
                    f"`BackwardConfig({name}=...)` must be a BlockConfig, got {type(getattr(self, name)).__name__}; "
                    "e.g. BlockConfig(64, 64, num_warps=4, num_stages=2)."
                )


Tiers = tuple  # ((max_head_dim, config), ...) in ascending head dim


def _pick(tiers: Tiers, head_dim: int, what: str):
    for max_d, cfg in tiers:
        if head_dim <= max_d:
            return cfg
    raise ValueError(f"no {what} config for head dim {head_dim}: the largest tier covers {tiers[-1][0]}.")


@dataclass(frozen=True)
class KernelsConfig:
    """Everything the kernels need on one GPU family.

    Args:
        family: short name (``turing``, ``ampere``, ...), shown in logs and ``python -m fa2dist info``.
        forward: ``((max_head_dim, BlockConfig), ...)``, ascending: the forward tiles per head-dim tier.
        backward_deterministic: ``((max_head_dim, BackwardConfig), ...)`` for the deterministic backward.
        backward_sequence_parallel: the same for the sequence-parallel (atomic dQ) backward.
        max_headdim: largest head dim this family runs (16-256).
        seqlen_cache_divisor: kept from the seed API; sequence lengths are run-time arguments here, so only their
            divisibility by the tiles (two variants per kernel) triggers a compilation.
        source: where the numbers come from (card, Triton version, date of sweep).
        shared_memory_bytes: set by fitting: the shared memory per block the tiles were fitted to (0: not fitted).
        capability: set by fitting: the compute capability the tiles were fitted for.
        tma: load the forward's tiles with tensor descriptors (the Tensor Memory Accelerator, sm_90 and newer) for
            dense fp16/bf16 inputs with 16-byte aligned strides; other calls run the pointer-load kernel.
        warp_specialize: with ``tma``, on sm_90 GPUs: run forwards (causal or not, with or without a sliding
            window, padded or packed sequences; fp16/bf16) at the head dims and lengths of
            ``fa2dist.ops.kernels.hopper.WS_TILES`` (d64, d128, d256; a window's width stands for the length) in the
            warp-specialised Gluon kernel (a loading warp, two to four computing warpgroups, its own tiles) instead of
            the Triton forward, and the backward's dK/dV at ``hopper.WS_BWD`` (d64, d128, d256) and dQ at
            ``hopper.WS_BWD_DQ`` (d128, d256) in warp-specialised kernels without atomics, in both modes; the
            sequence-parallel mode at d64 and d128 (without a mask; causal from 3-4k keys) adds dQ from the dK/dV
            kernel instead (``hopper.WS_FUSED_DQ``).
        atomic_dq: the sequence-parallel backward adds dQ with atomics from its Triton dK/dV kernel. False: that
            mode runs the deterministic kernels instead (a dK/dV kernel, then a dQ kernel; no atomics). The Hopper
            config sets False: on the H100 the atomic dQ was at most 3% faster at any measured shape, and up to 39%
            slower (BENCHMARKS.md). (Where the warp-specialised dK/dV kernel adds dQ itself, ``hopper.WS_FUSED_DQ``,
            the sequence-parallel mode takes that.)

    Example::

        cfg = KernelsConfig(
            family="my-t4",
            forward=((128, BlockConfig(64, 64, 4, 1)),),
            backward_deterministic=((128, BackwardConfig(BlockConfig(64, 32), BlockConfig(32, 64))),),
            backward_sequence_parallel=((128, BackwardConfig(BlockConfig(64, 32), BlockConfig(32, 64))),),
            max_headdim=128,
        )
    """

    family: str
    forward: Tiers
    backward_deterministic: Tiers
    backward_sequence_parallel: Tiers
    max_headdim: int = MAX_HEADDIM
    seqlen_cache_divisor: int = 32
    source: str = ""
    shared_memory_bytes: int = field(default=0, compare=False)
    capability: tuple[int, int] | None = field(default=None, compare=False)
    tma: bool = False
    warp_specialize: bool = False
    atomic_dq: bool = True

    def __post_init__(self) -> None:
        for name in ("tma", "warp_specialize", "atomic_dq"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`KernelsConfig({name}={getattr(self, name)!r})` must be True or False.")
        if self.warp_specialize and not self.tma:
            raise ValueError(
                "`KernelsConfig(warp_specialize=True)` needs `tma=True`: the warp-specialised kernel loads its tiles "
                "with tensor descriptors. Set both, or `warp_specialize=False`."
            )
        if not (isinstance(self.family, str) and self.family):
            raise TypeError(f"`KernelsConfig(family={self.family!r})` must be a non-empty name such as 'ampere'.")
        if not isinstance(self.source, str):
            raise TypeError(
                f"`KernelsConfig(source={self.source!r})` must be a str saying where the numbers come from."
            )
        if not (_is_int(self.max_headdim) and MIN_HEADDIM <= self.max_headdim <= MAX_HEADDIM):
            raise ValueError(
                f"`KernelsConfig(max_headdim={self.max_headdim!r})` is not valid: use an int from {MIN_HEADDIM} to "
                f"{MAX_HEADDIM}."
            )
        if not _is_pow2(self.seqlen_cache_divisor):
            raise ValueError(
                f"`KernelsConfig(seqlen_cache_divisor={self.seqlen_cache_divisor!r})` must be a power of two, e.g. 32."
            )
        for name, kind in (
            ("forward", BlockConfig),
            ("backward_deterministic", BackwardConfig),
            ("backward_sequence_parallel", BackwardConfig),
        ):
            tiers = getattr(self, name)
            if not (
                isinstance(tiers, tuple)
                and tiers
                and all(
                    isinstance(t, tuple) and len(t) == 2 and _is_int(t[0]) and isinstance(t[1], kind) for t in tiers
                )
            ):
                raise TypeError(
                    f"`KernelsConfig({name}=...)` must be a non-empty tuple of (max_head_dim, {kind.__name__}) pairs, "
                    f"e.g. ((64, {kind.__name__}(...)), (256, {kind.__name__}(...))); got {tiers!r}."
                )
            dims = [t[0] for t in tiers]
            if any(b <= a for a, b in zip(dims, dims[1:])) or dims[0] < MIN_HEADDIM or dims[-1] < self.max_headdim:
                raise ValueError(
                    f"`KernelsConfig({name}=...)` head-dim tiers {dims} must strictly ascend from at least "
                    f"{MIN_HEADDIM} and reach max_headdim={self.max_headdim}."
                )

    def forward_for(self, head_dim: int) -> BlockConfig:
        """The forward tiles for ``head_dim``."""
        return _pick(self.forward, head_dim, "forward")

    def backward_for(self, head_dim: int, deterministic: bool) -> BackwardConfig:
        """The backward tiles for ``head_dim`` in the given mode."""
        tiers = self.backward_deterministic if deterministic else self.backward_sequence_parallel
        return _pick(tiers, head_dim, "backward")


def _bw(dkdv: tuple[int, int, int, int], dq: tuple[int, int, int, int]) -> BackwardConfig:
    return BackwardConfig(BlockConfig(*dkdv), BlockConfig(*dq))


#: Shared memory per block (``shared_memory_per_block_optin``) of each family's GPUs, bytes: used by the CPU tests
#: and wherever no device is at hand (a device's own value is read from it). T4 / RTX 20: 64 KB; A100: 163 KB;
#: RTX 30, A10, L4, L40, RTX 40, RTX 50: 99 KB; H100/H200 (232448 read on an H100 80GB HBM3) and B200: 227 KB.
FAMILY_SHARED_MEMORY = {
    "turing": 64 * 1024,
    "ampere": 163 * 1024,
    "ampere_consumer": 99 * 1024,
    "ada": 99 * 1024,
    "hopper": 227 * 1024,
    "blackwell": 227 * 1024,
    "blackwell_consumer": 99 * 1024,
}

# Turing's backward tiles are set by shared memory: with Triton 3.6 the dK/dV kernel needs 8*n*d + 4*m*max(d, n)
# bytes (fp16, m query rows per step, n keys per program, d padded head dim; the dQ kernel the same with m and n
# swapped), so at d=128 only 64x32 (64 KB) fits 64 KB, and at d=256 only 32x16. The 32x64 / 16x32 tiles used before
# needed 80 KB.
_TURING = KernelsConfig(
    family="turing",
    forward=((64, BlockConfig(64, 64, 4, 1)), (128, BlockConfig(64, 64, 4, 1)), (256, BlockConfig(32, 32, 4, 1))),
    backward_deterministic=(
        (64, _bw((64, 64, 4, 1), (64, 64, 4, 1))),
        (128, _bw((64, 32, 4, 1), (32, 64, 4, 1))),
        (256, _bw((32, 16, 4, 1), (16, 32, 4, 1))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 64, 4, 1), (64, 64, 4, 1))),
        (128, _bw((64, 32, 4, 1), (32, 64, 4, 1))),
        (256, _bw((32, 16, 4, 1), (16, 32, 4, 1))),
    ),
    source="largest tiles that fit sm_75's 64 KB (cross-compiled with Triton 3.6.0, 2026-11-25); not timed on a T4",
)

_AMPERE = KernelsConfig(
    family="ampere",
    forward=((64, BlockConfig(128, 64, 4, 3)), (128, BlockConfig(128, 64, 8, 3)), (256, BlockConfig(64, 64, 8, 2))),
    backward_deterministic=(
        (64, _bw((64, 128, 8, 2), (128, 64, 8, 2))),
        (128, _bw((64, 128, 8, 2), (128, 64, 8, 2))),
        (256, _bw((32, 64, 8, 1), (64, 32, 8, 1))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 128, 8, 2), (128, 64, 8, 2))),
        (128, _bw((64, 128, 8, 2), (128, 64, 8, 2))),
        (256, _bw((32, 64, 8, 1), (64, 32, 8, 1))),
    ),
    source="fits sm_80's 163 KB (cross-compiled with Triton 3.6.0, 2026-11-25); not timed on an A100",
)

_SMALL_SMEM = dict(
    forward=((64, BlockConfig(128, 64, 4, 2)), (128, BlockConfig(128, 32, 8, 2)), (256, BlockConfig(64, 32, 8, 1))),
    backward_deterministic=(
        (64, _bw((64, 64, 4, 2), (64, 64, 4, 2))),
        (128, _bw((32, 64, 4, 2), (64, 32, 4, 2))),
        (256, _bw((16, 64, 8, 1), (64, 16, 8, 1))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 64, 4, 2), (64, 64, 4, 2))),
        (128, _bw((32, 64, 4, 2), (64, 32, 4, 2))),
        (256, _bw((16, 64, 8, 1), (64, 16, 8, 1))),
    ),
)
_AMPERE_CONSUMER = KernelsConfig(
    family="ampere_consumer",
    source="fits sm_86's 99 KB (cross-compiled with Triton 3.6.0, 2026-11-25); not timed on an RTX 30",
    **_SMALL_SMEM,
)
_ADA = KernelsConfig(
    family="ada",
    source="fits sm_89's 99 KB (cross-compiled with Triton 3.6.0, 2026-11-25); not timed on an L40/RTX 40",
    **_SMALL_SMEM,
)
_HOPPER = KernelsConfig(
    family="hopper",
    forward=((64, BlockConfig(128, 64, 4, 3)), (128, BlockConfig(128, 128, 8, 3)), (256, BlockConfig(128, 64, 8, 2))),
    backward_deterministic=(
        (64, _bw((64, 64, 4, 3), (64, 64, 4, 3))),
        (128, _bw((64, 128, 8, 3), (128, 64, 8, 3))),
        (256, _bw((64, 64, 8, 2), (64, 64, 8, 2))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 64, 4, 3), (64, 64, 4, 3))),
        (128, _bw((64, 128, 8, 2), (128, 64, 8, 2))),
        (256, _bw((32, 32, 4, 2), (64, 32, 8, 1))),
    ),
    source="sweep on H100 80GB HBM3, Triton 3.6.0, bf16 seqlen 4k, 2026-11-25 (benchmarks/SWEEP_NOTES.md); "
    "backward re-swept with tensor-descriptor loads 2026-11-26; warp-specialised forward timed on an H100 and an "
    "H200 2026-11-26",
    tma=True,
    warp_specialize=True,
    atomic_dq=False,
)
_BLACKWELL = replace(
    _HOPPER,
    family="blackwell",
    # sm_100 lays out the d256 dK/dV kernel with more shared memory than sm_90: one stage fewer there.
    backward_deterministic=_HOPPER.backward_deterministic[:2] + ((256, _bw((64, 64, 8, 1), (64, 64, 8, 2))),),
    source="Hopper's tiles; fits sm_100 (cross-compiled, Triton 3.6.0)",
    tma=False,
    warp_specialize=False,
    atomic_dq=True,
)
_BLACKWELL_CONSUMER = replace(
    _ADA, family="blackwell_consumer", source="Ada's tiles; fits sm_120's 99 KB (cross-compiled, Triton 3.6.0)"
)

#: The built-in table, keyed by compute capability.
DEFAULT_CONFIGS: dict[tuple[int, int], KernelsConfig] = {
    (7, 5): _TURING,
    (8, 0): _AMPERE,
    (8, 6): _AMPERE_CONSUMER,
    (8, 7): _AMPERE_CONSUMER,
    (8, 9): _ADA,
    (9, 0): _HOPPER,
    (10, 0): _BLACKWELL,
    (10, 3): _BLACKWELL,
    (12, 0): _BLACKWELL_CONSUMER,
    (12, 1): _BLACKWELL_CONSUMER,
}

#: Families for ``FA2DIST_ARCH`` and the lowest capability that runs each one's tiles.
FAMILIES: dict[str, tuple[KernelsConfig, tuple[int, int]]] = {
    "turing": (_TURING, (7, 5)),
    "ampere": (_AMPERE, (8, 0)),
    "ampere_consumer": (_AMPERE_CONSUMER, (8, 6)),
    "ada": (_ADA, (8, 9)),
    "hopper": (_HOPPER, (9, 0)),
    "blackwell": (_BLACKWELL, (10, 0)),
    "blackwell_consumer": (_BLACKWELL_CONSUMER, (12, 0)),
}

#: Used on the CPU (Triton interpreter): few, large tiles keep the interpreter's per-op overhead down.
INTERPRETER_CONFIG = KernelsConfig(
    family="interpreter",
    forward=((256, BlockConfig(64, 64, 4, 1)),),
    backward_deterministic=((256, _bw((32, 64, 4, 1), (64, 32, 4, 1))),),
    backward_sequence_parallel=((256, _bw((32, 64, 4, 1), (64, 32, 4, 1))),),
    source="CPU interpreter",
)

_registered: dict[tuple[int, int], KernelsConfig] = {}
_warned: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=_outside_package_stacklevel())


def _outside_package_stacklevel() -> int:
    # Point the warning at the first caller outside fa2dist (the user's flash_attention call or module).
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _triton_version() -> tuple[int, int]:
    return tuple(int(p) for p in triton.__version__.split(".")[:2])  # type: ignore[return-value]


def _check_capability(capability, where: str) -> tuple[int, int]:
    if not (isinstance(capability, tuple) and len(capability) == 2 and all(_is_int(c) for c in capability)):
        raise TypeError(f"`{where}`: expected a compute capability (major, minor) such as (8, 0), got {capability!r}.")
    return capability


def _as_kernels_config(config, where: str) -> KernelsConfig:
    if hasattr(config, "to_kernels_config"):  # the seed package's KernelsConfigV2
        config = config.to_kernels_config()
    if not isinstance(config, KernelsConfig):
        raise TypeError(
            f"`{where}`: expected a KernelsConfig (or the seed's KernelsConfigV2), got {type(config).__name__}."
        )
    return config


def clear_caches() -> None:
    """Forget the per-device configs and properties (after changing registered configs or, in tests, devices)."""
    _config_for_device.cache_clear()
    _device_properties.cache_clear()
    fit_config.cache_clear()


def register_config(capability: tuple[int, int], config: KernelsConfig) -> None:
    """Use ``config`` on every GPU of compute capability ``capability`` in this process (outranks the table).

    Args:
        capability: (major, minor), e.g. (7, 5) for a T4.
        config: a :class:`KernelsConfig`, or the seed package's ``KernelsConfigV2`` (converted).

    Raises:
        TypeError: ``capability`` is not a pair of ints, or ``config`` is not a config.
        ValueError: ``capability`` is older than Turing (7.5).
    """
    _check_capability(capability, f"register_config(capability={capability!r})")
    if capability < (7, 5):
        raise ValueError(
            f"`register_config(capability={capability!r})`: fa2dist's kernels need compute capability 7.5 or newer."
        )
    _registered[capability] = _as_kernels_config(config, "register_config(config=...)")
    _config_for_device.cache_clear()


def unregister_configs() -> None:
    """Forget every config given to :func:`register_config`."""
    _registered.clear()
    _config_for_device.cache_clear()


def _family_from_env(value: str | None) -> str | None:
    value = (value or "").strip().lower().replace("-", "_")
    if not value:
        return None
    if value not in FAMILIES:
        raise ValueError(f"{ENV_ARCH}={value!r} is not a known family; use one of {', '.join(FAMILIES)}, or unset it.")
    return value


def config_for_capability(
    capability: tuple[int, int], configs: dict | None = None, env_arch: str | None = None
) -> KernelsConfig:
    """The (unfitted) config of a GPU of this capability.

    Looks in ``configs`` (a per-call ``{(major, minor): config}`` dict), then the family named by ``env_arch`` (the
    value of ``FA2DIST_ARCH``; pass ``os.environ.get("FA2DIST_ARCH")`` to honour the environment), then registered
    configs, then the built-in table, then the nearest older known capability (warning once).

    Raises:
        ValueError: the capability is below 7.5, or ``env_arch`` names an unknown family or one this GPU can't run.
    """
    _check_capability(capability, f"config_for_capability({capability!r})")
    if capability < (7, 5):
        raise ValueError(
            f"compute capability {capability[0]}.{capability[1]} is older than Turing (7.5), the oldest GPU fa2dist's "
            "kernels support. Use a Turing or newer GPU, or run on the CPU (PyTorch path)."
        )
    if configs and capability in configs:
        return configs[capability]
    family = _family_from_env(env_arch)
    if family is not None:
        config, needs = FAMILIES[family]
        if capability < needs:
            raise ValueError(
                f"{ENV_ARCH}={family} needs compute capability {needs[0]}.{needs[1]} or newer; this GPU is "
                f"{capability[0]}.{capability[1]}. Unset {ENV_ARCH} or pick an older family."
            )
        return config
    for table in (_registered, DEFAULT_CONFIGS):
        if capability in table:
            return table[capability]
    known = max(c for c in DEFAULT_CONFIGS if c <= capability)
    _warn_once(
        ("unknown-capability", capability),
        f"fa2dist has no config for compute capability {capability[0]}.{capability[1]}; using "
        f"{DEFAULT_CONFIGS[known].family}'s ({known[0]}.{known[1]}), fitted to this GPU's shared memory. Register "
        "one with fa2dist.register_config().",
    )
    return DEFAULT_CONFIGS[known]


def _tier_head_dim(max_d: int, config: KernelsConfig) -> int:
    # The widest head dim a tier serves decides its padded BLOCK_D, and shared memory grows with it.
    return min(max_d, config.max_headdim)


@functools.lru_cache(maxsize=256)
def fit_config(config: KernelsConfig, capability: tuple[int, int], shared_memory: int) -> KernelsConfig:
    """``config`` with every tile shrunk until it fits ``shared_memory`` bytes per block on ``capability`` (for
    fp16/bf16 inputs; the launchers shrink further for fp32 inputs if needed). Head-dim tiers that do not fit even
    with 16x16 tiles are dropped and ``max_headdim`` lowered to match. Warns once for each config it changes.

    Raises:
        ValueError: even the smallest head-dim tier does not fit (the message names the kernel and head dim).
    """
    changes: list[str] = []

    def fitted(kernel: str, block: BlockConfig, max_d: int) -> BlockConfig:
        head_dim = _tier_head_dim(max_d, config)
        new = fit.fit_block(kernel, block, head_dim, capability, shared_memory)
        if new != block:
            changes.append(f"{kernel} at head dim <= {head_dim}: {_short(block)} -> {_short(new)}")
        return new

    def fit_tiers(tiers: Tiers, fit_tier) -> tuple[list, ValueError | None]:
        out = []
        for d, cfg in tiers:
            try:
                out.append((d, fit_tier(cfg, d)))
            except ValueError as err:
                return out, err
        return out, None

    fit.fit_block("preprocess", None, config.max_headdim, capability, shared_memory)
    results = {
        "forward": fit_tiers(config.forward, lambda b, d: fitted("forward", b, d)),
        "backward_deterministic": fit_tiers(
            config.backward_deterministic,
            lambda b, d: BackwardConfig(fitted("dkdv", b.dkdv, d), fitted("dq", b.dq, d)),
        ),
        # The sequence-parallel mode runs no dQ kernel: its dq tiles are kept as given.
        "backward_sequence_parallel": fit_tiers(
            config.backward_sequence_parallel, lambda b, d: BackwardConfig(fitted("dkdv_atomic", b.dkdv, d), b.dq)
        ),
    }
    max_headdim = config.max_headdim
    for tiers, err in results.values():
        if err is not None:
            if not tiers:
                raise err
            max_headdim = min(max_headdim, tiers[-1][0])
    fields = {}
    for name, (tiers, _) in results.items():
        # Keep the tiers up to the first that covers the (possibly lowered) max_headdim.
        last = next(i for i, (d, _) in enumerate(tiers) if d >= max_headdim)
        fields[name] = tuple(tiers[: last + 1])
    if max_headdim < config.max_headdim:
        errors = [str(err) for _, err in results.values() if err is not None]
        _warn_once(
            ("max-headdim", config, capability, shared_memory),
            f"fa2dist: the {config.family} config runs head dims up to {max_headdim} only on this GPU: {errors[0]}",
        )
    if changes:
        _warn_once(
            ("shrunk", config, capability, shared_memory),
            f"fa2dist: the {config.family} config's tiles need more shared memory than this GPU's {shared_memory} "
            f"bytes per block (compute capability {capability[0]}.{capability[1]}); using smaller ones: "
            + "; ".join(changes)
            + ".",
        )
    return replace(config, **fields, max_headdim=max_headdim, shared_memory_bytes=shared_memory, capability=capability)


def _short(b: BlockConfig) -> str:
    return f"{b.block_m}x{b.block_n} ({b.num_warps} warps, {b.num_stages} stage{'s' if b.num_stages > 1 else ''})"


@functools.cache
def _device_properties(index: int) -> tuple[tuple[int, int], int, int, str]:
    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    if not smem:
        # Older PyTorch builds do not report it: the smallest of the family that capability belongs to.
        smem = FAMILY_SHARED_MEMORY["turing"] if capability < (8, 0) else FAMILY_SHARED_MEMORY["ada"]
    return capability, smem, props.multi_processor_count, props.name


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def device_info(device: torch.device) -> dict:
    """Capability, shared memory per block (opt-in), SM count and name of a CUDA device."""
    index = _device_index(device)
    capability, smem, sms, name = _device_properties(index)
    return {"capability": capability, "shared_memory": smem, "sm_count": sms, "name": name, "index": index}


def _warn_turing_triton(capability: tuple[int, int]) -> None:
    if capability == (7, 5) and _triton_version() >= (3, 3):
        _warn_once(
            "turing-triton",
            f"fa2dist: Triton {triton.__version__} on a Turing GPU. Triton 3.3 and newer allocate more shared memory "
            "on pre-Blackwell GPUs, which forces smaller tiles on Turing's 64 KB and makes attention there markedly "
            "slower than with Triton 3.1/3.2 (as the seed package flash-attention-triton reported). fa2dist fits its "
            "tiles to the 64 KB, so results are correct; for speed on Turing use Triton 3.2 with PyTorch 2.6.",
        )


@functools.cache
def _config_for_device(index: int, env_arch: str | None) -> KernelsConfig:
    info = device_info(torch.device("cuda", index))
    capability = info["capability"]
    config = config_for_capability(capability, env_arch=env_arch)
    _warn_turing_triton(capability)
    return fit_config(config, capability, info["shared_memory"])


def config_for_device(device: torch.device, env_arch: str | None = None) -> KernelsConfig:
    """The fitted config for tensors on ``device``, cached per device index and ``FA2DIST_ARCH`` value.

    Args:
        device: a CUDA device (the CPU gets :data:`INTERPRETER_CONFIG`).
        env_arch: the ``FA2DIST_ARCH`` value to apply; None reads it from the environment now.
    """
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    if env_arch is None:
        env_arch = os.environ.get(ENV_ARCH)
    return _config_for_device(_device_index(device), _family_from_env(env_arch))


def select_config(device: torch.device, override: KernelsConfig | dict | None = None) -> KernelsConfig:
    """The config a call on ``device`` runs: ``override`` (a per-call ``config=``: a KernelsConfig, or a
    ``{(major, minor): config}`` dict whose values may be KernelsConfigV2) if given, else the device's own; fitted to
    the device's shared memory either way."""
    if override is not None and not isinstance(override, (KernelsConfig, dict)):
        if hasattr(override, "to_kernels_config"):
            override = override.to_kernels_config()
        else:
            raise TypeError(
                f"`config=` must be a KernelsConfig or a {{(major, minor): config}} dict, got {type(override).__name__}."
            )
    if device.type != "cuda":
        return override if isinstance(override, KernelsConfig) else INTERPRETER_CONFIG
    if override is None:
        return config_for_device(device)
    info = device_info(device)
    capability = info["capability"]
    if isinstance(override, dict):
        override = config_for_capability(capability, _convert_dict(override), os.environ.get(ENV_ARCH))
    elif capability < (7, 5):
        config_for_capability(capability)  # raises the pre-Turing error
    return fit_config(override, capability, info["shared_memory"])


def _convert_dict(configs: dict) -> dict[tuple[int, int], KernelsConfig]:
    out = {}
    for cap, cfg in configs.items():
        _check_capability(cap, f"config={{{cap!r}: ...}}")
        out[cap] = _as_kernels_config(cfg, f"config={{{cap!r}: ...}}")
    return out
