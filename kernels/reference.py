"""Plain-jnp references, one per kernel, with the kernels' signatures (block/backend knobs omitted).

They are the test oracles: dense ``[b, tq, tk]`` masks and a masked softmax, everything in fp32, written
for obviousness, not speed, and sharing no code with the kernels (nor with ``r1ov_jax``: importing this
module imports no ``r1ov_jax`` module). The visibility rule is the project's: query i sees key j iff both
carry the same non-zero segment id and, when causal, ``kv_pos[j] <= q_pos[i]``; a query with no visible
key gets zeros. ``tests/kernels/test_reference.py`` pins them to ``r1ov_jax.layers.attention``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def dense_mask(q_segment_ids, kv_segment_ids, q_positions=None, kv_positions=None, *, causal: bool):
    """bool ``[b, tq, tk]``: which key each query sees."""
    q_seg = jnp.asarray(q_segment_ids)[:, :, None]
    kv_seg = jnp.asarray(kv_segment_ids)[:, None, :]
    mask = (q_seg == kv_seg) & (q_seg != 0)
    if causal:
        b, tq = q_seg.shape[:2]
        tk = kv_seg.shape[2]
        if q_positions is None:
            q_positions = jnp.broadcast_to(jnp.arange(tq), (b, tq))
        if kv_positions is None:
            kv_positions = jnp.broadcast_to(jnp.arange(tk), (b, tk))
        mask &= jnp.asarray(kv_positions)[:, None, :] <= jnp.asarray(q_positions)[:, :, None]
    return mask


def dense_attention(q, k, v, mask, *, scale: float) -> jax.Array:
    """q ``[b, tq, hq, d]``, k/v ``[b, tk, hkv, d]``, mask ``[b, tq, tk]`` -> ``[b, tq, hq, d]`` in q's dtype.

    GQA by repeating kv head ``j`` for query heads ``j * g .. j * g + g - 1``; fp32 throughout.
    """
    hq, hkv = q.shape[2], k.shape[2]
    k = jnp.repeat(k.astype(jnp.float32), hq // hkv, axis=2)
    v = jnp.repeat(v.astype(jnp.float32), hq // hkv, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k, precision=lax.Precision.HIGHEST) * scale
    m = mask[:, None]  # [b, 1, tq, tk]
    s = jnp.where(m, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    p = jnp.exp(s - row_max)  # masked entries: exp(-inf) == 0
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)  # rows with no visible key stay all-zero
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v, precision=lax.Precision.HIGHEST)
    return out.astype(q.dtype)


def reference_flash_attention(
    q,
    k,
    v,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_positions=None,
    kv_positions=None,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """Reference for ``flash_attention.flash_attention``: q ``[b, tq, hq, d]``, k/v ``[b, tk, hkv, d]``."""
    b, tq, _, d = q.shape
    tk = k.shape[1]
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, tq), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, tk), jnp.int32)
    mask = dense_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal=causal)
    return dense_attention(q, k, v, mask, scale=d**-0.5 if scale is None else scale)


def reference_varlen_attention(
    q, k, v, cu_seqlens, *, scale: float | None = None, max_seqlen: int | None = None
) -> jax.Array:
    """Reference for ``varlen_attention.varlen_attention``: packed q ``[t, hq, d]``, k/v ``[t, hkv, d]``;
    sequence i spans tokens ``cu_seqlens[i]:cu_seqlens[i+1]`` and attends only within itself (no causal)."""
    del max_seqlen  # a tiling hint for the kernel only
    t = q.shape[0]
    cu = jnp.asarray(cu_seqlens)
    tok = jnp.arange(t)
    # Token i belongs to sequence j iff cu[j] <= i < cu[j + 1] ([t, n] one-hot; padding tokens in none).
    member = (cu[None, :-1] <= tok[:, None]) & (tok[:, None] < cu[None, 1:])
    same = jnp.any(member[:, None, :] & member[None, :, :], axis=-1)  # [t, t]
    d = q.shape[-1]
    return dense_attention(q[None], k[None], v[None], same[None], scale=d**-0.5 if scale is None else scale)[
        0
    ]


def reference_decode_attention(
    q,
    k_cache,
    v_cache,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_positions=None,
    kv_positions=None,
    *,
    lengths=None,
    causal: bool = False,
    scale: float | None = None,
    kv_heads_major: bool = False,
) -> jax.Array:
    """Reference for ``decode_attention.decode_attention``: q ``[b, tq, hq, d]`` (tq small) against caches
    ``[b, S, hkv, d]`` (``[b, hkv, S, d]`` when ``kv_heads_major``). ``lengths`` (int ``[b]``), when given,
    marks slots ``>= lengths[i]`` as padding."""
    if kv_heads_major:
        k_cache, v_cache = k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3)
    b, tq, _, d = q.shape
    s_len = k_cache.shape[1]
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, tq), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, s_len), jnp.int32)
    mask = dense_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal=causal)
    if lengths is not None:
        mask &= (jnp.arange(s_len)[None, :] < jnp.asarray(lengths)[:, None])[:, None, :]
    return dense_attention(q, k_cache, v_cache, mask, scale=d**-0.5 if scale is None else scale)
