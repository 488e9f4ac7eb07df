"""Plain-jnp references, one per kernel, with the kernels' signatures (block/backend knobs omitted).

All of them reduce to ``r1ov_jax.layers.attention.xla_attention`` with a dense ``[b, tq, tk]`` mask, i.e.
the project's definition of attention; the kernels are tested against these, outputs and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Plain jnp (searchsorted); tested on its own against a Python loop.
from r1ov_kernels.varlen_attention import segment_ids_from_cu_seqlens

from r1ov_jax.layers.attention import make_mask, xla_attention


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
    mask = make_mask(
        q_segment_ids, kv_segment_ids, causal=causal, q_positions=q_positions, kv_positions=kv_positions
    )
    return xla_attention(q, k, v, mask, scale=d**-0.5 if scale is None else scale)


def reference_varlen_attention(
    q, k, v, cu_seqlens, *, scale: float | None = None, max_seqlen: int | None = None
) -> jax.Array:
    """Reference for ``varlen_attention.varlen_attention``: packed q ``[t, hq, d]``, k/v ``[t, hkv, d]``;
    sequence i spans tokens ``cu_seqlens[i]:cu_seqlens[i+1]`` and attends only within itself (no causal)."""
    del max_seqlen  # a tiling hint for the kernel only
    seg = segment_ids_from_cu_seqlens(cu_seqlens, q.shape[0])[None]
    return reference_flash_attention(q[None], k[None], v[None], seg, seg, scale=scale)[0]


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
) -> jax.Array:
    """Reference for ``decode_attention.decode_attention``: q ``[b, tq, hq, d]`` (tq small) against caches
    ``[b, S, hkv, d]``. ``lengths`` (int ``[b]``), when given, marks slots ``>= lengths[i]`` as padding."""
    kv_segment_ids = lengths_to_segment_ids(lengths, kv_segment_ids, k_cache.shape[:2])
    return reference_flash_attention(
        q,
        k_cache,
        v_cache,
        q_segment_ids,
        kv_segment_ids,
        q_positions,
        kv_positions,
        causal=causal,
        scale=scale,
    )


def lengths_to_segment_ids(lengths, kv_segment_ids, shape):
    """Fold per-sequence cache lengths into kv segment ids (slot < length keeps its id, else 0)."""
    if lengths is None:
        return kv_segment_ids
    b, s = shape
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, s), jnp.int32)
    valid = jnp.arange(s, dtype=jnp.int32)[None, :] < jnp.asarray(lengths, jnp.int32)[:, None]
    return jnp.where(valid, kv_segment_ids, 0)
