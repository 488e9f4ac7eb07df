"""``r1ov preflight``: prove a config fits a TPU topology before renting it (deviceless compile).

    r1ov preflight --config configs/qwen2_5_vl_7b_sft.py --topology v5p-64 [--stage sft|grpo|all] [--json PATH]

What it does, with no TPU attached (libtpu from ``pip install -e .[tpu]``) and no weights or data read:

1. the target's devices from ``jax.experimental.topologies.get_topology_desc`` (:func:`parse_topology` maps
   MaxText-style names: ``v4-N`` / ``v5p-N`` count TensorCores, two per megacore chip; ``v5e-N`` / ``v6e-N``
   count chips) and the config's ``(data, fsdp, tensor)`` mesh over them (``sharding.make_mesh``);
2. the abstract model (``nnx.eval_shape``), its optimizer state and batches of the configured shapes
   (:func:`sft_batch_shapes`, :func:`prompt_batch_shapes`, :func:`completion_shapes`) as ``ShapeDtypeStruct``s
   carrying the shardings the trainers give them (``param_shardings``, the ``shard_optimizer`` rule, the
   ``shard_batch`` rule);
3. ``.lower(...).compile()`` of **the trainers' own jitted functions** under the trainers' activation-sharding
   context: SFT ``train.sft.train_step``; GRPO the sampler ``rollout.sampler._generate_jit`` (prefill and the
   whole decode ``while_loop``), the reference / old log-prob pass ``train.grpo._logprobs_jit`` and the update
   ``train.grpo.grpo_update``.

Per stage (GRPO: per phase, then the step's peak) and per chip it reports XLA's ``memory_analysis()``
(arguments, outputs, temporaries; total = arguments + outputs − donated aliases + temporaries + program code),
the chip's HBM and whether it fits, ``cost_analysis()`` FLOPs per chip against the analytic model FLOPs
(:func:`analytic_flops`), XLA's cost-model time (``optimal_seconds``) and the MFU it implies at the chip's peak
bf16 FLOP/s. A GRPO phase also counts what stays resident on the chip while it runs (the policy, the frozen
reference copy and the optimizer state not among its arguments). A program that does not fit fails to compile
with RESOURCE_EXHAUSTED; that is reported as "does not fit" with the required and available bytes.

``model.attn_impl = "auto"`` resolves by the *host's* backend (XLA on this CPU machine); preflight resolves it
as the target would, i.e. compiles with ``"pallas"`` (the Mosaic kernels, lowered with the topology's first
device as the default device so they target its chip generation).

What the cost model counts (measured by :func:`pallas_flops_probe`): XLA's HLO ops, dots included; a Pallas
(Mosaic) custom call contributes the FLOPs of its ``pl.CostEstimate`` when the kernel gives one and 0 otherwise,
and a ``lax.while_loop`` body is counted once, not per iteration (the sampler's decode loop: its compiled count
covers the prefill and one decode step, so preflight scales the loop body by ``max_new_tokens`` — see
:func:`_rollout_flops`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1ov_jax.errors import InvalidInputError, MissingInputError
from r1ov_jax.layers.scan import runs_of
from r1ov_jax.models.qwen2_5_vl.vision import scan_kinds

GiB = 1 << 30


# ------------------------------------------------------------------------------------------------ topologies
@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: HBM per chip and peak dense bf16 FLOP/s per chip (Google Cloud TPU spec sheets:
    cloud.google.com/tpu/docs/v4, v5e, v5p, v6e), and how its topologies are named."""

    name: str
    device_kind: str  # what the deviceless device reports
    hbm_bytes: int
    peak_flops: float
    counts_cores: bool  # v4-N / v5p-N count TensorCores (2 per megacore chip); v5e-N / v6e-N count chips
    dims: int  # torus dimensions of the topology name
    chip_config: str


GENERATIONS = {
    "v4": Generation("v4", "TPU v4", 32 * GiB, 275e12, True, 3, "megacore"),
    "v5p": Generation("v5p", "TPU v5", int(95.74 * GiB), 459e12, True, 3, "megacore"),
    "v5e": Generation("v5e", "TPU v5 lite", 16 * GiB, 197e12, False, 2, "default"),
    "v6e": Generation("v6e", "TPU v6 lite", 32 * GiB, 918e12, False, 2, "default"),
}
# chips → torus shape (the shapes GKE / queued resources use for these slice sizes)
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # fmt: skip
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it, e.g. "v5p-64"
    generation: Generation
    chips: int
    topology_name: str  # get_topology_desc's, e.g. "v5p:2x4x4"
    chips_per_host_bounds: tuple[int, int, int]

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes


