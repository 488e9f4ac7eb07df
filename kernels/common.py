"""Pieces shared by the attention kernels: backend choice, padding, block ranges, in-kernel math.

Every kernel here works on a padded "head-major" layout: q ``[b, hq, tq_pad, d_pad]``, k/v
``[b, hkv, tk_pad, d_pad]`` plus int32 segment ids / positions ``[b, t_pad]`` whose padding carries segment
id 0, so padded rows and columns are invisible by the same rule as user padding.

Which key blocks a query block must visit is decided outside the kernels, in plain XLA, from per-block
summaries of the segment ids and positions (``block_ranges``). The kernels receive, per query block, the
half-open range ``[lo, hi)`` of key blocks that can hold a visible key and skip everything else. The range
is exact for packed sequences (segment ids non-decreasing apart from zeros) and conservative otherwise;
the per-element mask inside the kernel is always exact.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

# Finite "minus infinity" for masked logits: exp(MASK - m) underflows to 0 and MASK - MASK stays 0 (no NaN
# from inf - inf). Rows whose keys are all masked are zeroed explicitly, not through this value.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_BIG = np.iinfo(np.int32).max

BACKENDS = ("tpu", "gpu")
LANES, SUBLANES = 128, 8  # TPU vreg tiling: (8, 128) 32-bit words
# Default tiles. TPU: multiples of 128 keep the (8, 128) vreg tiling and fill the MXU. GPU (Triton): powers of
# two; 64x64 keeps fwd and bwd of head dim 128 in registers without spilling.
DEFAULT_BLOCKS = {"tpu": (256, 256), "gpu": (64, 64)}


def target_platform() -> str:
    """Platform the kernels are compiled for: the default device's when one is set (``jax.default_device``,
    e.g. a TPU device of a deviceless topology for ahead-of-time compilation on a CPU host), else
    ``jax.default_backend()``."""
    dev = jax.config.jax_default_device
    if dev is None:
        return jax.default_backend()
    return dev if isinstance(dev, str) else dev.platform


def kernel_backend(backend: str | None = None) -> str:
    """Kernel flavour: explicit, else from the target platform ("cpu" interprets the TPU flavour)."""
    if backend is None:
        backend = "gpu" if target_platform() in ("gpu", "cuda", "rocm") else "tpu"
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_interpret(interpret: bool | None) -> bool:
    """Interpret mode when asked, and by default exactly when targeting the CPU (no Mosaic/Triton there)."""
    return target_platform() == "cpu" if interpret is None else interpret


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pick_block(n: int, block: int, backend: str) -> int:
    """Tile length along a sequence of length ``n``: at most ``block``, no bigger than needed."""
    if backend == "gpu":
        # Triton tensors have power-of-two shapes and tl.dot wants >= 16.
        return min(block, max(16, next_pow2(n)))
    return min(block, round_up(n, 8))


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def padded_head_dim(d: int, backend: str) -> int:
    # Mosaic accepts a block spanning the whole head dim; Triton needs a power of two (80 -> 128).
    return max(16, next_pow2(d)) if backend == "gpu" else d


def to_heads(x: jax.Array, t_pad: int, d_pad: int) -> jax.Array:
    """``[b, t, h, d]`` -> zero-padded ``[b, h, t_pad, d_pad]``."""
    _, t, _, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, t_pad - t), (0, 0), (0, d_pad - d)))
    return jnp.transpose(x, (0, 2, 1, 3))


def from_heads(x: jax.Array, t: int, d: int) -> jax.Array:
    """Inverse of :func:`to_heads`."""
    return jnp.transpose(x, (0, 2, 1, 3))[:, :t, :, :d]


def pad_ids(ids: jax.Array, t_pad: int) -> jax.Array:
    return jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, t_pad - ids.shape[1])))


def default_positions(b: int, t: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def check_qkv(q, k, v):
    """q ``[b, tq, hq, d]``, k and v ``[b, tk, hkv, d]`` of one dtype with ``hq % hkv == 0``."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"expected q [b, tq, hq, d] and k, v [b, tk, hkv, d]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch / head dim, or hq % hkv != 0")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


def lengths_to_segment_ids(lengths, kv_segment_ids, shape):
    """Fold per-sequence cache lengths into kv segment ids (slot < length keeps its id, else 0)."""
    if lengths is None:
        return kv_segment_ids
    b, s = shape
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, s), jnp.int32)
    valid = jnp.arange(s, dtype=jnp.int32)[None, :] < jnp.asarray(lengths, jnp.int32)[:, None]
    return jnp.where(valid, kv_segment_ids, 0)


