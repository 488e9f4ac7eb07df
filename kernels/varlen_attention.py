"""Block-diagonal ("varlen") attention from ``cu_seqlens``: the vision tower's window and per-image blocks.

Sequence i of the packed token axis spans ``cu_seqlens[i]:cu_seqlens[i+1]`` and attends to itself only,
without causal masking (as ``flash_attn_varlen_func`` in the Qwen2.5-VL vision tower). No dense mask is
built: each query block gets, from two lookups in ``cu_seqlens``, the key-block range covering the
sequences it touches, and the flash kernels (``flash_attention.attention_core``, forward and backward)
visit only those blocks. With ``max_seqlen`` (a bound on every sequence length, static, as in
flash-attn) the TPU grid itself shrinks from ``nk`` steps to the few blocks a window can reach: for 64-patch
windows over 4k patches that is 2-3 key blocks per query block instead of 16.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from r1ov_kernels import common
from r1ov_kernels.common import Geometry
from r1ov_kernels.flash_attention import attention_core, plan


def segment_ids_from_cu_seqlens(cu_seqlens: jax.Array, total: int) -> jax.Array:
    """``[n + 1]`` offsets -> int32 ``[total]`` ids: tokens of sequence i get i + 1, tokens past the end 0.

    Zero-length sequences (repeated offsets) are allowed and simply own no token.
    """
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    tok = jnp.arange(total, dtype=jnp.int32)
    ids = jnp.searchsorted(cu, tok, side="right").astype(jnp.int32)
    return jnp.where(tok < cu[-1], ids, 0)


def cu_seqlens_from_segment_ids(segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Inverse for ids that run 1, 1, .., 2, .., n in order with 0 only as trailing padding: int32 ``[n + 1]``.

    ``num_segments`` is static (jit); ids above it are dropped and missing ids become zero-length sequences.
    """
    seg = jnp.asarray(segment_ids, jnp.int32)
    counts = jnp.zeros((num_segments + 1,), jnp.int32).at[seg].add(1, mode="drop")[1:]
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])


def _ranges(cu, seg, t_pad, b_own, b_other):
    """For each ``b_own``-block: range of ``b_other``-blocks covering every sequence the block touches."""
    total = jnp.minimum(cu[-1], seg.shape[0])
    start = jnp.arange(t_pad // b_own, dtype=jnp.int32) * b_own
    last = jnp.minimum(start + b_own, total) - 1
    live = start < total
    first_id = seg[jnp.clip(start, 0, seg.shape[0] - 1)]  # >= 1 where live
    last_id = seg[jnp.clip(last, 0, seg.shape[0] - 1)]
    lo = cu[jnp.maximum(first_id - 1, 0)] // b_other
    hi = -(-cu[last_id] // b_other)
    return jnp.where(live, lo, 0).astype(jnp.int32)[None], jnp.where(live, hi, 0).astype(jnp.int32)[None]


def varlen_plan(cu_seqlens, t: int, t_pad: int, bq: int, bk: int, max_seqlen: int | None):
    """Segment ids ``[t]``, block ranges ``(lo, hi [1, nq], qlo, qhi [1, nk])`` and grid steps."""
    nq, nk = t_pad // bq, t_pad // bk
    kv_steps, q_steps = nk, nq
    if max_seqlen is not None:
        kv_steps = min(nk, common.max_blocks_reached(bq, bk, max_seqlen))
        q_steps = min(nq, common.max_blocks_reached(bk, bq, max_seqlen))
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    seg = segment_ids_from_cu_seqlens(cu, t)
    return seg, (*_ranges(cu, seg, t_pad, bq, bk), *_ranges(cu, seg, t_pad, bk, bq)), (kv_steps, q_steps)


def varlen_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cu_seqlens: jax.Array,
    *,
    scale: float | None = None,
    max_seqlen: int | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    backend: str | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Differentiable block-diagonal attention over packed sequences.

    Args:
      q: ``[t, hq, d]``; k, v: ``[t, hkv, d]`` (GQA allowed); tokens past ``cu_seqlens[-1]`` are padding
        (zero output, zero gradient).
      cu_seqlens: int ``[n + 1]``, non-decreasing, ``cu_seqlens[0] == 0``.
      scale: logit scale, default ``d ** -0.5``.
      max_seqlen: static upper bound on ``cu_seqlens[i+1] - cu_seqlens[i]``; shrinks the TPU grid. Checked
        when ``cu_seqlens`` is concrete; a wrong bound under jit silently drops keys.
      block_q, block_k, backend, interpret: as in ``flash_attention.flash_attention``.

    Returns:
      ``[t, hq, d]`` in q's dtype.
    """
    common.check_qkv(q[None], k[None], v[None])
    t, hq, d = q.shape
    backend = common.kernel_backend(backend)
    bq, bk, tp, _, dp = plan(t, t, d, backend=backend, block_q=block_q, block_k=block_k)
    tp = common.round_up(t, math.lcm(bq, bk))  # one padded length for both sides (self-attention)
    if max_seqlen is not None:
        _check_max_seqlen(cu_seqlens, max_seqlen)
    seg, (lo, hi, qlo, qhi), (kv_steps, q_steps) = varlen_plan(cu_seqlens, t, tp, bq, bk, max_seqlen)
    seg = common.pad_ids(seg[None], tp)
    geo = Geometry(
        backend=backend,
        interpret=common.use_interpret(interpret),
        causal=False,
        scale=float(d**-0.5 if scale is None else scale),
        block_q=bq,
        block_k=bk,
        groups=hq // k.shape[1],
        kv_steps=kv_steps,
        q_steps=q_steps,
    )
    heads = lambda x: common.to_heads(x[None], tp, dp)
    out = attention_core(geo, heads(q), heads(k), heads(v), (seg, seg, None, None, lo, hi, qlo, qhi))
    return common.from_heads(out, t, d)[0]


def _check_max_seqlen(cu_seqlens, max_seqlen: int):
    if max_seqlen < 1:
        raise ValueError(f"max_seqlen must be >= 1, got {max_seqlen}")
    try:
        cu = np.asarray(cu_seqlens)
    except jax.errors.TracerArrayConversionError:  # under jit: trust the caller
        return
    longest = int(np.max(np.diff(cu), initial=0))
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} but cu_seqlens holds a sequence of length {longest}")