def parse_topology(name: str) -> Topology:
    """``v4-8`` … ``v5p-64`` (TensorCores), ``v5e-8`` … ``v6e-256`` (chips) → the deviceless topology."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise InvalidInputError(
            f"--topology {name!r}: expected <generation>-<size> with generation one of {sorted(GENERATIONS)}, "
            "e.g. v5p-64 (TensorCores, 32 chips), v5e-256 or v6e-64 (chips)"
        )
    gen = GENERATIONS[m.group(1)]
    size = int(m.group(2))
    chips = size // 2 if gen.counts_cores else size
    shapes = _SHAPES_3D if gen.dims == 3 else _SHAPES_2D
    if (gen.counts_cores and size % 2) or chips not in shapes:
        unit = "TensorCores" if gen.counts_cores else "chips"
        sizes = [c * 2 if gen.counts_cores else c for c in shapes]
        raise InvalidInputError(f"--topology {name}: {gen.name} slices come in {sizes} {unit}")
    bounds = (1, 1, 1) if chips == 1 else (2, 4, 1) if (chips == 8 and gen.dims == 2) else (2, 2, 1)
    return Topology(name, gen, chips, f"{gen.name}:{shapes[chips]}", bounds)


@functools.lru_cache(maxsize=None)
def topology_devices(topo: Topology) -> list:
    """The target's TPU devices, on this host, without a TPU (needs libtpu).

    Cached: meshes over two descriptions of one topology compare equal (same ids) but hold different device
    objects, so jit would reuse a trace whose sharding constraints name the other objects and refuse it."""
    import os

    # libtpu takes a process lock on load; a deviceless compile touches no chip, so several may run at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topo.topology_name, chip_config_name=topo.generation.chip_config,
            chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=1,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - no libtpu / wrong libtpu: one clear line
        raise MissingInputError(
            f"cannot build the {topo.name} topology without a TPU ({type(e).__name__}: {str(e)[:200]}); "
            "install libtpu with `pip install -e .[tpu]`"
        ) from None
    devices = list(desc.devices)
    if len(devices) != topo.chips:
        raise AssertionError(f"{topo.topology_name}: {len(devices)} devices, expected {topo.chips}")
    return devices


# ---------------------------------------------------------------------------------------- abstract state
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


def _sds(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _key(path) -> tuple[str, ...]:
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
    by_path = {_key(p): s for p, s in nnx.to_flat_state(param_shardings(model, mesh))}
    rep = NamedSharding(mesh, PartitionSpec())
    flat = [
        (p, v.replace(_sds(v.get_value(), by_path.get(_key(p), rep))))
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
    by_path = {_key(p): v.get_value().sharding for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    rep = NamedSharding(mesh, PartitionSpec())

    def sharding_for(path, value):
        keys = _key(path)
        if value.ndim:
            for start in range(len(keys)):
                if keys[start:] in by_path:
                    return by_path[keys[start:]]
        return rep

    flat = [
        (p, v.replace(_sds(v.get_value(), sharding_for(p, v.get_value()))))
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
            return _sds(x, batch_sharding(mesh, len(x.shape), axis))
        return _sds(x, NamedSharding(mesh, PartitionSpec()))

    return jax.tree_util.tree_map_with_path(put, batch)


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (or Variables of them)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


# --------------------------------------------------------------------------------------------- model FLOPs
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
        keys, n = _key(path), math.prod(v.get_value().shape)
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


def _text_attn(cfg, rows: int, q: int, kv: float) -> float:
    """Forward attention FLOPs: QK^T and PV, 2·q·kv·(heads·head_dim) each, per layer and row."""
    t = cfg.text
    return 4.0 * rows * q * kv * t.num_attention_heads * t.head_dim * t.num_hidden_layers


def _vision_fwd(cfg, pc: ParamCounts, rows: int, patches: int, image_cap: int) -> float:
    """Vision tower forward FLOPs over ``rows`` × ``patches``: 2·N_v per patch, window attention over each
    window's patches ((window/patch)² of them) and the full-attention blocks over one image (≤ image_cap)."""
    if not patches:
        return 0.0
    v = cfg.vision
    window = v.geometry().window_patches
    full_layers = len(v.fullatt_block_indexes)
    keys = (v.depth - full_layers) * min(window, patches) + full_layers * min(image_cap, patches)
    return 2.0 * pc.vision * rows * patches + 4.0 * rows * patches * keys * v.hidden_size


