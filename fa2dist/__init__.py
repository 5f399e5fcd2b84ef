"""fa2dist: FlashAttention-2 in Triton for PyTorch Lightning training on clusters of mixed GPUs."""

from fa2dist.compat import KernelsConfigV2, flash_attention_v2, flash_attention_v2_custom, init_to_zero_v2
from fa2dist.configs import BackwardConfig, BlockConfig, KernelsConfig, register_config
from fa2dist.determinism import deterministic, is_deterministic, set_deterministic
from fa2dist.module import FlashAttention, MultiheadFlashAttention, RotaryEmbedding, alibi_slopes
from fa2dist.ops.attention import flash_attention, flash_attention_varlen

__version__ = "0.1.0"

__all__ = [
    "BackwardConfig",
    "BlockConfig",
    "FlashAttention",
    "KernelsConfig",
    "KernelsConfigV2",
    "MultiheadFlashAttention",
    "RotaryEmbedding",
    "deterministic",
    "alibi_slopes",
    "flash_attention",
    "flash_attention_varlen",
    "flash_attention_v2",
    "flash_attention_v2_custom",
    "init_to_zero_v2",
    "is_deterministic",
    "register_config",
    "set_deterministic",
]
