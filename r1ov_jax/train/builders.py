"""Models from configs, and the on-disk layout of a run.

A run directory holds everything needed to rebuild and export its model::

    RUN/model/            config.json (HF layout), tokenizer files, preprocessor_config.json
    RUN/checkpoints/<step>/   Orbax checkpoints (params, optimizer state, step, RNG, data state)
    RUN/metrics.jsonl, RUN/tb/, RUN/*.png

``r1ov export-hf --checkpoint RUN`` turns any step into an HF folder; ``r1ov import-hf`` creates a run from
an HF folder (step 0, params only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from r1ov_jax import hf
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig, qwen2_5_vl_3b, qwen2_5_vl_7b, tiny
from r1ov_jax.processing import ImageProcessor
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.train.checkpoint import Checkpointer, CheckpointError

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
            text=ml_collections.ConfigDict(),
            vision=ml_collections.ConfigDict(),
        )
    )


def model_config(mc: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Qwen25VLConfig:
    """Architecture from a preset (+ ``text``/``vision`` field overrides), token ids from ``tokenizer``."""
    if mc.preset not in PRESETS:
        raise ValueError(f"model.preset {mc.preset!r} unknown; choose from {sorted(PRESETS)}")
    if mc.dtype not in DTYPES:
        raise ValueError(f"model.dtype {mc.dtype!r} unknown; choose from {sorted(DTYPES)}")
    cfg = PRESETS[mc.preset]()
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
        text=text, vision=vision, dtype=DTYPES[mc.dtype], attn_impl=mc.attn_impl, remat=mc.remat, **ids
    )


def build_model(mc: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None) -> Qwen25VL:
    """From ``mc.hf_path`` when set (a local HF folder), else randomly initialized from the preset."""
    if mc.hf_path:
        return hf.from_pretrained(
            mc.hf_path,
            dtype=DTYPES[mc.dtype],
            param_dtype=DTYPES[mc.param_dtype],
            attn_impl=mc.attn_impl,
            remat=mc.remat,
        )
    return Qwen25VL(model_config(mc, tokenizer), rngs=nnx.Rngs(mc.init_seed))


def write_model_files(
    run_dir: str,
    model: Qwen25VL,
    tokenizer: Tokenizer | None,
    image_processor: ImageProcessor | None = None,
    side_files_from: str | None = None,
) -> str:
    """Writes RUN/model (config.json, tokenizer, preprocessor config); process 0 only in multi-host runs."""
    d = os.path.join(run_dir, "model")
    if jax.process_index() != 0:
        return d
    os.makedirs(d, exist_ok=True)
    model.cfg.save_json(os.path.join(d, "config.json"))
    src = side_files_from or getattr(model, "hf_source", None)
    if src:
        for name in hf.io.SIDE_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(d, name))
    if tokenizer is not None:
        tokenizer.save(d)
    if image_processor is not None:
        write_preprocessor_config(d, image_processor)
    return d


def write_preprocessor_config(d: str, ip: ImageProcessor) -> None:
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(ip.to_dict(), f, indent=2)


def image_processor_for(model_dir: str) -> ImageProcessor:
    """The image processor a model folder asks for (defaults when it has no preprocessor_config.json)."""
    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.exists(path):
        return ImageProcessor()
    with open(path) as f:
        try:
            return ImageProcessor.from_dict(json.load(f))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def resolve_run_dir(path: str) -> str:
    """Accepts RUN or RUN/checkpoints."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        raise CheckpointError(f"{path} is not a run directory (no checkpoints/ inside)")
    if not os.path.exists(os.path.join(path, "model", "config.json")):
        raise CheckpointError(f"{path}/model/config.json is missing: cannot know the architecture")
    return path


def load_run(path: str, step: int | None = None, dtype=jnp.float32, attn_impl: str = "xla"):
    """(model, tokenizer or None, step) from a run directory; params restored from the given/latest step."""
    run = resolve_run_dir(path)
    mdir = os.path.join(run, "model")
    cfg = Qwen25VLConfig.from_json(mdir, dtype=dtype, attn_impl=attn_impl)
    model = hf.io.abstract_model(cfg)
    ckpt = Checkpointer(os.path.join(run, "checkpoints"), async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        state, _ = ckpt.restore(step, {"params": nnx.state(model, nnx.Param)}, partial=True)
    finally:
        ckpt.close()
    nnx.update(model, jax.tree.map(jnp.asarray, state["params"]))  # restored leaves may be host NumPy
    model.hf_source = mdir
    tok = (
        Tokenizer.from_pretrained(mdir)
        if os.path.exists(os.path.join(mdir, "tokenizer_config.json"))
        else None
    )
    return model, tok, step


def save_params_checkpoint(run_dir: str, model: Qwen25VL, step: int = 0) -> None:
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
    try:
        ckpt.save(
            step, {"params": nnx.state(model, nnx.Param)}, {"step": step, "data_state": None}, force=True
        )
    finally:
        ckpt.close()


__all__ = [
    "build_model",
    "default_model_config",
    "load_run",
    "model_config",
    "resolve_run_dir",
    "save_params_checkpoint",
    "write_model_files",
    "image_processor_for",
]
