"""What ``python -m fa2dist info`` and ``python -m fa2dist check-determinism`` report.

:func:`collect_info` describes the software, the visible GPUs with the config each one runs, the path CPU tensors take
and the state of the deterministic switch. :func:`check_determinism` runs forward and backward several times on the
same random inputs and says whether the gradients are bitwise equal across runs in each backward mode: what to run on
a new cluster node before trusting it with a reproducible job. Both return plain data (``to_dict()`` gives JSON), so
tests and scripts can use them without parsing text.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import triton

import fa2dist
from fa2dist.configs import (
    ENV_ARCH,
    MAX_HEADDIM,
    MIN_HEADDIM,
    BlockConfig,
    config_for_device,
    device_info,
    select_config,
)
from fa2dist.determinism import ENV_VAR, resolve_deterministic
from fa2dist.ops.attention import flash_attention, uses_kernels

MODES = ("deterministic", "sequence-parallel")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INFO_HEAD_DIMS = (64, 128, 256)
# Sizes that are not multiples of any tile on purpose (ragged last blocks), one GQA case, and head dim 256 (its own
# tier in every config).
DEFAULT_GPU_SHAPES = ("2x1024x16x64", "2x1000x16x128/4", "1x2048x8x256")
# Small enough for Triton's interpreter (a few seconds per case on 2 cores), still more than one tile of keys.
DEFAULT_CPU_SHAPES = ("1x97x2x32", "2x80x4x16/2")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _block(cfg: BlockConfig) -> dict:
    return {"block_m": cfg.block_m, "block_n": cfg.block_n, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def _config_tiles(config, head_dims: Sequence[int]) -> dict:
    tiles = {}
    for d in head_dims:
        if d > config.max_headdim:
            tiles[str(d)] = None
            continue
        det = config.backward_for(d, True)
        seq = config.backward_for(d, False)
        tiles[str(d)] = {
            "forward": _block(config.forward_for(d)),
            "backward_deterministic": {"dkdv": _block(det.dkdv), "dq": _block(det.dq)},
            # The sequence-parallel mode accumulates dQ inside the dK/dV kernel; it has no dQ kernel.
            "backward_sequence_parallel": {"dkdv": _block(seq.dkdv)},
        }
    return tiles


def cpu_path() -> str:
    """The path CPU tensors take in this process: ``"triton-interpreter"`` or ``"pytorch"``."""
    return "triton-interpreter" if uses_kernels(torch.device("cpu")) else "pytorch"


def collect_info(head_dims: Sequence[int] = INFO_HEAD_DIMS) -> dict:
    """Software versions, each visible GPU with its config, the CPU path and the deterministic switch, as a dict."""
    mode, source = resolve_deterministic(None)
    info: dict = {
        "fa2dist": fa2dist.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "lightning": _version("lightning") or _version("pytorch-lightning"),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "environment": {
            name: os.environ.get(name)
            for name in (ENV_VAR, ENV_ARCH, "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG")
        },
        "deterministic": {
            "enabled": mode,
            "mode": "deterministic" if mode else "sequence-parallel",
            "source": source,
        },
        "cpu_path": cpu_path(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            info["gpus"].append(_gpu_info(index, head_dims))
    return info


def _gpu_info(index: int, head_dims: Sequence[int]) -> dict:
    device = torch.device("cuda", index)
    props = device_info(device)
    gpu = {
        "index": index,
        "name": props["name"],
        "capability": f"{props['capability'][0]}.{props['capability'][1]}",
        "sm_count": props["sm_count"],
        "shared_memory_per_block": props["shared_memory"],
        "total_memory": torch.cuda.get_device_properties(index).total_memory,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = config_for_device(device, os.environ.get(ENV_ARCH))
        except ValueError as err:
            gpu.update(supported=False, error=str(err))
            return gpu
    gpu.update(
        supported=True,
        family=config.family,
        config_source=config.source,
        max_headdim=config.max_headdim,
        tma=config.tma,
        warp_specialize=config.warp_specialize,
        atomic_dq=config.atomic_dq,
        warnings=[str(w.message) for w in caught],
        tiles=_config_tiles(config, head_dims),
    )
    return gpu


def _fmt_block(b: dict | None) -> str:
    if b is None:
        return "-"
    return f"{b['block_m']}x{b['block_n']} w{b['num_warps']} s{b['num_stages']}"


def format_info(info: dict) -> str:
    """The text ``python -m fa2dist info`` prints."""
    lines = [
        f"fa2dist {info['fa2dist']}  python {info['python']}  {info['platform']}",
        f"torch {info['torch']}  triton {info['triton']}  lightning {info['lightning']}  CUDA {info['cuda']}",
        "",
    ]
    det = info["deterministic"]
    lines.append(
        f"deterministic switch: {'on' if det['enabled'] else 'off'} ({det['mode']} backward), from {det['source']}"
    )
    env = {k: v for k, v in info["environment"].items() if v is not None}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else "none of fa2dist's set"))
    if info["cpu_path"] == "triton-interpreter":
        lines.append("CPU tensors: Triton kernels in Triton's interpreter (TRITON_INTERPRET=1)")
    else:
        lines.append(
            "CPU tensors: PyTorch path (fa2dist.ops.reference; the backward mode does not apply there). "
            "Set TRITON_INTERPRET=1 before importing fa2dist to run the Triton kernels in the interpreter."
        )
    lines.append("")
    if not info["gpus"]:
        reason = "torch.cuda.is_available() is False" if not info["cuda_available"] else "no device visible"
        build = f"torch built with CUDA {info['cuda']}" if info["cuda"] else "torch built without CUDA"
        lines.append(f"GPUs: none ({reason}; {build})")
        return "\n".join(lines)
    lines.append(f"GPUs: {len(info['gpus'])}")
    for gpu in info["gpus"]:
        lines.append(
            f"  cuda:{gpu['index']}  {gpu['name']}  cc {gpu['capability']}  {gpu['sm_count']} SMs  "
            f"{gpu['shared_memory_per_block'] // 1024} KB shared memory per block  "
            f"{gpu['total_memory'] / 2**30:.1f} GiB"
        )
        if not gpu["supported"]:
            lines.append(f"    not supported: {gpu['error']}")
            continue
        loads = "tensor descriptors (TMA) where aligned" if gpu["tma"] else "pointer loads"
        if gpu.get("warp_specialize"):
            loads += "; warp-specialised forward and dK/dV (Gluon) where they apply"
        if not gpu.get("atomic_dq", True):
            loads += "; sequence-parallel backward without atomics"
        lines.append(
            f"    config: {gpu['family']} (max head dim {gpu['max_headdim']}; {loads}; {gpu['config_source']})"
        )
        for message in gpu["warnings"]:
            lines.append(f"    warning: {message}")
        lines.append("    tiles as BLOCK_MxBLOCK_N, warps, stages:")
        lines.append(
            f"    {'head dim':>8}  {'forward':<14}  {'det. dK/dV':<14}  {'det. dQ':<14}  {'seq-par dK/dV+dQ':<16}"
        )
        for d, t in gpu["tiles"].items():
            if t is None:
                lines.append(f"    {d:>8}  above this config's max head dim")
                continue
            lines.append(
                f"    {d:>8}  {_fmt_block(t['forward']):<14}  {_fmt_block(t['backward_deterministic']['dkdv']):<14}  "
                f"{_fmt_block(t['backward_deterministic']['dq']):<14}  "
                f"{_fmt_block(t['backward_sequence_parallel']['dkdv']):<16}"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class AttentionShape:
    """One attention problem: q is (batch, seqlen, nheads, headdim), k and v (batch, seqlen, nheads_kv, headdim)."""

    batch: int
    seqlen: int
    nheads: int
    headdim: int
    nheads_kv: int | None = None

    _PATTERN = re.compile(r"^\s*(\d+)x(\d+)x(\d+)x(\d+)(?:/(\d+))?\s*$")

    @classmethod
    def parse(cls, text: str) -> AttentionShape:
        """Parse ``BATCHxSEQLENxNHEADSxHEADDIM`` with an optional ``/NHEADS_KV``, e.g. ``2x1024x16x128/4``."""
        match = cls._PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"shape {text!r} is not understood; write BATCHxSEQLENxNHEADSxHEADDIM with an optional /NHEADS_KV, "
                "e.g. 2x1024x16x128 or 2x1024x16x128/4."
            )
        b, s, h, d, hk = match.groups()
        return cls(int(b), int(s), int(h), int(d), int(hk) if hk else None)

    def __post_init__(self) -> None:
        if min(self.batch, self.seqlen, self.nheads) < 1:
            raise ValueError(f"shape {self}: batch, seqlen and nheads must be at least 1.")
        if not MIN_HEADDIM <= self.headdim <= MAX_HEADDIM:
            raise ValueError(f"shape {self}: head dim must be {MIN_HEADDIM}-{MAX_HEADDIM}.")
        if self.nheads_kv is not None and (self.nheads_kv < 1 or self.nheads % self.nheads_kv):
            raise ValueError(f"shape {self}: nheads_kv must divide nheads.")

    def __str__(self) -> str:
        kv = f"/{self.nheads_kv}" if self.nheads_kv is not None else ""
        return f"{self.batch}x{self.seqlen}x{self.nheads}x{self.headdim}{kv}"


@dataclass(frozen=True)
class CaseResult:
    """Outcome of ``runs`` forward+backward passes of one shape in one mode, each compared with the first run.

    Attributes:
        differing_runs: per tensor (``out``, ``dq``, ``dk``, ``dv``), how many runs after the first were not bitwise
            equal to it (``torch.equal``).
        max_abs_diff: per tensor, the largest absolute difference from the first run over all runs.
        nonfinite: whether any run produced a NaN or an infinity (such runs never compare equal).
    """

    shape: str
    causal: bool
    mode: str
    runs: int
    differing_runs: dict[str, int]
    max_abs_diff: dict[str, float]
    nonfinite: bool
    seconds: float

    @property
    def bitwise_equal(self) -> bool:
        return not self.nonfinite and all(n == 0 for n in self.differing_runs.values())


@dataclass
class DeterminismReport:
    """Everything :func:`check_determinism` measured; ``passed`` is what the command's exit code says."""

    device: str
    device_name: str
    path: str
    config_family: str | None
    dtype: str
    runs: int
    results: list[CaseResult] = field(default_factory=list)

    def cases(self, mode: str) -> list[CaseResult]:
        return [r for r in self.results if r.mode == mode]

    @property
    def passed(self) -> bool:
        """True when every case of the deterministic mode was bitwise equal across runs."""
        det = self.cases("deterministic")
        return bool(det) and all(r.bitwise_equal for r in det)

    def to_dict(self) -> dict:
        out = asdict(self)
        for entry, result in zip(out["results"], self.results, strict=True):
            entry["bitwise_equal"] = result.bitwise_equal
        out["passed"] = self.passed
        return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = device_info(device)
        return f"{props['name']} (cc {props['capability'][0]}.{props['capability'][1]})"
    return platform.processor() or platform.machine() or "CPU"