def analytic_flops(kind: str, cfg, pc: ParamCounts, **shape) -> float:
    """Model FLOPs (global, useful work) of one call.

    sft:      6·(N_text + N_head)·B·S + 3·causal attention (2·S²·H·d per layer and row) + 3·vision forward
    rollout:  prefill 2·N·b·L + causal attention + vision forward; decode 2·N per generated token
              (b·G·T of them) + attention against the cache (4·(L + t)·H·d per token and layer)
    logprobs: 2·N_text·bG·(L+T) + 2·N_head·bG·T + causal attention over L+T + vision forward (once per prompt)
    update:   3 × logprobs (forward + backward)
    """
    cap = shape.get("image_cap", 0)
    if kind == "sft":
        b, s, p = shape["batch"], shape["seq_len"], shape["patches"]
        fwd = (
            2.0 * (pc.text + pc.head) * b * s + _text_attn(cfg, b, s, s / 2) + _vision_fwd(cfg, pc, b, p, cap)
        )
        return 3.0 * fwd
    b, length, p, g, t = (
        shape["batch"],
        shape["length"],
        shape["patches"],
        shape["group"],
        shape["new_tokens"],
    )
    vision = _vision_fwd(cfg, pc, b, p, cap)
    if kind == "rollout":
        prefill = 2.0 * (pc.text + pc.head) * b * length + _text_attn(cfg, b, length, length / 2) + vision
        decode = 2.0 * (pc.text + pc.head) * b * g * t + _text_attn(cfg, b * g, t, length + t / 2)
        return prefill + decode
    total = length + t
    fwd = 2.0 * pc.text * b * g * total + 2.0 * pc.head * b * g * t + _text_attn(cfg, b * g, total, total / 2)
    fwd += vision
    if kind == "logprobs":
        return fwd
    if kind == "update":
        return 3.0 * fwd
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------- compile
@dataclasses.dataclass
class PhaseReport:
    name: str
    fits: bool
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    code: int = 0
    resident_outside: int = 0  # bytes of the step's other state that stay on the chip during this phase
    required: int = 0  # what the compiler said it needed when it did not fit
    flops_per_chip: float = 0.0
    model_flops: float = 0.0  # global
    est_step_seconds: float | None = None
    compile_seconds: float = 0.0
    note: str = ""

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    @property
    def total(self) -> int:
        if self.required:
            return self.required + self.resident_outside
        own = self.arguments + self.outputs - self.aliased + self.temporaries + self.code
        return own + self.resident_outside


_OOM = re.compile(r"RESOURCE_EXHAUSTED|exceeds available HBM|[Oo]ut of memory|Ran out of memory", re.S)


def _bytes_in(text: str, *labels: str) -> int:
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
             "MIB": 1 << 20, "G": GiB, "GB": GiB, "GIB": GiB, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}  # fmt: skip
    for label in labels:
        m = re.search(label + r"\s*([0-9.]+)\s*([KMGT]?i?B?)(?![A-Za-z])", text, re.I)
        if m:
            return int(float(m.group(1)) * units.get(m.group(2).upper(), 1))
    return 0


def _seconds(value) -> float | None:
    """XLA's ``optimal_seconds``; None when absent or not positive (the cost model gives negative values for
    some programs, e.g. replicated tiny batches)."""
    return float(value) if value is not None and value > 0 else None


def compile_phase(
    name: str, lower_fn, *, default_device=None, compiler_options=None
) -> tuple[PhaseReport, object | None]:
    """Lowers and compiles; an out-of-HBM compile becomes a not-fitting report (other errors propagate)."""
    t0 = time.perf_counter()
    ctx = jax.default_device(default_device) if default_device is not None else contextlib.nullcontext()
    try:
        with ctx:
            compiled = lower_fn().compile(compiler_options=compiler_options)
    except NotImplementedError as e:
        if "cannot be automatically partitioned" not in str(e):
            raise
        raise InvalidInputError(
            f"{name}: a Pallas kernel was called outside shard_map on a multi-chip mesh (XLA cannot partition "
            "it); the model's attention wraps its kernels only inside sharding.activation_sharding — this is a "
            "bug, please report it; --config.model.attn_impl=xla avoids the kernels"
        ) from None
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; anything else is re-raised
        text = str(e)
        if not _OOM.search(text):
            raise
        required = _bytes_in(
            text, r"required for [^(]*\(", r"[Uu]sed", r"requires", r"[Rr]equired", r"allocate"
        )
        first = next((ln.strip() for ln in text.splitlines() if _OOM.search(ln)), text.splitlines()[0])
        return PhaseReport(name, False, required=required, compile_seconds=time.perf_counter() - t0,
                           note=first[:300]), None  # fmt: skip
    ma = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else (ca or {})
    rep = PhaseReport(
        name, True, arguments=ma.argument_size_in_bytes, outputs=ma.output_size_in_bytes,
        aliased=ma.alias_size_in_bytes, temporaries=ma.temp_size_in_bytes, code=ma.generated_code_size_in_bytes,
        flops_per_chip=float(ca.get("flops", 0.0)), est_step_seconds=_seconds(ca.get("optimal_seconds")),
        compile_seconds=time.perf_counter() - t0,
    )  # fmt: skip
    return rep, compiled


@dataclasses.dataclass
class Target:
    """Everything the stages share: topology, mesh, resolved model config, abstract model."""

    topo: Topology
    mesh: object
    mcfg: object
    rules: dict
    model: object
    counts: ParamCounts
    default_device: object  # set while lowering Pallas kernels (Mosaic asks it for the chip generation)
    loop_flops: bool = True  # compile again to count every loop iteration (count_flops)

    def ctx(self):
        from r1ov_jax.sharding import activation_sharding

        return activation_sharding(self.mesh, self.rules)


