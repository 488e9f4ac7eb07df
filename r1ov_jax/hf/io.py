"""Load a local HF Qwen2.5-VL folder into the NNX model, and save the model as a folder transformers loads.

Import streams tensor by tensor (``safe_open``), so the host never holds the checkpoint twice; each tensor is
transformed, cast and placed (on ``sharding_fn(path)`` when given, e.g. the mesh's NamedSharding) before the
next is read. Export writes ``model-0000k-of-0000n.safetensors`` shards of at most ``max_shard_size`` plus
``model.safetensors.index.json``, gathering one tensor at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from r1ov_jax.hf.mapping import hf_to_ours, ours_to_hf, to_ours
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from r1ov_jax.errors import InvalidInputError, MissingInputError

# Files copied verbatim from the source folder on export when present.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


def weight_files(path: str) -> list[str]:
    """The safetensors files of a local HF folder (single file, or the shards named by the index)."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise InvalidInputError(f"{index}: not a valid safetensors index ({e})") from None
        files = [os.path.join(path, n) for n in names]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise MissingInputError(f"{index} names shards that are missing: {missing}")
        return files
    if os.path.exists(single):
        return [single]
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
    if found:
        return [os.path.join(path, f) for f in found]
    raise MissingInputError(f"{path}: no model.safetensors, model.safetensors.index.json or *.safetensors")


@contextlib.contextmanager
def _open_weights(file: str):
    """``safe_open`` that turns a truncated/damaged/empty file into one InvalidInputError naming it."""
    try:
        handle = safe_open(file, framework="numpy")
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
        size = os.path.getsize(file) if os.path.exists(file) else 0
        raise InvalidInputError(
            f"{file} ({size} bytes) is not a readable safetensors file, damaged or truncated "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    with handle as f:
        yield f


def abstract_model(cfg: Qwen25VLConfig) -> Qwen25VL:
    """The model's structure with ShapeDtypeStructs instead of arrays (nothing allocated)."""
    return nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))


def flat_params(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {
        ".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def from_pretrained(
    path: str,
    dtype=jnp.float32,
    *,
    param_dtype=None,
    attn_impl: str = "xla",
    remat: bool | str = False,
    mesh=None,
    sharding_fn: Callable[[str, tuple], object] | None = None,
) -> Qwen25VL:
    """Flax NNX Qwen2.5-VL from a local HF folder.

    Args:
      path: folder with ``config.json`` and safetensors weights (transformers 4.x or 5.x layouts).
      dtype: compute dtype; also the parameter dtype unless ``param_dtype`` is given.
      mesh: place each tensor's slices on this mesh as it streams (logical axes + ``sharding.rules``).
      sharding_fn: alternatively, any ``(our_path, shape) -> jax.sharding.Sharding``.
    """
    if not os.path.isdir(path):
        raise MissingInputError(f"model folder {path} does not exist")
    param_dtype = dtype if param_dtype is None else param_dtype
    cfg = Qwen25VLConfig.from_json(path, dtype=dtype, attn_impl=attn_impl, remat=remat)
    model = abstract_model(cfg)
    targets = flat_params(model)
    if mesh is not None and sharding_fn is None:
        from jax.sharding import NamedSharding

        from r1ov_jax.sharding.rules import logical_to_spec, rules_for

        rules = rules_for(cfg, mesh)

        def sharding_fn(p, shape):
            return NamedSharding(
                mesh, logical_to_spec(targets[p].get_metadata()["logical_axes"], rules, mesh, shape)
            )

    loaded: dict[str, jax.Array] = {}
    errors, unexpected = [], []
    for file in weight_files(path):
        # NumPy (bf16 via ml_dtypes): each device shard is cut straight from the host tensor, so no full-size
        # device copy exists next to it, and the host tensor is dropped before the next one is read.
        with _open_weights(file) as f:
            for name in f.keys():
                mapped = hf_to_ours(name)
                if mapped is None:
                    unexpected.append(name)
                    continue
                ours, kind = mapped
                if ours not in targets:
                    # e.g. lm_head.weight in a checkpoint of a tied model: transformers ignores it too
                    if not (ours == "lm_head.kernel" and cfg.tie_word_embeddings):
                        unexpected.append(name)
                    continue
                try:
                    raw = f.get_tensor(name)
                except Exception as e:  # noqa: BLE001 - SafetensorError & co: a damaged file, named
                    raise InvalidInputError(
                        f"{file}: tensor {name} cannot be read, the file is damaged or truncated "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                    ) from None
                try:
                    value = to_ours(raw, kind, targets[ours].shape).astype(param_dtype)
                except ValueError as e:
                    errors.append(f"{os.path.basename(file)}:{name}: {e}")
                    continue
                loaded[ours] = _place(value, sharding_fn(ours, value.shape) if sharding_fn else None)
                del value
    missing = sorted(set(targets) - set(loaded))
    if missing or unexpected or errors:
        lines = [f"cannot load {path} into Qwen2.5-VL:"]
        lines += [f"  missing: {m} (HF name {ours_to_hf(m)[0]})" for m in missing]
        lines += [f"  unexpected tensor: {u}" for u in unexpected]
        lines += [f"  {e}" for e in errors]
        raise InvalidInputError("\n".join(lines))
    for key, var in targets.items():
        var.value = loaded[key]
    return model


def _place(host: np.ndarray, sharding) -> jax.Array:
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: np.ascontiguousarray(host[idx]))