def _case_inputs(shape: AttentionShape, dtype: torch.dtype, device: torch.device, seed: int):
    # Drawn on the CPU so every device of a cluster gets the same inputs for the same seed.
    g = torch.Generator(device="cpu").manual_seed(seed)
    hk = shape.nheads_kv or shape.nheads

    def rand(h: int) -> torch.Tensor:
        t = torch.randn(shape.batch, shape.seqlen, h, shape.headdim, generator=g)
        return t.to(device=device, dtype=dtype)

    return rand(shape.nheads), rand(hk), rand(hk), rand(shape.nheads)


def _run_case(
    shape: AttentionShape, causal: bool, mode: str, runs: int, dtype: torch.dtype, device: torch.device, seed: int
) -> CaseResult:
    q, k, v, do = _case_inputs(shape, dtype, device, seed)
    names = ("out", "dq", "dk", "dv")
    first: tuple[torch.Tensor, ...] | None = None
    differing = dict.fromkeys(names, 0)
    max_diff = dict.fromkeys(names, 0.0)
    nonfinite = False
    start = time.perf_counter()
    for _ in range(runs):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = flash_attention(*leaves, causal=causal, deterministic=mode == "deterministic")
        tensors = (out.detach(), *torch.autograd.grad(out, leaves, do))
        nonfinite |= not all(bool(torch.isfinite(t).all()) for t in tensors)
        if first is None:
            first = tensors
            continue
        for name, a, b in zip(names, first, tensors, strict=True):
            if not torch.equal(a, b):
                differing[name] += 1
                diff = (a.double() - b.double()).abs().max().item()
                max_diff[name] = max(max_diff[name], diff)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CaseResult(
        shape=str(shape),
        causal=causal,
        mode=mode,
        runs=runs,
        differing_runs=differing,
        max_abs_diff=max_diff,
        nonfinite=nonfinite,
        seconds=time.perf_counter() - start,
    )