def make_target(cfg: ml_collections.ConfigDict, topo: Topology, devices=None) -> Target:
    from r1ov_jax.sharding import make_mesh, rules_for

    devices = topology_devices(topo) if devices is None else devices
    mc = cfg.get("mesh") or ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    try:
        mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices=devices)
    except InvalidInputError as e:
        raise InvalidInputError(
            f"{e} on {topo.name}: make one mesh axis -1 (fill), e.g. --config.mesh.data=-1"
        ) from None
    from r1ov_jax.train.builders import lora_spec

    mcfg = model_config_for_target(cfg.model)
    model = abstract_model(mcfg, mesh, lora_spec(cfg.model))
    default = devices[0] if mcfg.attn_impl == "pallas" else None
    return Target(topo, mesh, mcfg, rules_for(mcfg, mesh), model, param_counts(model), default)


# Options of the FLOP-counting compiles. On large meshes XLA on TPU rewrites an FSDP all-gather (or
# reduce-scatter) + matmul as a windowed-einsum loop, and the cost model counts a loop body once: on v5p-64 an
# FSDP [8192, 3584] x [3584, 18944] matmul counts 0.13x its FLOPs (v5p-8 and v5e-256: 1.0x). The memory figures
# come from the default compile, the program a run executes.
COUNT_OPTIONS = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


def count_flops(rep: PhaseReport, lower_fn, models, target: Target, towers=("text", "vision")) -> None:
    """Replaces ``rep``'s FLOP and step-time counts with ones that include every loop iteration (in place).

    XLA's cost model counts a ``while_loop`` body once. The loops a phase runs: XLA's windowed einsums (turned
    off by ``COUNT_OPTIONS``), the chunked LM-head loss (unrolled: ``head_unroll``) and, with
    ``model.scan_layers``, the towers' scans: the text blocks; the vision steps (one period of window / full
    blocks) and, inside a step, the scan over a run of window blocks. Compiling again with one of these scans
    unrolled twice puts its body in the program 1 + (length mod 2) more times (an odd length leaves one
    iteration outside the loop), which gives one body (forward, remat recompute and backward, as compiled);
    the iterations the base count misses are added. ``models``: the modules the phase traces (their runtime
    options are varied); ``towers``: the scans the phase runs. The sampler's decode loop is scaled by
    `preflight_grpo`.
    """
    if not rep.fits:
        return
    if not target.loop_flops:  # what XLA counted would be a fraction of the step: report none
        rep.flops_per_chip, rep.est_step_seconds = 0.0, None
        rep.add_note("FLOPs and time not counted (--memory-only)")
        return
    mc = target.mcfg

    def counting_compile(unroll):
        for m in models:
            m.set_runtime(scan_unroll=unroll, head_unroll=True)
        try:
            r, _ = compile_phase(rep.name, lower_fn, default_device=target.default_device,
                                 compiler_options=COUNT_OPTIONS)  # fmt: skip
        finally:
            for m in models:
                m.set_runtime(scan_unroll=(1, 1, 1), head_unroll=False)
        rep.compile_seconds += r.compile_seconds
        return r

    base = counting_compile((1, 1, 1))
    if not base.fits:
        rep.add_note(
            "FLOPs as XLA counted the default program (loops once): the counting compile did not fit"
        )
        return
    flops, seconds, parts = base.flops_per_chip, base.est_step_seconds, []
    if mc.scan_layers:
        for name, unroll, length, missed in _scans(mc, towers):
            twice = counting_compile(unroll)
            if not twice.fits:
                parts.append(f"{name} not counted (the x2-unrolled program did not fit)")
                continue
            copies = 1 + length % 2
            body = max(twice.flops_per_chip - base.flops_per_chip, 0.0) / copies
            flops += missed * body
            if seconds is not None and twice.est_step_seconds is not None:
                seconds += missed * max(twice.est_step_seconds - base.est_step_seconds, 0.0) / copies
            parts.append(f"{name} {body:.3g} x {missed} more")
    note = f"FLOPs counted with windowed einsums off and the LM-head loop unrolled ({base.flops_per_chip:.3g}"
    note += f" FLOP/chip; the default program counts {rep.flops_per_chip:.3g})"
    if parts:
        note += f"; per scanned body: {', '.join(parts)}"
    rep.flops_per_chip, rep.est_step_seconds = flops, seconds
    rep.add_note(note)


def _scans(mc, towers) -> list[tuple[str, tuple, int, int]]:
    """(name, scan_unroll that doubles it, loop length, loop bodies the base count misses) per scan.

    Vision: ``steps`` iterations of one period; inside each, runs of one kind of block, those of length > 1
    scanned. The base count holds the step body once and each run's body once; the inner runs' bodies are
    taken as equal (exact for Qwen2.5-VL: one run of 7 window blocks per step)."""
    out = []
    if "text" in towers:
        n = mc.text.num_hidden_layers
        out.append(("text block", (2, 1, 1), n, n - 1))
    if "vision" in towers:
        kinds = scan_kinds(mc.vision)
        steps = mc.vision.depth // len(kinds)
        out.append(("vision step", (1, 2, 1), steps, steps - 1))
        inner = [length for _, length in runs_of(kinds) if length > 1]
        if inner:  # per step: (length - 1) bodies of each run missed; a step is counted `steps` times by now
            out.append(("vision window block", (1, 1, 2), inner[0], steps * sum(n - 1 for n in inner)))
    return [scan for scan in out if scan[3]]  # a loop of one iteration is counted already