def _block_summary(ids, pos, block):
    """Per block: min / max non-zero segment id and min / max position over non-padding tokens."""
    b, t = ids.shape
    ids = ids.reshape(b, t // block, block)
    live = ids != 0
    seg_lo = jnp.where(live, ids, _BIG).min(-1)
    seg_hi = jnp.where(live, ids, 0).max(-1)
    if pos is None:
        return seg_lo, seg_hi, None, None
    pos = pos.reshape(b, t // block, block)
    return seg_lo, seg_hi, jnp.where(live, pos, _BIG).min(-1), jnp.where(live, pos, -_BIG).max(-1)


def _first_last(vis, axis):
    """First index and one-past-last index of True along ``axis``; (0, 0) where none."""
    n = vis.shape[axis]
    any_ = vis.any(axis)
    first = jnp.argmax(vis, axis=axis)
    last = n - 1 - jnp.argmax(jnp.flip(vis, axis), axis=axis)
    return jnp.where(any_, first, 0).astype(jnp.int32), jnp.where(any_, last + 1, 0).astype(jnp.int32)


def block_ranges(q_seg, kv_seg, q_pos, kv_pos, *, causal: bool, block_q: int, block_k: int):
    """Key-block range per query block and query-block range per key block.

    A (query block, key block) pair can hold a visible entry only if their non-zero segment-id intervals
    overlap and, when causal, the smallest key position is <= the largest query position. The block
    visibility matrix is ``[b, nq, nk]`` booleans: tiles, never tokens.

    Returns:
      (lo, hi): int32 ``[b, nq]``; (qlo, qhi): int32 ``[b, nk]``. Empty ranges are (0, 0).
    """
    qs_lo, qs_hi, _, qp_hi = _block_summary(q_seg, q_pos if causal else None, block_q)
    ks_lo, ks_hi, kp_lo, _ = _block_summary(kv_seg, kv_pos if causal else None, block_k)
    vis = (qs_lo[:, :, None] <= ks_hi[:, None, :]) & (ks_lo[:, None, :] <= qs_hi[:, :, None])
    if causal:
        vis &= kp_lo[:, None, :] <= qp_hi[:, :, None]
    lo, hi = _first_last(vis, 2)
    qlo, qhi = _first_last(vis, 1)
    return lo, hi, qlo, qhi


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static description of one padded attention problem (hashable: used as a custom_vjp static arg)."""

    backend: str
    interpret: bool
    causal: bool
    scale: float
    block_q: int
    block_k: int
    groups: int  # q heads per kv head
    kv_steps: int  # grid length over key blocks per query block (>= every hi - lo)
    q_steps: int  # grid length over query blocks per key block (>= every qhi - qlo)


def max_blocks_reached(b_own: int, b_other: int, max_len: int) -> int:
    """Most ``b_other``-blocks that contiguous sequences of length <= max_len touching one ``b_own``-block can
    cover: the grid length a kernel needs along the other axis when every segment is such a sequence.

    The block at offset s meets sequences inside [s - L + 1, s + b_own + L - 2]; offsets repeat mod lcm.
    """
    return max(
        (s + b_own + max_len - 2) // b_other - (s - max_len + 1) // b_other + 1
        for s in range(0, math.lcm(b_own, b_other), b_own)
    )


def check_max_seqlen(max_seqlen: int, *segment_ids) -> None:
    """ValueError if ``max_seqlen`` < 1, or if concrete segment ids hold a run of one non-zero id longer than
    it (under jit the ids are tracers and the caller is trusted: a wrong bound silently drops keys)."""
    if max_seqlen < 1:
        raise ValueError(f"max_seqlen must be >= 1, got {max_seqlen}")
    for ids in segment_ids:
        try:
            ids = np.asarray(ids)
        except jax.errors.TracerArrayConversionError:
            return
        for row in ids.reshape(-1, ids.shape[-1]):
            edges = np.flatnonzero(np.diff(row)) + 1
            runs = np.diff(np.concatenate([[0], edges, [row.size]]))
            starts = np.concatenate([[0], edges])
            longest = int(np.max(np.where(row[starts] != 0, runs, 0), initial=0))
            if longest > max_seqlen:
                raise ValueError(
                    f"max_seqlen={max_seqlen} but the segment ids hold a segment of {longest} tokens"
                )


def attention_cost(b, hq, rows, cols, d, *, causal: bool, matmuls: int, operands) -> pl.CostEstimate:
    """What a kernel tells XLA's cost model (a pallas_call without one counts 0 FLOPs): ``matmuls`` products of
    ``[rows, d] x [d, cols]`` shape per (batch, query head), one exp per logit.

    ``rows`` x ``cols`` is the tile area the grid can visit: the padded query and key lengths, or, when a
    ``max_seqlen`` bound shrinks the grid along one axis, ``steps * block`` on that axis. Causal
    self-attention over the full square is halved. Blocks that segment ids hide inside that area (packing)
    are skipped by the kernel but counted here: an upper bound.
    """
    frac = 0.5 if causal and rows == cols else 1.0
    logits = int(b * hq * rows * cols * frac)
    return pl.CostEstimate(
        flops=2 * matmuls * logits * d,
        transcendentals=logits,
        bytes_accessed=int(sum(np.prod(x.shape) * x.dtype.itemsize for x in operands)),
    )


# ----------------------------------------------------------------------------------------------------------
# In-kernel helpers (traced inside Pallas kernels of both flavours).


def dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
    """2-D matmul with fp32 accumulation; fp32 inputs get full fp32 precision (no tf32 / bf16 passes).

    Lower-precision inputs get an explicit DEFAULT precision, not None: None defers to
    ``jax_default_matmul_precision``, and "highest" there makes Mosaic reject bf16 operands ("Bad lhs type").
    """
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def lanes(x, n):
    """TPU: lane-replicated ``[rows, 128]`` -> ``[rows, n]`` (tile, not broadcast: keeps whole vregs)."""
    return jnp.tile(x, (1, cdiv(n, LANES)))[:, :n]


def visible(q_seg, kv_seg, q_pos, kv_pos, causal: bool):
    """Element mask from a column of query ids ``[bq, 1]`` and a row of key ids ``[1, bk]``."""
    mask = (q_seg == kv_seg) & (q_seg != 0)
    if causal:
        mask &= kv_pos <= q_pos
    return mask