def check_determinism(
    shapes: Sequence[AttentionShape | str] | None = None,
    runs: int = 5,
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str | None = None,
    causal: Sequence[bool] = (False, True),
    modes: Sequence[str] = MODES,
    seed: int = 0,
) -> DeterminismReport:
    """Run forward and backward ``runs`` times per shape, causal setting and backward mode on the same random inputs
    and compare every run with the first, bitwise.

    Args:
        shapes: problems to run (``AttentionShape`` or ``"2x1024x16x128/4"`` strings); defaults to a few awkward sizes
            on a GPU and tiny ones on the CPU.
        runs: passes per case, at least 2.
        dtype: ``torch.bfloat16``/``float16``/``float32`` or ``"bf16"``/``"fp16"``/``"fp32"``.
        device: defaults to the current CUDA device, else the CPU (the interpreter under ``TRITON_INTERPRET=1``, else
            the PyTorch path, where both modes run the same PyTorch backward).
        causal: which masks to run.
        modes: ``"deterministic"`` and/or ``"sequence-parallel"``.
        seed: seed of the inputs (drawn on the CPU, so equal on every machine).

    Returns:
        A :class:`DeterminismReport`; ``report.passed`` is False if any deterministic case differed between runs.
    """
    if not isinstance(runs, int) or runs < 2:
        raise ValueError(f"`runs={runs!r}`: comparing runs needs at least 2.")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"`dtype={dtype!r}` is not supported; use one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not known; use {' or '.join(MODES)}.")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if shapes is None:
        shapes = DEFAULT_GPU_SHAPES if device.type == "cuda" else DEFAULT_CPU_SHAPES
    parsed = [s if isinstance(s, AttentionShape) else AttentionShape.parse(s) for s in shapes]

    if uses_kernels(device):
        path = "triton" if device.type == "cuda" else "triton-interpreter"
        family = select_config(device).family
    else:
        path, family = "pytorch", None
    report = DeterminismReport(
        device=str(device),
        device_name=_device_name(device),
        path=path,
        config_family=family,
        dtype=str(dtype).removeprefix("torch."),
        runs=runs,
    )
    for shape in parsed:
        for c in causal:
            for mode in modes:
                report.results.append(_run_case(shape, c, mode, runs, dtype, device, seed))
    return report