def _image_cap(cfg, geometry) -> int:
    unit = geometry.unit
    return math.ceil(cfg.pipeline.max_pixels / geometry.patch_size**2 / unit) * unit


def preflight_sft(cfg: ml_collections.ConfigDict, target: Target) -> dict:
    from r1ov_jax.train import sft

    geometry = target.mcfg.vision.geometry()
    opt = abstract_optimizer(target.mcfg, target.model, cfg.sft.optim, int(cfg.sft.train.steps), target.mesh)
    batch = place_batch(sft_batch_shapes(cfg.pipeline, geometry), target.mesh)

    def lower():
        with target.ctx():
            return sft.train_step.lower(target.model, opt, batch)

    rep, _ = compile_phase("sft", lower, default_device=target.default_device)
    count_flops(rep, lower, [target.model], target)
    p = cfg.pipeline
    rep.model_flops = analytic_flops(
        "sft", target.mcfg, target.counts, batch=p.batch_size, seq_len=p.seq_len,
        patches=int(p.max_patches or 0), image_cap=_image_cap(cfg, geometry),
    )  # fmt: skip
    if rep.fits:  # (a report that does not fit keeps the one OOM line as its note)
        rep.add_note(f"grad_accum={cfg.sft.optim.grad_accum}: one optimizer update per that many steps")
    return {"phases": [rep], "shapes": 1, "warning": ""}


def _rollout_flops(compiled_flops: float, decode_body: float, new_tokens: int) -> float:
    """The cost model counts a ``while_loop`` body once: add the other ``new_tokens - 1`` decode steps."""
    return compiled_flops + decode_body * max(new_tokens - 1, 0)


