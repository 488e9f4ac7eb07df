"""The one door from ``r1ov_jax.layers.attention`` (impl "pallas" / "auto") into the kernels.

* Shape decides the kernel: a few query tokens against a long key axis (a decode step against the KV
  cache) goes to ``decode_attention``; everything else (training, prefill, vision) to ``flash_attention``,
  whose per-block ranges already skip the off-diagonal blocks of packed / windowed segment ids.
* ``jax.default_backend()`` decides the flavour: Triton kernels on "gpu", Mosaic kernels on "tpu", and on
  "cpu" the TPU flavour in interpret mode (slow; meant for tests).

Vision code that holds ``cu_seqlens`` and a static bound on window length can call
``varlen_attention.varlen_attention`` directly for a smaller TPU grid.
"""

from __future__ import annotations

import jax
from r1ov_kernels import common
from r1ov_kernels.decode_attention import decode_attention
from r1ov_kernels.flash_attention import flash_attention

DECODE_MAX_Q = 8  # at most this many query tokens ...
DECODE_MIN_KV = 128  # ... against at least this many keys -> decode kernel


def use_decode(tq: int, tk: int) -> bool:
    return tq <= DECODE_MAX_Q and tk >= DECODE_MIN_KV


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    causal: bool,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    scale: float,
    backend: str | None = None,
    interpret: bool | None = None,
    kv_heads_major: bool = False,
    max_seqlen: int | None = None,
) -> jax.Array:
    """Same contract as ``r1ov_jax.layers.attention.attention`` (q ``[b, tq, hq, d]``, k/v ``[b, tk, hkv, d]``,
    or ``[b, hkv, tk, d]`` with ``kv_heads_major``: the KV-cache layout).

    ``backend`` ("tpu" | "gpu") and ``interpret`` override the automatic choice (tests use them);
    ``max_seqlen`` (a static bound on every contiguous segment) shrinks the flash kernels' grid.
    """
    backend = common.kernel_backend(backend)
    interpret = common.use_interpret(interpret)
    ids = (q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    kw = dict(causal=causal, scale=scale, backend=backend, interpret=interpret)
    if use_decode(q.shape[1], k.shape[2] if kv_heads_major else k.shape[1]):
        return decode_attention(q, k, v, *ids, kv_heads_major=kv_heads_major, **kw)
    if kv_heads_major:  # a prompt against the cache (prefill): one transposed copy per prompt, not per token
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return flash_attention(q, k, v, *ids, max_seqlen=max_seqlen, **kw)
