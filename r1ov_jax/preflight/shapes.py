"""The abstract state preflight compiles: the model, its optimizer state and batches of the configured shapes as
``ShapeDtypeStruct``s with the shardings the trainers give them (no weights or data read)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1ov_jax.errors import MissingInputError


def resolve_attn_impl(impl: str) -> str:
    """What ``model.attn_impl`` becomes on a TPU: "auto" picks the Pallas kernels there."""
    return "pallas" if impl == "auto" else impl


def model_config_for_target(mc: ml_collections.ConfigDict):
    """The model config the trainers would build (preset + overrides, or an HF folder's config.json only —
    no weights), with attn_impl resolved for the TPU target."""
    import os

    from r1ov_jax.models.qwen2_5_vl import Qwen25VLConfig
    from r1ov_jax.train.builders import DTYPES, model_config

    impl = resolve_attn_impl(mc.attn_impl)
    if mc.hf_path:
        path = os.path.join(mc.hf_path, "config.json")
        if not os.path.isfile(path):
            raise MissingInputError(
                f"model.hf_path: {path} does not exist (preflight reads only config.json)"
            )
        return Qwen25VLConfig.from_json(
            path, dtype=DTYPES[mc.dtype], attn_impl=impl, remat=mc.remat, scan_layers=bool(mc.scan_layers)
        )
    return model_config(mc).replace(attn_impl=impl)


def sds(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def path_key(path) -> tuple[str, ...]:
    return tuple(str(k) for k in path)


def _build(mcfg, spec):
    """The trainers' model (``builders.build_model``): with the config's LoRA/QLoRA adapters when enabled."""
    from r1ov_jax.models import lora
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL

    return (
        lora.apply_lora(Qwen25VL(mcfg, rngs=nnx.Rngs(0)), spec)
        if spec.enabled
        else Qwen25VL(mcfg, rngs=nnx.Rngs(0))
    )


def abstract_model(mcfg, mesh, spec=None):
    """The model as ShapeDtypeStructs with the shardings ``shard_model`` gives its parameters."""
    from r1ov_jax.models import lora
    from r1ov_jax.sharding import param_shardings

    model = nnx.eval_shape(lambda: _build(mcfg, spec or lora.LoraSpec()))
    by_path = {path_key(p): s for p, s in nnx.to_flat_state(param_shardings(model, mesh))}
    rep = NamedSharding(mesh, PartitionSpec())
    flat = [
        (p, v.replace(sds(v.get_value(), by_path.get(path_key(p), rep))))
        for p, v in nnx.to_flat_state(nnx.state(model))
    ]
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def abstract_optimizer(mcfg, model, optim_cfg, total_steps: int, mesh):
    """The trainers' optimizer (``make_nnx_optimizer``) as ShapeDtypeStructs, sharded by the
    ``shard_optimizer`` rule: a leaf takes the sharding of the parameter whose path it ends with."""
    from r1ov_jax.models import lora
    from r1ov_jax.train.optim import make_nnx_optimizer

    spec = lora.spec_of(model)
    opt = nnx.eval_shape(lambda: make_nnx_optimizer(_build(mcfg, spec), optim_cfg, total_steps))
    by_path = {path_key(p): v.get_value().sharding for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    rep = NamedSharding(mesh, PartitionSpec())

    def sharding_for(path, value):
        keys = path_key(path)
        if value.ndim:
            for start in range(len(keys)):
                if keys[start:] in by_path:
                    return by_path[keys[start:]]
        return rep

    flat = [
        (p, v.replace(sds(v.get_value(), sharding_for(p, v.get_value()))))
        for p, v in nnx.to_flat_state(nnx.state(opt))
    ]
    nnx.update(opt, nnx.from_flat_state(flat))
    return opt


# -------------------------------------------------------------------------------------------- batch shapes
def _vision_shapes(rows: int, patches: int, geometry) -> tuple[jax.ShapeDtypeStruct, dict]:
    """Per-row vision inputs (``processing.positions.vision_inputs``): ``pixel_values [rows, patches, patch_dim]``
    and the geometry arrays, each with the leading row axis."""
    i32 = jnp.int32
    merged = patches // geometry.unit
    vision = {
        "window_index": jax.ShapeDtypeStruct((rows, merged), i32),
        "reverse_index": jax.ShapeDtypeStruct((rows, merged), i32),
        "rope_positions": jax.ShapeDtypeStruct((rows, patches, 2), i32),
        "window_segments": jax.ShapeDtypeStruct((rows, patches), i32),
        "full_segments": jax.ShapeDtypeStruct((rows, patches), i32),
    }
    return jax.ShapeDtypeStruct((rows, patches, geometry.patch_dim), jnp.float32), vision


def sft_batch_shapes(pipeline: ml_collections.ConfigDict, geometry) -> dict:
    """One global SFT batch (``data.packing.assemble_packed_batch``): ``pipeline.batch_size`` rows of
    ``pipeline.seq_len`` tokens, each row with ``pipeline.max_patches`` vision patches (none when 0)."""
    b, s, p = int(pipeline.batch_size), int(pipeline.seq_len), int(pipeline.max_patches or 0)
    i32 = jnp.int32
    batch = {
        "input_ids": jax.ShapeDtypeStruct((b, s), i32),
        "segment_ids": jax.ShapeDtypeStruct((b, s), i32),
        "loss_mask": jax.ShapeDtypeStruct((b, s), jnp.bool_),
        "positions": jax.ShapeDtypeStruct((3, b, s), i32),
    }
    if p:
        batch["pixel_values"], batch["vision"] = _vision_shapes(b, p, geometry)
    return batch


@dataclasses.dataclass(frozen=True)
class PromptShape:
    """The GRPO prompt batch shape and whether the pipeline keeps it static."""

    batch: int  # prompts per step (global)
    length: int  # prompt tokens
    patches: int  # vision patches per prompt
    static: bool  # both max_prompt_len and max_prompt_patches are set: one compiled shape
    assumed: str  # what was assumed for an unset field ("" when static)


def prompt_shape(pipeline: ml_collections.ConfigDict, geometry) -> PromptShape:
    """``pipeline.prompt_batch_size`` prompts of ``max_prompt_len`` tokens and ``max_prompt_patches`` patches.

    Unset (None = longest in the batch) fields are assumed at the largest single image ``max_pixels`` allows
    (its patch count rounded up to the merge unit) and that image's merged tokens + 512 text tokens."""
    unit = geometry.unit
    cap = math.ceil(pipeline.max_pixels / geometry.patch_size**2 / unit) * unit
    patches, length, assumed = pipeline.max_prompt_patches, pipeline.max_prompt_len, []
    if patches is None:
        patches = cap
        assumed.append(f"max_prompt_patches=None, assumed {patches} (one image at max_pixels)")
    if length is None:
        length = patches // unit + 512
        assumed.append(f"max_prompt_len=None, assumed {length} (its image tokens + 512)")
    return PromptShape(
        int(pipeline.prompt_batch_size), int(length), int(patches), not assumed, "; ".join(assumed)
    )