def preflight_grpo(cfg: ml_collections.ConfigDict, target: Target) -> dict:
    from r1ov_jax.rollout import sampler
    from r1ov_jax.rollout.sampler import SamplingConfig
    from r1ov_jax.train import grpo

    g = cfg.rl.grpo
    group, new_tokens = int(g.num_generations), int(g.max_new_tokens)
    geometry = target.mcfg.vision.geometry()
    ps = prompt_shape(cfg.pipeline, geometry)
    mesh, model = target.mesh, target.model
    from r1ov_jax.models import lora

    opts = grpo.resolve_options(g, ps.batch)  # the trainer's resolved preset, minibatches and passes
    if not opts.needs_reference:  # beta = 0: run_grpo_stage builds no reference model
        ref = None
    elif lora.is_lora(model):  # the policy with its adapters off: no second set of weights
        ref = lora.AdaptersOff(model)
    else:  # run_grpo_stage's frozen nnx.clone of the policy, same placement
        ref = abstract_model(target.mcfg, mesh)
    opt = abstract_optimizer(
        target.mcfg, model, cfg.rl.optim, int(cfg.rl.train.steps) * int(g.num_iterations), mesh
    )
    prompt = place_batch(prompt_batch_shapes(ps, geometry), mesh)
    rows = ps.batch * group
    comp = place_batch(completion_shapes(rows, new_tokens), mesh)
    # the update runs on one minibatch of whole groups (grpo.policy_updates), opts.updates_per_step per step
    updates = opts.updates_per_step
    mb_ps = dataclasses.replace(ps, batch=ps.batch // opts.num_minibatches)  # resolve_options: it divides
    mb_prompt = place_batch(prompt_batch_shapes(mb_ps, geometry), mesh)
    mb_comp = place_batch(completion_shapes(mb_ps.batch * group, new_tokens), mesh)
    t = target.mcfg.text
    sampling = SamplingConfig(
        max_new_tokens=new_tokens, temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p),
        eos_ids=(int(t.eos_token_id if t.eos_token_id is not None else 0),), pad_id=int(t.pad_token_id or 0),
    )  # fmt: skip
    key = _sds(jax.eval_shape(lambda: jax.random.key(0)), NamedSharding(mesh, PartitionSpec()))

    def lower_rollout():
        graphdef, state = nnx.split(model)  # here: count_flops varies the config in the graphdef
        with target.ctx():
            return sampler._generate_jit.lower(graphdef, state, prompt, key, cfg=sampling, num_samples=group)

    # the log-prob pass runs for the reference (beta > 0) and/or the trainer's old log-probs (off-policy)
    logprob_model = ref if ref is not None else model
    needs_logprobs = ref is not None or (not opts.on_policy and opts.old_logp == "trainer")

    def lower_logprobs():
        with target.ctx():
            return grpo._logprobs_jit.lower(
                logprob_model, prompt, comp["completions"], comp["comp_mask"], group=group
            )

    def lower_update():
        # as policy_updates calls it: the resolved preset's beta / epsilon / loss options, no reference
        # log-probs when beta = 0, no old log-probs on-policy, sampler log-probs only for the IS weights
        lp = mb_comp["logp"]
        with target.ctx():
            return grpo.grpo_update.lower(
                model, opt, mb_prompt, mb_comp["completions"], mb_comp["comp_mask"],
                None if opts.on_policy else lp, lp if opts.needs_reference else None, mb_comp["advantages"],
                lp if opts.loss.tis_cap is not None else None, mb_comp["comp_mask"], group=group,
                beta=opts.beta, epsilon=opts.epsilon, first_iteration=opts.on_policy, options=opts.loss,
            )  # fmt: skip

    policy_b, opt_b = (per_chip_bytes(nnx.state(x)) for x in (model, opt))
    # AdaptersOff's state *is* the policy's (shared arrays)
    ref_b = 0 if ref is None or lora.is_lora(model) else per_chip_bytes(nnx.state(ref))
    shape = dict(batch=ps.batch, length=ps.length, patches=ps.patches, group=group, new_tokens=new_tokens,
                 image_cap=_image_cap(cfg, geometry))  # fmt: skip
    phases = []
    # (phase, lower, bytes resident outside, modules it traces, scanned towers: prefill's text path has a cache)
    plan = [("rollout", lower_rollout, ref_b + opt_b, [model], ("vision",))]
    if needs_logprobs:
        outside = (policy_b if ref is not None else ref_b) + opt_b
        plan.append(("logprobs", lower_logprobs, outside, [logprob_model], ("text", "vision")))
    plan.append(("update", lower_update, ref_b, [model], ("text", "vision")))
    for name, lower, outside, traced, towers in plan:
        rep, _ = compile_phase(name, lower, default_device=target.default_device)
        count_flops(rep, lower, traced, target, towers)
        rep.resident_outside = outside
        if name == "update":
            rep.model_flops = analytic_flops(
                name, target.mcfg, target.counts, **{**shape, "batch": mb_ps.batch}
            )
            # bytes are one update's; FLOPs and time the step's `updates` updates
            if updates > 1:
                rep.flops_per_chip *= updates
                rep.model_flops *= updates
                if rep.est_step_seconds is not None:
                    rep.est_step_seconds *= updates
                scaled = (f"update compiled on one minibatch of {mb_ps.batch} prompts x G={group}; FLOPs and "
                          f"time x {updates} updates per step")  # fmt: skip
                rep.add_note(scaled)
        else:
            rep.model_flops = analytic_flops(name, target.mcfg, target.counts, **shape)
        phases.append(rep)
    rollout = phases[0]
    if rollout.fits and rollout.flops_per_chip:  # (no count under --memory-only)
        # Scale the once-counted decode body: one decode step's analytic share per chip, times the ratio the
        # prefill shows between compiled and analytic counts, approximated by 1 (dense matmuls dominate).
        body = (analytic_flops("rollout", target.mcfg, target.counts, **{**shape, "new_tokens": 1})
                - analytic_flops("rollout", target.mcfg, target.counts, **{**shape, "new_tokens": 0}))  # fmt: skip
        counted = rollout.flops_per_chip
        rollout.flops_per_chip = _rollout_flops(counted, body / target.topo.chips, new_tokens)
        if rollout.est_step_seconds is not None and counted:
            rollout.est_step_seconds *= rollout.flops_per_chip / counted
        rollout.add_note(
            f"decode while_loop counted once by XLA ({counted:.3g} FLOP/chip); scaled to {new_tokens} steps"
        )
    warning = ""
    if not ps.static:
        warning = (
            f"GRPO prompt shapes are not static ({ps.assumed}): the sampler and the log-prob pass recompile "
            "whenever the longest prompt or image of a batch changes; set pipeline.max_prompt_len and "
            "pipeline.max_prompt_patches"
        )
    return {"phases": phases, "shapes": 1 if ps.static else "unbounded", "warning": warning, "prompt": ps}


# ---------------------------------------------------------------------------------------------- reporting
def stage_summary(phases: list[PhaseReport], topo: Topology) -> dict:
    """JSON entry of a stage (GRPO: the peak phase's bytes, FLOPs and times summed over the phases)."""
    peak = max(phases, key=lambda r: r.total)
    fits = all(r.fits for r in phases) and peak.total <= topo.hbm_bytes
    # a phase without a FLOP count (--memory-only) leaves the stage without one
    flops = sum(r.flops_per_chip for r in phases) if all(r.flops_per_chip for r in phases) else 0.0
    model_flops = sum(r.model_flops for r in phases)
    est = None if any(r.est_step_seconds is None for r in phases) else sum(r.est_step_seconds for r in phases)
    return {
        "fits": fits,
        "bytes_per_chip": {
            "arguments": peak.arguments,
            "outputs": peak.outputs,
            "temporaries": peak.temporaries,
            "total": peak.total,
        },  # fmt: skip
        "flops_per_chip": flops,
        "model_flops": model_flops,
        "model_flops_per_chip": model_flops / topo.chips,
        "flops_ratio": flops / (model_flops / topo.chips) if model_flops and flops else None,
        "est_step_seconds": est,
        "est_mfu": (model_flops / topo.chips) / (est * topo.generation.peak_flops) if est else None,
        "peak_phase": peak.name,
    }


