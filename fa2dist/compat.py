"""The API of flash-attention-triton 0.1.x, kept working on fa2dist's kernels.

Differences from that package, on purpose: bf16 inputs stay bf16 (it cast them to fp16, which overflows above
65504), fp32 inputs are computed in fp32 instead of being cast to fp16, K/V may have fewer heads than Q (GQA), a GPU
missing from a ``kernels_configs`` dict falls back to fa2dist's own config for it instead of failing, and
``backward_autotune_configs`` are not timed: the first config of the requested mode is used, so the deterministic
mode never changes its tiles between runs. Non-causal attention is in ``fa2dist.flash_attention``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fa2dist.configs import BackwardConfig, BlockConfig, KernelsConfig
from fa2dist.ops.attention import flash_attention


def init_to_zero_v2(name: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Pre-hook for ``triton.Config`` that zeroes the kernel argument ``name`` (e.g. ``"DQ"``) in place.

    fa2dist's launchers zero their own accumulators, so configs work with or without this hook.
    """
    if not isinstance(name, str):
        raise TypeError(f"`init_to_zero_v2(name={name!r})`: expected the argument's name as a str, e.g. 'DQ'.")

    def hook(nargs: dict[str, torch.Tensor]) -> torch.Tensor:
        return nargs[name].zero_()

    return hook


@dataclass(frozen=True)
class KernelsConfigV2:
    """The seed package's config (same fields); accepted wherever fa2dist takes a config.

    Attributes:
        block_rows_size: query rows per forward tile.
        block_cols_size: key rows per forward tile.
        min_block_headdim: smallest padded head dim (power of two, at least 16).
        max_headdim: largest supported head dim.
        seqlen_cache_divisor: sequence-length quantiser (kept for compatibility).
        min_warps: forward warps for head dim <= 64.
        max_warps: forward warps above head dim 64.
        num_stages: forward pipelining stages.
        backward_autotune_configs: ``triton.Config`` objects with ``BLOCK_Q_ROWS_SIZE``, ``BLOCK_KV_COLS_SIZE`` and
            ``SEQUENCE_PARALLEL``; the first one of each mode is used.
    """

    block_rows_size: int
    block_cols_size: int
    min_block_headdim: int
    max_headdim: int
    seqlen_cache_divisor: int
    min_warps: int
    max_warps: int
    num_stages: int
    backward_autotune_configs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        m = self.min_block_headdim
        if not (isinstance(m, int) and m >= 16 and m & (m - 1) == 0):
            raise ValueError(f"`KernelsConfigV2(min_block_headdim={m!r})` must be a power of two >= 16.")
        if not (isinstance(self.min_warps, int) and isinstance(self.max_warps, int) and self.min_warps <= self.max_warps):
            raise ValueError(
                f"`KernelsConfigV2(min_warps={self.min_warps!r}, max_warps={self.max_warps!r})`: min_warps must not "
                "exceed max_warps."
            )
        self.to_kernels_config()  # validates block sizes, warps and stages with BlockConfig's messages

    def _backward(self, sequence_parallel: bool) -> BackwardConfig:
        chosen = None
        for cfg in self.backward_autotune_configs:
            if bool(cfg.kwargs.get("SEQUENCE_PARALLEL", False)) == sequence_parallel:
                chosen = cfg
                break
        if chosen is None and self.backward_autotune_configs:
            chosen = self.backward_autotune_configs[0]
        if chosen is None:
            block = BlockConfig(64, 64, self.min_warps, 1)
            return BackwardConfig(block, block)
        bm = chosen.kwargs.get("BLOCK_Q_ROWS_SIZE", 64)
        bn = chosen.kwargs.get("BLOCK_KV_COLS_SIZE", 64)
        stages = chosen.num_stages or 1
        return BackwardConfig(BlockConfig(bm, bn, chosen.num_warps, stages), BlockConfig(bn, bm, chosen.num_warps, stages))

    def to_kernels_config(self) -> KernelsConfig:
        """The equivalent fa2dist config."""
        small = BlockConfig(self.block_rows_size, self.block_cols_size, self.min_warps, self.num_stages)
        large = BlockConfig(self.block_rows_size, self.block_cols_size, self.max_warps, self.num_stages)
        forward = ((64, small), (self.max_headdim, large)) if self.max_headdim > 64 else ((self.max_headdim, small),)
        det = ((self.max_headdim, self._backward(False)),)
        seq = ((self.max_headdim, self._backward(True)),)
        return KernelsConfig(
            family="custom",
            forward=forward,
            backward_deterministic=det,
            backward_sequence_parallel=seq,
            max_headdim=self.max_headdim,
            seqlen_cache_divisor=self.seqlen_cache_divisor,
            source="KernelsConfigV2",
        )


def flash_attention_v2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """Causal FlashAttention-2 on (batch, nheads, seqlen, headdim) tensors with the device's own config.

    Args:
        q: (batch, nheads, seqlen_q, headdim).
        k, v: (batch, nheads_kv, seqlen_k, headdim).
        softmax_scale: defaults to 1/sqrt(headdim).
        deterministic: True for the bitwise reproducible backward. False (the seed's default) defers to the global
            switch (``fa2dist.set_deterministic``, ``FA2DIST_DETERMINISTIC``, ``Trainer(deterministic=True)``), so
            a reproducible run stays reproducible through code written against the seed API; with nothing set
            that is the sequence-parallel backward, as in the seed.

    Returns:
        Output with q's shape and dtype.
    """
    return flash_attention(
        q, k, v, causal=True, softmax_scale=softmax_scale, deterministic=True if deterministic else None, layout="bhsd"
    )


def flash_attention_v2_custom(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None,
    kernels_configs: dict[tuple[int, int], KernelsConfigV2],
) -> torch.Tensor:
    """Causal FlashAttention-2 with a ``{(major, minor): KernelsConfigV2}`` dict chosen by each device's capability.

    The backward mode follows the global switch (``fa2dist.set_deterministic``); a capability missing from the dict
    uses fa2dist's own config for it.
    """
    if not isinstance(kernels_configs, dict):
        raise TypeError(
            f"`kernels_configs` must be a dict {{(major, minor): KernelsConfigV2}}, got {type(kernels_configs).__name__}."
        )
    return flash_attention(
        q, k, v, causal=True, softmax_scale=softmax_scale, layout="bhsd", config=kernels_configs
    )
