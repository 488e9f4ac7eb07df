"""Qwen2.5-VL in Flax NNX."""

from r1ov_jax.models.qwen2_5_vl.config import (
    Qwen25VLConfig,
    TextConfig,
    VisionConfig,
    qwen2_5_vl_3b,
    qwen2_5_vl_7b,
    tiny,
)
from r1ov_jax.models.qwen2_5_vl.model import Qwen25VL, decode_positions, next_positions
from r1ov_jax.models.qwen2_5_vl.text import DecoderOutput, KVCache

__all__ = [
    "DecoderOutput",
    "KVCache",
    "Qwen25VL",
    "Qwen25VLConfig",
    "TextConfig",
    "VisionConfig",
    "qwen2_5_vl_3b",
    "qwen2_5_vl_7b",
    "tiny",
    "decode_positions",
    "next_positions",
]