def _phase_json(r: PhaseReport, topo: Topology) -> dict:
    out = stage_summary([r], topo)
    out["bytes_per_chip"].update(aliased=r.aliased, code=r.code, resident_outside=r.resident_outside)
    out.update(required_bytes=r.required or None, compile_seconds=round(r.compile_seconds, 1), note=r.note)
    return out


def run(
    cfg: ml_collections.ConfigDict,
    topology: str,
    stage: str = "all",
    devices=None,
    *,
    loop_flops: bool = True,
) -> dict:
    """The preflight report (the ``--json`` document) of ``cfg`` on ``topology``. ``loop_flops=False`` skips
    the extra compiles that count every loop iteration (memory and fits are unaffected; no FLOPs, time or MFU
    are reported)."""
    if stage not in ("sft", "grpo", "all"):
        raise InvalidInputError(f"--stage {stage!r}: choose sft, grpo or all")
    topo = parse_topology(topology)
    target = make_target(cfg, topo, devices)
    target.loop_flops = loop_flops
    mesh = dict(target.mesh.shape)
    report = {
        "topology": topo.name, "chips": topo.chips, "hbm_bytes_per_chip": topo.hbm_bytes,
        "device_kind": topo.generation.device_kind, "peak_flops_per_chip": topo.generation.peak_flops,
        "mesh": mesh, "remat": target.mcfg.remat, "scan_layers": target.mcfg.scan_layers, "attn_impl": target.mcfg.attn_impl,
        "attn_impl_config": cfg.model.attn_impl,
        "params": dataclasses.asdict(target.counts) | {"total": target.counts.total},
        "stages": {}, "distinct_compiled_shapes": {}, "warnings": [],
    }  # fmt: skip
    for name, fn in (("sft", preflight_sft), ("grpo", preflight_grpo)):
        if stage not in (name, "all"):
            continue
        res = fn(cfg, target)
        report["stages"][name] = stage_summary(res["phases"], topo)
        if name == "sft":
            p = cfg.pipeline
            rows = (
                p.batch_size // (mesh["data"] * mesh["fsdp"])
                if p.batch_size % (mesh["data"] * mesh["fsdp"]) == 0
                else None
            )
            report["stages"][name]["per_chip_rows"] = rows
            report["stages"][name]["grad_accum"] = int(cfg.sft.optim.grad_accum)
            (r,) = res["phases"]
            report["stages"][name].update(compile_seconds=round(r.compile_seconds, 1), note=r.note)
        else:
            for r in res["phases"]:
                report["stages"][f"grpo/{r.name}"] = _phase_json(r, topo)
        report["stages"][name]["phases"] = [r.name for r in res["phases"]]
        report["distinct_compiled_shapes"][name] = res["shapes"]
        if res["warning"]:
            report["warnings"].append(res["warning"])
        report.setdefault("_phases", {})[name] = res["phases"]
    return report


def _gib(n) -> str:
    return f"{n / GiB:.2f}" if n else "-"


