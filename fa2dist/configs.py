"""Kernel configurations keyed by compute capability, and their selection per device.

Every rank of a job calls :func:`config_for_device` on the device its tensors live on, so a job spread over a T4
and an H100 runs each GPU's own tiles. Selection order: a per-call ``config=`` > ``FA2DIST_ARCH`` (force a family on
any GPU able to run it) > configs registered with :func:`register_config` > the built-in table below > the nearest
older family (with a one-time warning). Capabilities below 7.5 are refused.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field, replace

import torch

ENV_ARCH = "FA2DIST_ARCH"
MIN_HEADDIM = 16
MAX_HEADDIM = 256
_VALID_WARPS = (1, 2, 4, 8, 16)


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and x > 0 and (x & (x - 1)) == 0


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
        if self.num_warps not in _VALID_WARPS:
            raise ValueError(f"`BlockConfig(num_warps={self.num_warps!r})` is not valid: use one of {_VALID_WARPS}.")
        if not (isinstance(self.num_stages, int) and 1 <= self.num_stages <= 8):
            raise ValueError(f"`BlockConfig(num_stages={self.num_stages!r})` is not valid: use 1 to 8.")

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
        max_headdim: largest head dim this family runs (at most 256).
        seqlen_cache_divisor: kept from the seed API; sequence lengths are run-time arguments here, so only their
            divisibility by the tiles (two variants per kernel) triggers a compilation.
        source: where the numbers come from (card, Triton version, date of sweep).
    """

    family: str
    forward: Tiers
    backward_deterministic: Tiers
    backward_sequence_parallel: Tiers
    max_headdim: int = MAX_HEADDIM
    seqlen_cache_divisor: int = 32
    source: str = ""
    shared_memory_bytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.max_headdim, int) and MIN_HEADDIM <= self.max_headdim <= MAX_HEADDIM):
            raise ValueError(
                f"`KernelsConfig(max_headdim={self.max_headdim!r})` is not valid: use {MIN_HEADDIM}-{MAX_HEADDIM}."
            )
        if not _is_pow2(self.seqlen_cache_divisor):
            raise ValueError(
                f"`KernelsConfig(seqlen_cache_divisor={self.seqlen_cache_divisor!r})` must be a power of two."
            )
        for name, kind in (
            ("forward", BlockConfig),
            ("backward_deterministic", BackwardConfig),
            ("backward_sequence_parallel", BackwardConfig),
        ):
            tiers = getattr(self, name)
            if not tiers or any(
                not (isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], int) and isinstance(t[1], kind))
                for t in tiers
            ):
                raise TypeError(
                    f"`KernelsConfig({name}=...)` must be a non-empty tuple of (max_head_dim, {kind.__name__}) pairs."
                )
            dims = [t[0] for t in tiers]
            if dims != sorted(dims) or dims[-1] < self.max_headdim:
                raise ValueError(
                    f"`KernelsConfig({name}=...)` head-dim tiers {dims} must ascend and reach max_headdim="
                    f"{self.max_headdim}."
                )

    def forward_for(self, head_dim: int) -> BlockConfig:
        return _pick(self.forward, head_dim, "forward")

    def backward_for(self, head_dim: int, deterministic: bool) -> BackwardConfig:
        tiers = self.backward_deterministic if deterministic else self.backward_sequence_parallel
        return _pick(tiers, head_dim, "backward")


def _bw(dkdv: tuple[int, int, int, int], dq: tuple[int, int, int, int]) -> BackwardConfig:
    return BackwardConfig(BlockConfig(*dkdv), BlockConfig(*dq))


# Shared memory per block (opt-in maximum) of each family, used for fit checks when no device is present.
FAMILY_SHARED_MEMORY = {
    "turing": 64 * 1024,
    "ampere": 163 * 1024,
    "ampere_consumer": 99 * 1024,
    "ada": 99 * 1024,
    "hopper": 227 * 1024,
    "blackwell": 227 * 1024,
    "blackwell_consumer": 99 * 1024,
}