def _gather(x: jax.Array) -> np.ndarray:
    """Host copy of one (possibly sharded) array, assembled shard by shard.

    Unlike ``np.asarray(x)`` this leaves no cached host copy on the array, so exporting never accumulates a
    second copy of the model in host memory.
    """
    if not isinstance(x, jax.Array):
        return np.array(x)
    out = np.empty(x.shape, x.dtype)
    for shard in x.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
    return out


def _gather_hf(x: jax.Array, kind: str, conv_shape) -> np.ndarray:
    """Host copy in HF layout, written straight into the transposed buffer (one tensor-sized allocation)."""
    if kind == "copy":
        return _gather(x)
    if not isinstance(x, jax.Array):
        out = np.ascontiguousarray(np.asarray(x).T)
        return out.reshape(conv_shape) if kind == "conv" else out
    out = np.empty(x.shape[::-1], x.dtype)
    for shard in x.addressable_shards:
        out[shard.index[::-1]] = np.asarray(shard.data).T
    return out.reshape(conv_shape) if kind == "conv" else out


_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(jnp.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


def write_safetensors(path: str, entries, metadata: dict | None = None) -> int:
    """Streams tensors into one safetensors file: ``entries`` = [(name, dtype, shape, fetch)] where ``fetch()``
    returns the array; only one tensor is in memory at a time (``safetensors.save_file`` needs them all).
    Returns the data bytes written. The file layout is the safetensors spec (8-byte header length, JSON header
    padded to 8 bytes, then the tensors back to back); tests read it back with ``safe_open`` and transformers."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, dtype, shape, fetch in entries:
            value = np.ascontiguousarray(fetch())
            if value.dtype != dtype or tuple(value.shape) != tuple(shape):
                raise InvalidInputError(
                    f"{name}: got {value.dtype}{value.shape}, planned {dtype}{tuple(shape)}"
                )
            f.write(value.reshape(-1).view(np.uint8).data)  # no bytes copy of the tensor
            del value
    return offset


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise InvalidInputError(f"max_shard_size {size!r}: expected an int or e.g. '5GB', '500MB'")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _np_dtype_name(dtype) -> str:
    return {
        np.dtype(np.float32): "float32",
        np.dtype(jnp.bfloat16): "bfloat16",
        np.dtype(np.float16): "float16",
    }.get(np.dtype(dtype), "float32")


def save_pretrained(
    model: Qwen25VL,
    out_dir: str,
    max_shard_size: int | str = "5GB",
    *,
    side_files_from: str | None = None,
    tokenizer=None,
) -> str:
    """Writes ``out_dir`` so that ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` loads it strictly.

    The folder is assembled in a temporary sibling and renamed into place, so a crash never leaves a
    half-written export under ``out_dir``. Only process 0 should call this in multi-host runs.
    """
    from r1ov_jax.models import lora

    if lora.is_lora(model):
        raise ValueError(
            "save_pretrained got a LoRA model: write it with hf.peft.save_merged (or save_adapter)"
        )
    cfg = model.cfg
    limit = parse_size(max_shard_size)
    params = flat_params(model)
    # Plan shards from shapes alone; tensors are gathered one at a time while writing.
    plan, shard, size = [], [], 0
    for path, var in sorted(params.items(), key=lambda kv: ours_to_hf(kv[0])[0]):
        nbytes = int(np.prod(var.shape)) * np.dtype(var.dtype).itemsize
        if shard and size + nbytes > limit:
            plan.append(shard)
            shard, size = [], 0
        shard.append(path)
        size += nbytes
    plan.append(shard)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        weight_map, total = {}, 0
        conv_shape = (
            cfg.vision.hidden_size,
            cfg.vision.in_channels,
            cfg.vision.temporal_patch_size,
            cfg.vision.patch_size,
            cfg.vision.patch_size,
        )
        for k, paths in enumerate(plan):
            fname = (
                "model.safetensors" if len(plan) == 1 else f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
            )
            entries = []
            for path in paths:
                name, kind = ours_to_hf(path)
                var = params[path]
                shape = (
                    conv_shape
                    if kind == "conv"
                    else tuple(var.shape)[::-1]
                    if kind == "linear"
                    else var.shape
                )
                entries.append(
                    (
                        name,
                        np.dtype(var.dtype),
                        tuple(shape),
                        lambda v=var, k=kind: _gather_hf(v[...], k, conv_shape),
                    )
                )
                weight_map[name] = fname
            total += write_safetensors(os.path.join(tmp, fname), entries, metadata={"format": "pt"})
        if len(plan) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump(
                    {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                    f,
                    indent=2,
                )
        dtype_name = _np_dtype_name(next(iter(params.values())).dtype)
        cfg.save_json(os.path.join(tmp, "config.json"), dtype=dtype_name)
        if side_files_from:
            for name in SIDE_FILES:
                if os.path.exists(os.path.join(side_files_from, name)):
                    shutil.copy2(os.path.join(side_files_from, name), os.path.join(tmp, name))
        if tokenizer is not None:
            tokenizer.save(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