def format_report(report: dict, config_name: str = "") -> str:
    topo = parse_topology(report["topology"])
    gen = topo.generation
    p = report["params"]
    lines = [
        f"preflight {config_name} on {topo.name}: {topo.chips} chips {gen.device_kind} ({topo.topology_name}), "
        f"{topo.hbm_bytes / GiB:.2f} GiB HBM and {gen.peak_flops / 1e12:.0f} TFLOP/s bf16 per chip",
        f"model {p['total'] / 1e9:.2f} B params (decoder {p['text'] / 1e9:.2f} B, LM head {p['head'] / 1e9:.2f} B, "
        f"vision {p['vision'] / 1e9:.2f} B); mesh {report['mesh']}; remat {report['remat']}; "
        f"{'scanned' if report.get('scan_layers') else 'unrolled'} layers; attention "
        + report["attn_impl"]
        + (" (attn_impl auto -> pallas on TPU)" if report["attn_impl_config"] == "auto" else ""),
        "",
        f"{'stage':<15}{'args':>8}{'out':>8}{'temp':>8}{'other':>8}{'total':>8}{'HBM':>8}  {'fits':<5}"
        f"{'TFLOP/chip':>11}{'model':>8}{'ratio':>7}{'est s':>9}{'MFU':>7}",
        f"{'':<15}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}  {'':<5}{'compiled':>11}"
        f"{'':>8}{'':>7}{'(XLA)':>9}{'(XLA)':>7}",
    ]
    hbm = _gib(topo.hbm_bytes)

    def row(name, s, other=0, phase=None):
        b = s["bytes_per_chip"]
        fits = "yes" if s["fits"] else "NO"
        ratio = f"{s['flops_ratio']:.2f}" if s["flops_ratio"] else "-"
        est = f"{s['est_step_seconds']:.3g}" if s["est_step_seconds"] else "-"
        mfu = f"{100 * s['est_mfu']:.0f}%" if s["est_mfu"] else "-"
        mf = s["model_flops_per_chip"] / 1e12
        cf = f"{s['flops_per_chip'] / 1e12:.3g}" if s["flops_per_chip"] else "-"
        if phase is not None and not phase.fits:
            return (f"{name:<15}{'':>8}{'':>8}{'':>8}{_gib(other):>8}{_gib(phase.total):>8}{hbm:>8}  {'NO':<5}"
                    f"{'-':>11}{mf:>8.3g}{'-':>7}{'-':>9}{'-':>7}  (compile: out of HBM)")  # fmt: skip
        return (f"{name:<15}{_gib(b['arguments']):>8}{_gib(b['outputs']):>8}{_gib(b['temporaries']):>8}"
                f"{_gib(other):>8}{_gib(b['total']):>8}{hbm:>8}  {fits:<5}{cf:>11}{mf:>8.3g}{ratio:>7}{est:>9}"
                f"{mfu:>7}")  # fmt: skip

    notes = []
    for stage, phases in report.get("_phases", {}).items():
        if stage == "sft":
            lines.append(row("sft", report["stages"]["sft"], phase=phases[0]))
        else:
            for r in phases:
                lines.append(row(f"grpo/{r.name}", report["stages"][f"grpo/{r.name}"], r.resident_outside, r))
                if r.note and r.fits:
                    notes.append(f"grpo/{r.name}: {r.note}")
            s = report["stages"]["grpo"]
            lines.append(row("grpo (step)", s, phase=None))
        for r in phases:
            if not r.fits:
                notes.append(f"{stage}/{r.name}: {r.note}")
    lines.append("")
    lines.append(
        "other = the step's state resident outside this program's arguments (policy, frozen reference copy, "
        "optimizer); total = args + out - donated + temp + code + other; model = analytic TFLOP/chip; est s = "
        "XLA cost model (optimal_seconds); MFU = model FLOPs / (est s x peak)"
    )
    shapes = ", ".join(f"{k}: {v}" for k, v in report["distinct_compiled_shapes"].items())
    lines.append(f"distinct compiled shapes per run: {shapes}")
    lines += notes
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def advice(report: dict) -> str:
    """One line: what does not fit, by how much, and what to change."""
    hbm = report["hbm_bytes_per_chip"]
    worst = []
    for name, phases in report.get("_phases", {}).items():
        for r in phases:
            if not r.fits or r.total > hbm:
                label = name if name == "sft" else f"grpo/{r.name}"
                need = f"at least {r.total / GiB:.2f} GiB" if r.required else f"{r.total / GiB:.2f} GiB"
                worst.append(f"{label} needs {need} per chip")
    return (
        f"does not fit on {report['topology']}: {'; '.join(worst)}, {hbm / GiB:.2f} GiB available. Change "
        f"model.remat (now {report['remat']}; full < dots_no_batch < dots < none in memory, offload moves saved "
        "activations to host), the per-chip batch (pipeline.batch_size / prompt_batch_size with "
        "sft.optim.grad_accum keeping the global batch), pipeline.seq_len (GRPO: max_prompt_len, "
        f"max_prompt_patches, rl.grpo.max_new_tokens) or the mesh (now {report['mesh']}: mesh.fsdp shards "
        "params and optimizer state, mesh.tensor the activations)"
    )


def public_report(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def cli(
    config_path, overrides, topology: str, *, stage: str = "all", json_path: str | None = None,
    loop_flops: bool = True,
) -> int:  # fmt: skip
    """``r1ov preflight``: prints the table, writes ``--json``; a config that does not fit raises one
    ``InvalidInputError`` line (exit 2)."""
    from r1ov_jax.config_utils import load_config

    if not config_path:
        raise InvalidInputError("r1ov preflight needs --config FILE")
    cfg = load_config(config_path, overrides)
    report = run(cfg, topology, stage, loop_flops=loop_flops)
    print(format_report(report, config_path))
    sys.stdout.flush()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(public_report(report), f, indent=2)
    if not all(s["fits"] for s in report["stages"].values()):
        raise InvalidInputError(advice(report))
    return 0


# ---------------------------------------------------------------------------------------- cost-model probe
def pallas_flops_probe(device) -> dict:
    """What the cost model counts for a Pallas (Mosaic) kernel: compiled FLOPs of a 256³ matmul as an XLA dot,
    as a pallas_call without a cost estimate, and with ``pl.CostEstimate`` (expected 2·256³ = 33.6 M)."""
    from jax.experimental import pallas as pl

    n = 256
    x = jax.ShapeDtypeStruct((n, n), jnp.float32)

    def kernel(a_ref, b_ref, o_ref):
        o_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    def pallas(estimate):
        cost = (
            pl.CostEstimate(flops=2 * n**3, transcendentals=0, bytes_accessed=3 * 4 * n * n)
            if estimate
            else None
        )
        return lambda a, b: pl.pallas_call(kernel, out_shape=x, cost_estimate=cost)(a, b)

    out = {}
    with jax.default_device(device):
        for name, fn in (
            ("xla_dot", jnp.dot),
            ("pallas", pallas(False)),
            ("pallas_cost_estimate", pallas(True)),
        ):
            sharding = jax.sharding.SingleDeviceSharding(device)
            arg = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
            ca = jax.jit(fn).lower(arg, arg).compile().cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            out[name] = float(ca.get("flops", 0.0))
    return out