_TURING = KernelsConfig(
    family="turing",
    forward=((64, BlockConfig(64, 64, 4, 1)), (128, BlockConfig(64, 64, 4, 1)), (256, BlockConfig(32, 32, 4, 1))),
    backward_deterministic=(
        (64, _bw((64, 64, 4, 1), (64, 64, 4, 1))),
        (128, _bw((32, 64, 4, 1), (64, 32, 4, 1))),
        (256, _bw((16, 32, 4, 1), (32, 16, 4, 1))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 64, 4, 1), (64, 64, 4, 1))),
        (128, _bw((32, 64, 4, 1), (64, 32, 4, 1))),
        (256, _bw((16, 32, 4, 1), (32, 16, 4, 1))),
    ),
    source="fits sm_75's 64 KB (cross-compiled with Triton 3.6.0, 2026-11-25); not timed on a T4",
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
        (64, _bw((32, 128, 4, 3), (128, 32, 4, 3))),
        (128, _bw((64, 128, 8, 3), (128, 64, 8, 3))),
        (256, _bw((32, 64, 8, 1), (64, 32, 8, 1))),
    ),
    backward_sequence_parallel=(
        (64, _bw((64, 128, 8, 3), (128, 64, 8, 3))),
        (128, _bw((64, 128, 8, 3), (128, 64, 8, 3))),
        (256, _bw((32, 64, 8, 1), (64, 32, 8, 1))),
    ),
    source="sweep on H100 80GB HBM3, Triton 3.6.0, bf16 seqlen 4k, 2026-11-25 (benchmarks/SWEEP_NOTES.md); "
    "head dim 256 not yet swept",
)
_BLACKWELL = replace(_HOPPER, family="blackwell", source="Hopper's tiles; fits sm_100 (cross-compiled, Triton 3.6.0)")
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
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def register_config(capability: tuple[int, int], config: KernelsConfig) -> None:
    """Use ``config`` on every GPU of compute capability ``capability`` in this process (outranks the table)."""
    if not (isinstance(capability, tuple) and len(capability) == 2 and all(isinstance(c, int) for c in capability)):
        raise TypeError(f"`register_config(capability={capability!r})`: expected (major, minor), e.g. (8, 0).")
    if not isinstance(config, KernelsConfig):
        raise TypeError(
            f"`register_config(config=...)`: expected a KernelsConfig, got {type(config).__name__}; "
            "a KernelsConfigV2 converts with `.to_kernels_config()`."
        )
    _registered[capability] = config
    config_for_device.cache_clear()


def unregister_configs() -> None:
    """Forget every config given to :func:`register_config`."""
    _registered.clear()
    config_for_device.cache_clear()


def config_for_capability(capability: tuple[int, int], configs: dict | None = None) -> KernelsConfig:
    """The config of a GPU of this capability (``configs`` first if given, then registered, then built-in)."""
    if capability < (7, 5):
        raise ValueError(
            f"compute capability {capability[0]}.{capability[1]} is older than Turing (7.5), the oldest GPU fa2dist's "
            "kernels support. Use a Turing or newer GPU, or run on the CPU (PyTorch path)."
        )
    env = os.environ.get(ENV_ARCH, "").strip().lower()
    if env:
        if env not in FAMILIES:
            raise ValueError(f"{ENV_ARCH}={env!r} is not a known family; use one of {', '.join(FAMILIES)}.")
        config, needs = FAMILIES[env]
        if capability < needs:
            raise ValueError(
                f"{ENV_ARCH}={env} needs compute capability {needs[0]}.{needs[1]} or newer; this GPU is "
                f"{capability[0]}.{capability[1]}. Unset {ENV_ARCH} or pick an older family."
            )
        return config
    for table in (configs or {}, _registered, DEFAULT_CONFIGS):
        if capability in table:
            return table[capability]
    known = max(c for c in DEFAULT_CONFIGS if c <= capability)
    _warn_once(
        f"cc{capability}",
        f"fa2dist has no config for compute capability {capability[0]}.{capability[1]}; using "
        f"{DEFAULT_CONFIGS[known].family}'s ({known[0]}.{known[1]}). Register one with fa2dist.register_config().",
    )
    return DEFAULT_CONFIGS[known]


@functools.lru_cache(maxsize=None)
def _device_properties(index: int) -> tuple[tuple[int, int], int, int, str]:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or FAMILY_SHARED_MEMORY["turing"]
    return (props.major, props.minor), smem, props.multi_processor_count, props.name


def device_info(device: torch.device) -> dict:
    """Capability, shared memory per block (opt-in), SM count and name of a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability, smem, sms, name = _device_properties(index)
    return {"capability": capability, "shared_memory": smem, "sm_count": sms, "name": name, "index": index}


@functools.lru_cache(maxsize=None)
def config_for_device(device: torch.device, env_arch: str | None = None) -> KernelsConfig:
    """The config for tensors on ``device`` (cached per device and ``FA2DIST_ARCH`` value)."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    info = device_info(device)
    config = config_for_capability(info["capability"])
    return replace(config, shared_memory_bytes=info["shared_memory"])


def select_config(device: torch.device, override: KernelsConfig | dict | None = None) -> KernelsConfig:
    """Resolve a per-call ``config=`` (a KernelsConfig, or a ``{(major, minor): config}`` dict) for ``device``."""
    if device.type != "cuda":
        return override if isinstance(override, KernelsConfig) else INTERPRETER_CONFIG
    if override is None:
        return config_for_device(device, os.environ.get(ENV_ARCH))
    if isinstance(override, KernelsConfig):
        return override
    if isinstance(override, dict):
        capability = device_info(device)["capability"]
        return config_for_capability(capability, _convert_dict(override))
    raise TypeError(
        f"`config=` must be a KernelsConfig or a {{(major, minor): config}} dict, got {type(override).__name__}."
    )


def _convert_dict(configs: dict) -> dict[tuple[int, int], KernelsConfig]:
    out = {}
    for cap, cfg in configs.items():
        if hasattr(cfg, "to_kernels_config"):
            cfg = cfg.to_kernels_config()
        if not isinstance(cfg, KernelsConfig):
            raise TypeError(f"config for capability {cap!r} must be a KernelsConfig or KernelsConfigV2.")
        out[cap] = cfg
    return out
