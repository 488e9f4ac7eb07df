"""Models from the ``model`` block of a config (preset or HF folder). Run directories: ``r1ov_jax.runs``."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
from flax import nnx

from r1ov_jax import hf
from r1ov_jax.errors import InvalidInputError
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig, qwen2_5_vl_3b, qwen2_5_vl_7b, tiny
from r1ov_jax.processing.tokenizer import Tokenizer

PRESETS = {"tiny": tiny, "qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            preset="tiny",
            hf_path="",
            init_seed=0,
            dtype="float32",
            param_dtype="float32",
            attn_impl="xla",
            remat=False,
            scan_layers=False,
            text=ml_collections.ConfigDict(),
            vision=ml_collections.ConfigDict(),
            lora=default_lora_config(),
        )
    )


def default_lora_config() -> ml_collections.ConfigDict:
    """``model.lora``: rank 0 = full fine-tuning. ``targets``: regexes over module paths (``models.lora``)."""
    from r1ov_jax.models import lora

    spec = lora.LoraSpec()
    return ml_collections.ConfigDict(
        dict(
            rank=spec.rank,
            alpha=spec.alpha,
            dropout=spec.dropout,
            targets=list(spec.targets),  # add lora.VISION_TARGETS to adapt the vision tower and merger too
            base_qtype="",  # "" | "int8" | "nf4" (QLoRA: the adapted base kernels are stored quantized)
            seed=0,
        )
    )


def with_adapters(model: Qwen25VL, mc: ml_collections.ConfigDict) -> Qwen25VL:
    """``model`` with the adapters ``mc.lora`` asks for; a LoRA model (e.g. a LoRA SFT run that GRPO starts
    from) is merged first, so the new stage starts from the previous stage's policy."""
    from r1ov_jax.models import lora

    spec = lora_spec(mc)
    model = lora.merged(model)
    return (
        lora.apply_lora(model, spec, seed=int((mc.get("lora") or {}).get("seed", 0)))
        if spec.enabled
        else model
    )


def lora_spec(mc: ml_collections.ConfigDict):
    """The ``models.lora.LoraSpec`` of ``mc.lora`` (rank 0 when the block is absent)."""
    from r1ov_jax.models import lora

    lc = dict(mc.get("lora") or {})
    lc.pop("seed", None)
    return lora.LoraSpec.from_config(lc)


def model_config(mc: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Qwen25VLConfig:
    """Architecture from a preset (+ ``text``/``vision`` field overrides), token ids from ``tokenizer``."""
    if mc.preset not in PRESETS:
        raise InvalidInputError(f"model.preset {mc.preset!r} unknown; choose from {sorted(PRESETS)}")
    if mc.dtype not in DTYPES:
        raise InvalidInputError(f"model.dtype {mc.dtype!r} unknown; choose from {sorted(DTYPES)}")
    cfg = PRESETS[mc.preset]()
    for name, sub in (("text", cfg.text), ("vision", cfg.vision)):
        known = {f.name for f in dataclasses.fields(sub)}
        if unknown := sorted(set(mc[name]) - known):
            raise InvalidInputError(f"model.{name}: unknown fields {unknown}; known: {sorted(known)}")
    text = dataclasses.replace(cfg.text, **dict(mc.text))
    vision = dataclasses.replace(cfg.vision, **dict(mc.vision))
    ids = {}
    if tokenizer is not None:
        text = dataclasses.replace(
            text,
            vocab_size=max(text.vocab_size, tokenizer.vocab_size)
            if mc.preset != "tiny"
            else tokenizer.vocab_size,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=None,
        )
        ids = dict(
            image_token_id=tokenizer.image_pad_id,
            video_token_id=tokenizer.video_pad_id,
            vision_start_token_id=tokenizer.vision_start_id,
            vision_end_token_id=tokenizer.vision_end_id,
        )
    return cfg.replace(
        text=text, vision=vision, dtype=DTYPES[mc.dtype], attn_impl=mc.attn_impl, remat=mc.remat,
        scan_layers=bool(mc.scan_layers), **ids,
    )  # fmt: skip


def build_model(mc: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Qwen25VL:
    """From ``mc.hf_path`` when set (a local HF folder), else randomly initialized from the preset; with LoRA
    adapters when ``mc.lora.rank > 0``."""
    if mc.hf_path:
        model = hf.from_pretrained(
            mc.hf_path,
            dtype=DTYPES[mc.dtype],
            param_dtype=DTYPES[mc.param_dtype],
            attn_impl=mc.attn_impl,
            remat=mc.remat,
        ).set_runtime(scan_layers=bool(mc.scan_layers))
    else:
        model = Qwen25VL(model_config(mc, tokenizer), rngs=nnx.Rngs(mc.init_seed))
    return with_adapters(model, mc)
