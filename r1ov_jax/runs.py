"""Run directories: the one definition of their layout, one loader for any model path, provenance as data.

    RUN/run.json                 provenance: stage, base model (HF folder or run it started from), prompt format
    RUN/model/                   config.json (HF layout), tokenizer files, preprocessor_config.json, HF side files
    RUN/checkpoints/<step>/      Orbax checkpoints (params, optimizer state, RNG, data-iterator state)
    RUN/base/                    LoRA runs whose base exists nowhere else (a random init): its HF folder
    RUN/metrics.jsonl, RUN/tb/   metrics (JSONL and TensorBoard), RUN/*.png plots

:func:`load` accepts any of: a run directory, its ``checkpoints/`` folder, one ``checkpoints/<step>`` folder, or
an HF folder (``config.json`` + safetensors). ``r1ov export-hf`` turns any step into an HF folder; ``r1ov
import-hf`` creates a run from an HF folder (step 0, params only).

LoRA runs checkpoint the adapters (and their optimizer state) only. ``run.json`` then holds ``lora`` (the
spec) and the base: ``base`` (an HF folder, or the run it started from with ``base_step``) or ``RUN/base``;
:func:`load` rebuilds base + adapters from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1ov_jax import hf
from r1ov_jax.errors import InvalidInputError, MissingInputError
from r1ov_jax.models import lora
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from r1ov_jax.processing import ImageProcessor
from r1ov_jax.processing.prompts import PromptFormat
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.train.checkpoint import Checkpointer, CheckpointError, save_json_atomic

MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
INFO_FILE = "run.json"
BASE_DIR = "base"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
PREPROCESSOR_FILE = "preprocessor_config.json"


def model_dir(run: str) -> str:
    return os.path.join(run, MODEL_DIR)


def checkpoints_dir(run: str) -> str:
    return os.path.join(run, CHECKPOINTS_DIR)


def metrics_path(run: str) -> str:
    return os.path.join(run, METRICS_FILE)


def is_run_dir(path: str) -> bool:
    return os.path.isdir(checkpoints_dir(path))


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith(".safetensors") for f in os.listdir(path)
    )


# ------------------------------------------------------------------------------------------------- writing
def create(
    run: str,
    model: Qwen25VL,
    tokenizer: Tokenizer | None,
    image_processor: ImageProcessor | None = None,
    *,
    stage: str,
    base: str | None = None,
    prompt_format: PromptFormat | None = None,
) -> str:
    """Writes ``RUN/model`` and ``RUN/run.json`` (process 0 only in multi-host runs); returns ``RUN/model``.

    ``base``: the HF folder or run directory the weights came from (its HF side files, e.g. the chat template and
    generation config, are copied into ``RUN/model``); None for a model initialized from scratch.
    """
    d = model_dir(run)
    if jax.process_index() != 0:
        return d
    os.makedirs(d, exist_ok=True)
    model.cfg.save_json(os.path.join(d, "config.json"))
    side = _model_files_of(base) if base else None
    if side:
        for name in hf.io.SIDE_FILES:
            if os.path.exists(os.path.join(side, name)):
                shutil.copy2(os.path.join(side, name), os.path.join(d, name))
    if tokenizer is not None:
        tokenizer.save(d)
    if image_processor is not None:
        write_preprocessor_config(d, image_processor)
    info = {
        "stage": stage,
        "base": os.path.abspath(base) if base else None,
        "prompt": (prompt_format or PromptFormat()).to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if lora.is_lora(model):
        info.update(_lora_base(run, model, base))
    save_json_atomic(os.path.join(run, INFO_FILE), info)
    return d


def _lora_base(run: str, model: Qwen25VL, base: str | None) -> dict:
    """run.json fields of a LoRA run: the spec and where its frozen base lives (checkpoints hold adapters only).

    A base from a run is pinned to that run's latest step now; a base that exists nowhere on disk (a random
    init) is written to ``RUN/base`` once (QLoRA: its dequantized kernels, which re-quantize to the same codes).
    """
    out = {"lora": lora.spec_of(model).to_dict()}
    if base and is_run_dir(base):
        ckpt = Checkpointer(checkpoints_dir(base), async_save=False)
        try:
            out["base_step"] = ckpt.latest_step()
        finally:
            ckpt.close()
    elif not base:
        hf.save_pretrained(lora.base_model(model), os.path.join(run, BASE_DIR))
        out["base"] = os.path.abspath(os.path.join(run, BASE_DIR))
    return out


def write_preprocessor_config(model_folder: str, image_processor: ImageProcessor) -> None:
    with open(os.path.join(model_folder, PREPROCESSOR_FILE), "w") as f:
        json.dump(image_processor.to_dict(), f, indent=2)


def save_params(run: str, model: Qwen25VL, step: int = 0) -> None:
    """A params-only checkpoint at ``step`` (``r1ov import-hf``)."""
    ckpt = Checkpointer(checkpoints_dir(run), async_save=False)
    try:
        ckpt.save(
            step, {"params": nnx.state(model, nnx.Param)}, {"step": step, "data_state": None}, force=True
        )
    finally:
        ckpt.close()


# ------------------------------------------------------------------------------------------------- reading
def read_info(run: str) -> dict[str, Any]:
    """``RUN/run.json`` ({} for runs written before it existed)."""
    path = os.path.join(run, INFO_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{path}: not valid JSON ({e})") from None


def image_processor_for(model_folder: str) -> ImageProcessor:
    """The image processor a model folder asks for (defaults when it has no preprocessor_config.json)."""
    path = os.path.join(model_folder, PREPROCESSOR_FILE)
    if not os.path.exists(path):
        return ImageProcessor()
    with open(path) as f:
        try:
            return ImageProcessor.from_dict(json.load(f))
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{path}: not valid JSON ({e})") from None


def locate(path: str, step: int | None = None) -> tuple[str | None, str, int | None]:
    """(run dir or None, model folder, step) for a run dir, ``RUN/checkpoints``, ``RUN/checkpoints/<step>`` or an
    HF folder."""
    if not os.path.exists(path):
        raise MissingInputError(f"model path {path} does not exist")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINTS_DIR and os.path.basename(path).isdigit():
        if step is not None and step != int(os.path.basename(path)):
            raise InvalidInputError(f"{path} is step {os.path.basename(path)} but step {step} was asked for")
        path, step = os.path.dirname(parent), int(os.path.basename(path))
    elif os.path.basename(path) == CHECKPOINTS_DIR:
        path = parent
    if is_run_dir(path):
        if not os.path.exists(os.path.join(model_dir(path), "config.json")):
            raise CheckpointError(f"{model_dir(path)}/config.json is missing: cannot know the architecture")
        return path, model_dir(path), step
    if is_hf_dir(path):
        if step is not None:
            raise InvalidInputError(f"{path} is an HF folder: it has no steps (got step {step})")
        return None, path, None
    raise MissingInputError(
        f"{path} is neither a run directory (no {CHECKPOINTS_DIR}/ inside) nor an HF folder"
    )


@dataclasses.dataclass
class Loaded:
    """What :func:`load` returns: the model and everything needed to prompt, evaluate or export it."""

    model: Qwen25VL
    tokenizer: Tokenizer | None
    image_processor: ImageProcessor
    model_dir: str  # where config, tokenizer and HF side files live
    run_dir: str | None  # None for an HF folder
    step: int | None
    info: dict

    @property
    def prompt_format(self) -> PromptFormat:
        """The format the model was trained with (recorded in run.json), else the default."""
        return PromptFormat.from_dict(self.info["prompt"]) if "prompt" in self.info else PromptFormat()


def load(
    path: str,
    *,
    step: int | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attn_impl: str = "xla",
    remat: bool | str = False,
    require_tokenizer: bool = False,
) -> Loaded:
    """Loads a run (params of ``step`` or the latest) or an HF folder; see the module docstring for ``path``."""
    run, mdir, step = locate(path, step)
    if run is None:
        model = hf.from_pretrained(
            mdir, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl, remat=remat
        )
        info = {}
    else:
        info = read_info(run)
        kw = dict(dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl, remat=remat)
        if info.get("lora", {}).get("rank"):
            model = _lora_with_base(run, info, **kw)
        else:
            cfg = Qwen25VLConfig.from_json(mdir, dtype=dtype, attn_impl=attn_impl)
            model = hf.io.abstract_model(cfg.replace(remat=remat))
        params = nnx.state(model, lora.trainable(model))  # a LoRA run's checkpoints hold the adapters only
        ckpt = Checkpointer(checkpoints_dir(run), async_save=False)
        try:
            step = ckpt.latest_step() if step is None else step
            state, _ = ckpt.restore(step, {"params": params}, partial=True)
        finally:
            ckpt.close()
        cast = (lambda x: jnp.asarray(x, param_dtype)) if param_dtype is not None else jnp.asarray
        nnx.update(model, jax.tree.map(cast, state["params"]))  # restored leaves may be host NumPy
    tok = Tokenizer.from_pretrained(mdir) if _has_tokenizer(mdir) else None
    if tok is None and require_tokenizer:
        raise MissingInputError(
            f"{mdir}: no tokenizer files (tokenizer.json / tokenizer_config.json / tokenizer.model)"
        )
    return Loaded(model, tok, image_processor_for(mdir), mdir, run, step, info)


def _lora_with_base(run: str, info: dict, **kw) -> Qwen25VL:
    """The base a LoRA run points to (merged, when it is itself a LoRA run) with fresh adapters of the run's
    spec, ready for the adapters' restore."""
    base = info.get("base")
    if not base or not os.path.exists(base):
        raise CheckpointError(f"{run}: LoRA run whose base {base!r} (run.json) is missing: cannot rebuild it")
    base_model = load(base, step=info.get("base_step"), **kw).model
    return lora.apply_lora(lora.merged(base_model), lora.LoraSpec.from_config(info["lora"]))


def _has_tokenizer(d: str) -> bool:
    return any(os.path.exists(os.path.join(d, n)) for n in ("tokenizer.json", "tokenizer_config.json"))


def _model_files_of(path: str) -> str:
    """The folder holding a base's config and side files: ``RUN/model`` for a run, the folder itself for HF."""
    return model_dir(path) if is_run_dir(path) else path
