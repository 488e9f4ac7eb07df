"""Qwen2.5-VL configuration: architecture read from / written to HF ``config.json``, plus runtime options.

Architecture fields mirror transformers' ``Qwen2_5_VLConfig`` (5.x nested ``text_config``/``vision_config``;
the 4.x flat layout with ``rope_scaling`` is read too). Runtime options (compute dtype, attention impl, remat)
are ours and are never written to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from r1ov_jax.layers.remat import normalize as normalize_remat
from r1ov_jax.processing.positions import VisionGeometry
from r1ov_jax.errors import InvalidInputError, MissingInputError

# Text keys of the flat 4.x layout (everything not vision/top-level belongs to the text model).
_TOP_LEVEL = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "tie_word_embeddings",
)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def geometry(self) -> VisionGeometry:
        """The input geometry the processor, the data pipeline and the prompt builder must use."""
        return VisionGeometry(
            self.patch_size, self.temporal_patch_size, self.spatial_merge_size, self.window_size
        )


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    # --- runtime options (not part of config.json) ---
    dtype: Any = jnp.float32  # compute dtype; params keep their own dtype
    attn_impl: str = "xla"  # "auto" | "xla" | "pallas", see r1ov_jax.layers.attention
    remat: bool | str = False  # block rematerialization policy, see r1ov_jax.layers.remat (True = "full")
    scan_layers: bool = False  # run the blocks of each tower as one lax.scan (r1ov_jax.layers.scan)
    # lax.scan unroll of the (text, vision, vision runs inside a step) scans; preflight's FLOP count varies it
    scan_unroll: tuple = (1, 1, 1)
    head_unroll: bool = False  # unroll the chunked LM-head loss loops (train.losses); preflight's FLOP count

    def __post_init__(self):
        object.__setattr__(self, "remat", normalize_remat(self.remat))
        t, v = self.text, self.vision
        if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
            raise InvalidInputError(
                f"text: hidden {t.hidden_size}, heads {t.num_attention_heads}, "
                f"kv heads {t.num_key_value_heads} do not divide"
            )
        if sum(t.mrope_section) * 2 != t.head_dim:
            raise InvalidInputError(
                f"mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {t.head_dim // 2}"
            )
        if v.hidden_size % v.num_heads or v.head_dim % 4:
            raise InvalidInputError(
                f"vision: hidden {v.hidden_size} / heads {v.num_heads} must give a head_dim "
                "divisible by 4 (2D rope)"
            )
        if v.out_hidden_size != t.hidden_size:
            raise InvalidInputError(
                f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}"
            )
        if any(i >= v.depth for i in v.fullatt_block_indexes):
            raise InvalidInputError(
                f"fullatt_block_indexes {list(v.fullatt_block_indexes)} out of range for depth {v.depth}"
            )

    def replace(self, **kw) -> "Qwen25VLConfig":
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, d: dict, **runtime) -> "Qwen25VLConfig":
        d = dict(d)
        if "text_config" in d:  # 5.x nested layout
            text = dict(d.get("text_config") or {})
            # pre-5 configs kept tie_word_embeddings inside text_config; the model reads the top-level value
            if "tie_word_embeddings" not in d and "tie_word_embeddings" in text:
                d["tie_word_embeddings"] = text["tie_word_embeddings"]
        else:  # 4.x flat layout
            text = {k: v for k, v in d.items() if k not in _TOP_LEVEL and k != "vision_config"}
        vis = dict(d.get("vision_config") or {})
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        text_kw = {f.name: text[f.name] for f in dataclasses.fields(TextConfig) if f.name in text}
        text_kw["rope_theta"] = float(rope.get("rope_theta", text.get("rope_theta", 1e6)))
        text_kw["mrope_section"] = tuple(rope.get("mrope_section", (16, 24, 24)))
        if text.get("use_sliding_window"):
            raise NotImplementedError("use_sliding_window=True is not supported by this port")
        if isinstance(text_kw.get("eos_token_id"), list):
            text_kw["eos_token_id"] = text_kw["eos_token_id"][0]
        if "in_chans" in vis and "in_channels" not in vis:
            vis["in_channels"] = vis["in_chans"]
        vis_kw = {f.name: vis[f.name] for f in dataclasses.fields(VisionConfig) if f.name in vis}
        vis_kw["fullatt_block_indexes"] = tuple(vis.get("fullatt_block_indexes", (7, 15, 23, 31)))
        vis_kw["rope_theta"] = float((vis.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        top = {k: d[k] for k in _TOP_LEVEL if k in d}
        return cls(text=TextConfig(**text_kw), vision=VisionConfig(**vis_kw), **top, **runtime)

    def to_hf_dict(self, dtype: str = "float32") -> dict:
        t, v = self.text, self.vision
        text = {f.name: getattr(t, f.name) for f in dataclasses.fields(TextConfig)}
        text.pop("rope_theta"), text.pop("mrope_section")
        text.update(
            model_type="qwen2_5_vl_text",
            rope_parameters={
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
            },
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=t.num_hidden_layers,
            layer_types=["full_attention"] * t.num_hidden_layers,
            attention_dropout=0.0,
            initializer_range=0.02,
            use_cache=True,
            dtype=dtype,
        )
        vision = {f.name: getattr(v, f.name) for f in dataclasses.fields(VisionConfig)}
        vision.pop("rope_theta")
        vision.update(
            model_type="qwen2_5_vl",
            fullatt_block_indexes=list(v.fullatt_block_indexes),
            rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
            initializer_range=0.02,
            dtype=dtype,
        )
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "text_config": text,
            "vision_config": vision,
            **{k: getattr(self, k) for k in _TOP_LEVEL},
            "dtype": dtype,
        }

    @classmethod
    def from_json(cls, path: str, **runtime) -> "Qwen25VLConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise MissingInputError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise InvalidInputError(f"{path}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type") not in ("qwen2_5_vl", None):
            raise InvalidInputError(f"{path}: model_type {d.get('model_type')!r} is not qwen2_5_vl")
        _check_field_types(d, path)
        try:
            return cls.from_hf_dict(d, **runtime)
        except InvalidInputError as e:
            raise InvalidInputError(f"{path}: {e}") from None
        except (TypeError, ValueError, KeyError, ZeroDivisionError, AttributeError) as e:
            raise InvalidInputError(
                f"{path}: not a usable Qwen2.5-VL config ({type(e).__name__}: {e})"
            ) from None

    def save_json(self, path: str, dtype: str = "float32") -> None:
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(dtype), f, indent=2, sort_keys=True)


def _check_field_types(d: dict, path: str) -> None:
    """InvalidInputError naming the field when a config.json value has the wrong type (e.g. hidden_size "4k")."""
    text = d.get("text_config") if isinstance(d.get("text_config"), dict) else d
    vision = d.get("vision_config") if isinstance(d.get("vision_config"), dict) else {}
    for prefix, block, cls in (("", text, TextConfig), ("vision_config.", vision, VisionConfig)):
        if "text_config" in d and prefix == "":
            prefix = "text_config."
        for f in dataclasses.fields(cls):
            if f.name not in block or block[f.name] is None:
                continue
            v, default = block[f.name], f.default
            if isinstance(default, bool) or default is None:
                continue
            if isinstance(default, int) and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidInputError(f"{path}: {prefix}{f.name} must be a non-negative integer, got {v!r}")
            if isinstance(default, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InvalidInputError(f"{path}: {prefix}{f.name} must be a number, got {v!r}")
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key in text and isinstance(text[key], int) and text[key] == 0:
            raise InvalidInputError(f"{path}: {key} must be positive, got 0")


# ---------------------------------------------------------------------- presets
def qwen2_5_vl_7b(**runtime) -> Qwen25VLConfig:
    return Qwen25VLConfig(**runtime)


def qwen2_5_vl_3b(**runtime) -> Qwen25VLConfig:
    text = TextConfig(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
    )
    return Qwen25VLConfig(
        text=text, vision=VisionConfig(out_hidden_size=2048), tie_word_embeddings=True, **runtime
    )


def tiny(
    vocab_size: int = 256,
    *,
    image_token_id: int = 252,
    video_token_id: int = 253,
    vision_start_token_id: int = 250,
    vision_end_token_id: int = 251,
    **runtime,
) -> Qwen25VLConfig:
    """A few-hundred-kB model for tests and the CPU demo (mirrors the fact sheet's tiny HF config)."""
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
    )
    vision = VisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        out_hidden_size=64,
        window_size=56,
        fullatt_block_indexes=(1,),
    )
    return Qwen25VLConfig(
        text=text,
        vision=vision,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id,
        **runtime,
    )