def _fmt_diff(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def format_report(report: DeterminismReport) -> str:
    """The text ``python -m fa2dist check-determinism`` prints."""
    path = {
        "triton": "Triton kernels",
        "triton-interpreter": "Triton kernels in Triton's interpreter",
        "pytorch": "PyTorch path (no Triton kernels: both modes run the same PyTorch backward)",
    }[report.path]
    config = f", config '{report.config_family}'" if report.config_family else ""
    lines = [
        f"{report.device}: {report.device_name}{config}; {path}; {report.dtype}; {report.runs} runs per case",
        "columns: runs (after the first) not bitwise equal to the first, per tensor; then the largest |difference|",
        "",
        f"{'shape BxSxHxD[/Hkv]':<20} {'causal':<6} {'mode':<17} {'out':>4} {'dq':>4} {'dk':>4} {'dv':>4}  "
        f"max |diff| dq, dk, dv",
    ]
    for r in report.results:
        d = r.differing_runs
        m = r.max_abs_diff
        flag = "  NaN/inf" if r.nonfinite else ""
        lines.append(
            f"{r.shape:<20} {'yes' if r.causal else 'no':<6} {r.mode:<17} {d['out']:>4} {d['dq']:>4} {d['dk']:>4} "
            f"{d['dv']:>4}  {_fmt_diff(m['dq'])}, {_fmt_diff(m['dk'])}, {_fmt_diff(m['dv'])}{flag}"
        )
    lines.append("")
    det = report.cases("deterministic")
    if det:
        bad = [r for r in det if not r.bitwise_equal]
        if bad:
            lines.append(
                f"FAIL: deterministic mode differed between runs in {len(bad)} of {len(det)} cases. Do not rely on "
                "this node for bitwise reproducible training; report it with the output of `python -m fa2dist info`."
            )
        else:
            lines.append(f"PASS: deterministic mode bitwise equal across {report.runs} runs in all {len(det)} cases.")
    seq = report.cases("sequence-parallel")
    if seq:
        differing = [r for r in seq if not r.bitwise_equal]
        note = ""
        if report.path == "triton-interpreter":
            note = " (the interpreter runs atomics one after another, so this says nothing about a GPU)"
        elif report.path == "triton" and differing:
            note = " (expected: atomic dQ accumulation order varies from run to run)"
        lines.append(f"sequence-parallel mode: {len(differing)} of {len(seq)} cases differed between runs{note}.")
    return "\n".join(lines)