def prompt_batch_shapes(ps: PromptShape, geometry) -> dict:
    """GRPO prompt inputs (``processing.prompts.assemble_prompt_batch``): left-padded ``input_ids`` /
    ``segment_ids [b, L]``, ``positions [3, b, L]`` and per-prompt vision inputs."""
    i32 = jnp.int32
    inputs = {
        "input_ids": jax.ShapeDtypeStruct((ps.batch, ps.length), i32),
        "segment_ids": jax.ShapeDtypeStruct((ps.batch, ps.length), i32),
        "positions": jax.ShapeDtypeStruct((3, ps.batch, ps.length), i32),
    }
    if ps.patches:
        inputs["pixel_values"], inputs["vision"] = _vision_shapes(ps.batch, ps.patches, geometry)
    return inputs


def completion_shapes(rows: int, max_new_tokens: int) -> dict:
    """What the GRPO learner builds from the samples: completions, mask, log-probs ``[b*G, T]``,
    advantages ``[b*G]``."""
    t = (rows, max_new_tokens)
    return {
        "completions": jax.ShapeDtypeStruct(t, jnp.int32),
        "comp_mask": jax.ShapeDtypeStruct(t, jnp.bool_),
        "logp": jax.ShapeDtypeStruct(t, jnp.float32),
        "advantages": jax.ShapeDtypeStruct((rows,), jnp.float32),
    }


def place_batch(batch, mesh):
    """``sharding.shard_batch``'s placement for ShapeDtypeStructs: the batch axis (axis 1 of M-RoPE
    ``positions``) over (data, fsdp) when they divide it, else replicated."""
    from r1ov_jax.sharding import batch_sharding

    shards = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(path, x):
        axis = 1 if jax.tree_util.keystr(path).endswith("['positions']") else 0
        if len(x.shape) > axis and x.shape[axis] % shards == 0:
            return sds(x, batch_sharding(mesh, len(x.shape), axis))
        return sds(x, NamedSharding(mesh, PartitionSpec()))

    return jax.tree_util.tree_map_with_path(put, batch)


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (or Variables of them)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    text: int  # decoder blocks + final norm (matmul-relevant), no embedding table, no LM head
    head: int  # the LM head (the tied embedding when tied)
    embed: int  # token embedding table (a lookup: no FLOPs)
    vision: int  # vision tower + merger
    tied: bool = False

    @property
    def total(self) -> int:
        return self.text + self.embed + self.vision + (0 if self.tied else self.head)


def param_counts(model) -> ParamCounts:
    counts = {"text": 0, "head": 0, "embed": 0, "vision": 0}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        keys, n = path_key(path), math.prod(v.get_value().shape)
        if keys[0] == "visual":
            counts["vision"] += n
        elif keys[0] == "lm_head":
            counts["head"] += n
        elif "embed_tokens" in keys:
            counts["embed"] += n
        else:
            counts["text"] += n
    tied = bool(model.cfg.tie_word_embeddings)
    if tied:
        counts["head"] = counts["embed"]
    return ParamCounts(**counts, tied=tied)


def image_cap(cfg, geometry) -> int:
    unit = geometry.unit
    return math.ceil(cfg.pipeline.max_pixels / geometry.patch_size**2 / unit) * unit
