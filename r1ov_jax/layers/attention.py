"""THE attention call of r1ov-jax.

Every attention in the project (vision windows, vision full attention, the text decoder, KV-cache decode)
goes through :func:`attention`. One masking vocabulary covers all of them:

* ``q_segment_ids`` / ``kv_segment_ids`` (int32 ``[b, t]``): a query attends to a key only when both carry the
  same segment id and that id is non-zero. Id 0 means padding. This expresses left padding, packed sequences,
  vision windows (one id per window) and per-image full attention, with no dense mask handed in.
* ``causal`` with ``q_positions`` / ``kv_positions`` (int32 ``[b, t]``, default ``arange``): a query at
  position p sees keys at positions <= p. For decode against a static KV cache, ``q_positions`` holds the
  cache slots being written and the default ``kv_positions`` are the slot numbers.

A query row with no visible key returns zeros (not NaN).

``impl`` selects the implementation: "xla" (portable einsum path, the reference semantics), "pallas"
(kernels from ``r1ov_kernels``; interpret mode on CPU) or "auto" (Pallas on TPU/GPU, XLA on CPU).

On a multi-device mesh (inside ``sharding.activation_sharding``) the kernels run under ``jax.shard_map``: XLA
cannot partition a Mosaic/Triton custom call ("Mosaic kernels cannot be automatically partitioned"), and
attention needs no communication once batch rows and heads are split, so each device calls the kernel on its
own rows (batch over the rules' ``batch`` axes) and heads (``act_heads``, when it divides both the query and
the kv heads: contiguous head blocks keep each GQA group on one device). A dimension the mesh does not divide
stays whole on every device (correct, redundant work).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1ov_jax.sharding import rules as sharding_rules

IMPLS = ("auto", "xla", "pallas")


def make_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
) -> jax.Array:
    """Boolean visibility mask ``[b, tq, tk]`` from segment ids (and positions when causal)."""
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids[:, :, None] != 0)
    if causal:
        b, tq = q_segment_ids.shape
        tk = kv_segment_ids.shape[1]
        if q_positions is None:
            q_positions = jnp.broadcast_to(jnp.arange(tq, dtype=jnp.int32), (b, tq))
        if kv_positions is None:
            kv_positions = jnp.broadcast_to(jnp.arange(tk, dtype=jnp.int32), (b, tk))
        mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
    return mask


def xla_attention(q, k, v, mask, *, scale: float, kv_heads_major: bool = False) -> jax.Array:
    """Dense attention. q ``[b, tq, hq, d]``, k/v ``[b, tk, hkv, d]`` (``[b, hkv, tk, d]`` when
    ``kv_heads_major``), mask ``[b, tq, tk]`` (bool)."""
    b, tq, hq, d = q.shape
    if not kv_heads_major:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    g = hq // hkv
    # GQA: query head j uses kv head j // g, as transformers' repeat_kv does. The g query heads of a kv head
    # (times tq) are the rows of one [rows, d] x [d, tk] matmul per (b, kv head): both batch dims lead, which
    # XLA:CPU runs as plain batched matmuls instead of transposing the cache on every decode step.
    qg = q.reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * tq, d)
    logits = jnp.einsum("bhrd,bhkd->bhrk", qg, k, preferred_element_type=jnp.float32) * scale
    m = mask[:, None, None]  # [b, 1, 1, tq, tk]
    logits = jnp.where(m, logits.reshape(b, hkv, g, tq, -1), jnp.finfo(jnp.float32).min)
    # Softmax in fp32, normalized after the second matmul (one [rows, tk] pass fewer).
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    denom = jnp.sum(p, axis=-1).reshape(b, hkv, g * tq, 1)
    out = (
        jnp.einsum(
            "bhrk,bhkd->bhrd",
            p.reshape(b, hkv, g * tq, -1).astype(v.dtype),
            v,
            preferred_element_type=jnp.float32,
        )
        / denom
    )
    out = out.reshape(b, hkv, g, tq, d).transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d)
    # Fully masked rows (padding queries) become exact zeros instead of an average of the values.
    return (out * jnp.any(mask, axis=-1)[:, :, None, None]).astype(q.dtype)


def resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":  # the platform compiled for: the default device's (deviceless AOT) or the backend's
        dev = jax.config.jax_default_device
        platform = jax.default_backend() if dev is None else dev if isinstance(dev, str) else dev.platform
        return "pallas" if platform in ("tpu", "gpu", "cuda", "rocm") else "xla"
    return impl


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "xla",
    mask: jax.Array | None = None,
    kv_heads_major: bool = False,
    max_seqlen: int | None = None,
) -> jax.Array:
    """Multi-head attention with GQA.

    Args:
      q: ``[b, tq, hq, d]``; k, v: ``[b, tk, hkv, d]`` with ``hq % hkv == 0``, or ``[b, hkv, tk, d]`` when
        ``kv_heads_major`` (the KV-cache layout: each head's keys contiguous, read in place).
      q_segment_ids, kv_segment_ids: int ``[b, tq]`` / ``[b, tk]``; None means one segment everywhere.
      causal: restrict each query to keys at positions <= its own.
      q_positions, kv_positions: int ``[b, tq]`` / ``[b, tk]``, only used when causal; default ``arange``.
      scale: logit scale, default ``d ** -0.5``.
      impl: "auto" | "xla" | "pallas".
      mask: optional precomputed ``make_mask(...)`` of exactly these ids/positions, used by the XLA path so a
        decoder computes it once per step instead of once per layer; kernels derive it from the ids.
      max_seqlen: static bound on every segment's length when each segment id is one contiguous run (the
        vision tower's windows): the kernels visit only the blocks one segment can reach, and the XLA path
        (non-causal, no ``mask`` given) attends block-locally (:func:`local_xla_attention`).

    Returns:
      ``[b, tq, hq, d]`` in q's dtype (accumulation in fp32).
    """
    b, tq, _, d = q.shape
    tk = k.shape[2] if kv_heads_major else k.shape[1]
    scale = d**-0.5 if scale is None else scale
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, tq), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, tk), jnp.int32)
    impl = resolve_impl(impl)
    if impl == "pallas":
        return _kernel_attention(
            q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
            causal=causal, scale=scale, kv_heads_major=kv_heads_major, max_seqlen=max_seqlen,
        )  # fmt: skip
    if mask is None and max_seqlen and not causal and not kv_heads_major and tq == tk and 3 * max_seqlen < tk:
        return local_xla_attention(q, k, v, q_segment_ids, kv_segment_ids, block=max_seqlen, scale=scale)
    if mask is None:
        mask = make_mask(
            q_segment_ids, kv_segment_ids, causal=causal, q_positions=q_positions, kv_positions=kv_positions
        )
    return xla_attention(q, k, v, mask, scale=scale, kv_heads_major=kv_heads_major)


def local_xla_attention(q, k, v, q_segment_ids, kv_segment_ids, *, block: int, scale: float) -> jax.Array:
    """Non-causal self-attention when every segment is one contiguous run of at most ``block`` positions (the
    vision tower's windows): the keys a query can see lie in its own block of ``block`` positions or the two
    beside it, so each block attends to those 3 · block keys instead of all t (t / (3 · block) of the dense
    work; exact, the other keys are masked out in the dense path too)."""
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    nb = -(-t // block)
    pad = nb * block - t

    def blocks(x):  # [b, t, ...] -> [b, nb, block, ...], zero-padded (padding is segment 0: sees nothing)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, nb, block, *x.shape[2:])

    def with_neighbours(x):  # [b, nb, block, ...] -> [b, nb, 3 * block, ...]: blocks i - 1, i, i + 1
        edge = jnp.zeros_like(x[:, :1])
        prev, nxt = jnp.concatenate([edge, x[:, :-1]], 1), jnp.concatenate([x[:, 1:], edge], 1)
        return jnp.concatenate([prev, x, nxt], axis=2)

    q_seg = blocks(q_segment_ids)
    kv_seg = with_neighbours(blocks(kv_segment_ids))
    mask = (q_seg[..., :, None] == kv_seg[..., None, :]) & (q_seg[..., :, None] != 0)
    out = xla_attention(
        blocks(q).reshape(b * nb, block, hq, d),
        with_neighbours(blocks(k)).reshape(b * nb, 3 * block, hkv, d),
        with_neighbours(blocks(v)).reshape(b * nb, 3 * block, hkv, d),
        mask.reshape(b * nb, block, 3 * block),
        scale=scale,
    )
    return out.reshape(b, nb * block, hq, d)[:, :t]


def _kernel_attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, kv_heads_major, max_seqlen):
    from r1ov_kernels import dispatch  # kernels are optional at import time of the library

    def call(q, k, v, q_seg, kv_seg, q_pos, kv_pos):
        return dispatch.attention(
            q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal, q_positions=q_pos,
            kv_positions=kv_pos, scale=scale, kv_heads_major=kv_heads_major, max_seqlen=max_seqlen,
        )  # fmt: skip

    ctx = sharding_rules.current()
    if ctx is None or ctx[0].size == 1:
        return call(q, k, v, q_seg, kv_seg, q_pos, kv_pos)
    mesh, rules = ctx
    b, _, hq, _ = q.shape
    hkv = k.shape[1] if kv_heads_major else k.shape[2]
    (batch,) = sharding_rules.logical_to_spec(("batch",), rules, mesh, (b,))
    (heads,) = sharding_rules.logical_to_spec(("act_heads",), rules, mesh, (hq,))
    if heads is not None and hkv % _axes_size(mesh, heads):
        heads = None  # kv heads not divisible: every device keeps all heads of its rows
    q_spec = P(batch, None, heads, None)
    kv_spec = P(batch, heads, None, None) if kv_heads_major else q_spec
    row_spec = P(batch, None)
    args = (q, k, v, q_seg, kv_seg, q_pos, kv_pos)
    present = [i for i, a in enumerate(args) if a is not None]
    specs = (q_spec, kv_spec, kv_spec, row_spec, row_spec, row_spec, row_spec)

    def local(*xs):
        full = [None] * len(args)
        for i, x in zip(present, xs):
            full[i] = x
        return call(*full)

    return jax.shard_map(
        local, mesh=mesh, in_specs=tuple(specs[i] for i in present), out_specs=q_spec, check_vma=False
    )(*(args[i] for i in present))


def _axes_size(mesh, axes) -> int:
    size = 1
    for a in (axes,) if isinstance(axes, str) else axes:
        size *= mesh.shape[a]
    return size
