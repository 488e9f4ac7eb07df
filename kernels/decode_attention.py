"""Decode attention: a few query tokens per sequence against a static KV cache, GQA-grouped, split-K.

q ``[b, tq, hq, d]`` with small tq (a decode step, or a few speculative tokens), caches ``[b, S, hkv, d]`` or
head-major ``[b, hkv, S, d]`` (``kv_heads_major``, the model's KV-cache layout);
visibility is the project's rule (segment ids, causal positions), and ``lengths`` is a shortcut for
"slots >= length are empty". Design:

* All ``g = hq // hkv`` query heads of a kv head, times the tq tokens, form the rows of one tile
  (``g * tq`` rows), so each cache block is read once per kv head, not once per query head.
* The cache is read in place when its layout allows (head-major: always, when S and d need no padding;
  ``[b, S, hkv * d]`` is a free reshape and a ``(block_k, d)`` tile at lane-block ``h`` is head h) instead of
  transposing the whole cache every step.
* Per sequence, only key blocks in ``[lo, hi)`` (from ``common.block_ranges``: empty slots and, when
  causal, slots past the newest query position) are read. That range is split across ``num_splits``
  programs (flash-decoding) whose partial results are merged by logsumexp in XLA: parallelism for small
  batches on GPU, megacore on TPU.

Gradients (rarely needed at decode time) are plain XLA (``_dense_backward``): the FlashAttention-2 backward
formulas on the dense ``[b, hkv, g * tq, S]`` probabilities, recomputed in fp32 in the same grouped layout
(a head-major cache is not transposed). At decode sizes (``g * tq`` rows) that tile is small.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu
from r1ov_kernels import common
from r1ov_kernels.common import LANES, MASK_VALUE, SUBLANES, dot, lanes, visible

DEFAULT_BLOCK_K = {"tpu": 512, "gpu": 64}
TARGET_PROGRAMS = {"tpu": 2, "gpu": 128}  # enough (b, hkv, split) programs to fill the chip


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    block_k: int | None = None,
    num_splits: int | None = None,
    in_place: bool | None = None,
    backend: str | None = None,
    interpret: bool | None = None,
    kv_heads_major: bool = False,
) -> jax.Array:
    """Attention of a few query tokens against a KV cache.

    Args:
      q: ``[b, tq, hq, d]``; k_cache, v_cache: ``[b, S, hkv, d]``, same dtype (``[b, hkv, S, d]`` when
        ``kv_heads_major``).
      q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal: as in ``layers.attention``.
      lengths: optional int ``[b]``; cache slots ``>= lengths[i]`` are treated as padding.
      scale: logit scale, default ``d ** -0.5``.
      block_k: cache tile length; num_splits: programs per (sequence, kv head) along the cache.
      in_place: read a ``[b, S, hkv, d]`` cache without a transposed copy (default: whenever the layout
        allows); a head-major cache is always read as it is (padded only when S or d are not tile multiples).
      backend, interpret: as in ``flash_attention.flash_attention``.

    Returns:
      ``[b, tq, hq, d]`` in q's dtype.
    """
    b, tq = q.shape[:2]
    s_len = k_cache.shape[2] if kv_heads_major else k_cache.shape[1]
    kv_segment_ids = common.lengths_to_segment_ids(lengths, kv_segment_ids, (b, s_len))
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, tq), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, s_len), jnp.int32)
    if causal:
        q_positions = common.default_positions(b, tq) if q_positions is None else q_positions
        kv_positions = common.default_positions(b, s_len) if kv_positions is None else kv_positions
    if kv_heads_major and in_place:
        raise ValueError("in_place applies to [b, S, hkv, d] caches; a head-major cache is read as it is")
    kv_shape = k_cache.shape
    if kv_heads_major:
        kv_shape = (kv_shape[0], kv_shape[2], kv_shape[1], kv_shape[3])
    cfg = _Config.make(
        q.shape,
        kv_shape,
        causal=causal,
        scale=scale,
        block_k=block_k,
        num_splits=num_splits,
        in_place=False if kv_heads_major else in_place,
        backend=backend,
        interpret=interpret,
        heads_major=kv_heads_major,
    )
    return _decode(cfg, q, k_cache, v_cache, (q_segment_ids, kv_segment_ids, q_positions, kv_positions))


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static plan of one decode call (hashable: a custom_vjp static argument)."""

    backend: str
    interpret: bool
    causal: bool
    scale: float
    block_k: int
    s_pad: int  # cache length padded to a whole number of blocks
    d_pad: int
    rows: int  # g * tq query rows per kv head, padded to the tile granule
    num_splits: int
    in_place: bool
    heads_major: bool  # caches arrive as [b, hkv, S, d]

    @classmethod
    def make(
        cls,
        q_shape,
        kv_shape,
        *,
        causal,
        scale,
        block_k,
        num_splits,
        in_place,
        backend,
        interpret,
        heads_major=False,
    ):
        """``kv_shape`` is always given as ``[b, S, hkv, d]``."""
        b, tq, hq, d = q_shape
        _, s_len, hkv, _ = kv_shape
        if hq % hkv or kv_shape[3] != d:
            raise ValueError(f"q {q_shape} incompatible with cache {kv_shape} (heads or head dim)")
        backend = common.kernel_backend(backend)
        bk = _pick_block_k(s_len, block_k or DEFAULT_BLOCK_K[backend], backend)
        d_pad = common.padded_head_dim(d, backend)
        # In place needs unpadded tiles: a whole number of blocks, and on TPU a lane-aligned head.
        can = s_len % bk == 0 and d_pad == d and (backend == "gpu" or d % LANES == 0 or hkv == 1)
        if in_place and not can:
            raise ValueError(f"cache {kv_shape} cannot be read in place with block_k={bk} on {backend}")
        rows = (hq // hkv) * tq
        rows = max(16, common.next_pow2(rows)) if backend == "gpu" else common.round_up(rows, SUBLANES)
        nk = common.cdiv(s_len, bk)
        splits = num_splits or common.cdiv(TARGET_PROGRAMS[backend], b * hkv)
        return cls(
            backend=backend,
            interpret=common.use_interpret(interpret),
            causal=causal,
            scale=float(d**-0.5 if scale is None else scale),
            block_k=bk,
            s_pad=nk * bk,
            d_pad=d_pad,
            rows=rows,
            num_splits=max(1, min(splits, nk)),
            in_place=can if in_place is None else in_place,
            heads_major=heads_major,
        )


def _pick_block_k(s_len, block, backend):
    if s_len <= block:
        return common.pick_block(s_len, block, backend)
    # Prefer a tile that divides the cache (in-place reads); otherwise the cache gets padded.
    step = LANES if backend == "tpu" else 16
    for cand in range(block, step - 1, -step):
        if s_len % cand == 0 and (backend == "tpu" or cand & (cand - 1) == 0):
            return cand
    return block


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _decode(cfg, q, k, v, ids):
    return _decode_fwd_impl(cfg, q, k, v, ids)


def _decode_vjp_fwd(cfg, q, k, v, ids):
    return _decode_fwd_impl(cfg, q, k, v, ids), (q, k, v, ids)


def _decode_vjp_bwd(cfg, res, do):
    q, k, v, ids = res
    return (*_dense_backward(cfg, q, k, v, ids, do), None)


def _dense_backward(cfg, q, k, v, ids, do):
    """(dq, dk, dv) of decode attention in plain XLA, fp32.

    With s = scale * q k^T (masked), p = softmax(s) (zero rows where nothing is visible) and o = p v:
    dv = p^T do, dp = do v^T, ds = p * (dp - rowsum(do * o)), dq = scale * ds k, dk = scale * ds^T q.
    Rows r = gi * tq + t of kv head h are query head h * g + gi at token t, as in the kernels.
    """
    b, tq, hq, d = q.shape
    hkv = k.shape[1] if cfg.heads_major else k.shape[2]
    g = hq // hkv
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    kh, vh = (
        (f32(k), f32(v)) if cfg.heads_major else (f32(k).transpose(0, 2, 1, 3), f32(v).transpose(0, 2, 1, 3))
    )
    group = lambda x: f32(x).reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4)  # noqa: E731  [b, h, g, tq, d]
    qg, dog = group(q), group(do)
    q_seg, kv_seg, q_pos, kv_pos = ids
    col = lambda x: None if x is None else x[:, None, None, :, None]  # noqa: E731  [b, 1, 1, tq, 1]
    row = lambda x: None if x is None else x[:, None, None, None, :]  # noqa: E731  [b, 1, 1, 1, S]
    mask = visible(col(q_seg), row(kv_seg), col(q_pos), row(kv_pos), cfg.causal)  # [b, 1, 1, tq, S]
    hp = lax.Precision.HIGHEST
    s = jnp.einsum("bhgtd,bhsd->bhgts", qg, kh, precision=hp) * cfg.scale
    s = jnp.where(mask, s, MASK_VALUE)
    m = s.max(axis=-1, keepdims=True)
    p = jnp.where(mask, jnp.exp(s - m), 0.0)
    l = p.sum(axis=-1, keepdims=True)
    p = p * jnp.where(l > 0, 1.0 / l, 0.0)
    o = jnp.einsum("bhgts,bhsd->bhgtd", p, vh, precision=hp)
    dv = jnp.einsum("bhgts,bhgtd->bhsd", p, dog, precision=hp)
    dp = jnp.einsum("bhgtd,bhsd->bhgts", dog, vh, precision=hp)
    ds = p * (dp - jnp.sum(dog * o, axis=-1, keepdims=True))
    dq = jnp.einsum("bhgts,bhsd->bhgtd", ds, kh, precision=hp) * cfg.scale
    dk = jnp.einsum("bhgts,bhgtd->bhsd", ds, qg, precision=hp) * cfg.scale
    dq = dq.transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d).astype(q.dtype)
    if not cfg.heads_major:
        dk, dv = dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype)


_decode.defvjp(_decode_vjp_fwd, _decode_vjp_bwd)


def _decode_fwd_impl(cfg, q, k, v, ids):
    b, tq, hq, d = q.shape
    s_len, hkv = (k.shape[2], k.shape[1]) if cfg.heads_major else (k.shape[1], k.shape[2])
    g, rows, sp, dp = hq // hkv, cfg.rows, cfg.s_pad, cfg.d_pad
    q_seg, kv_seg, q_pos, kv_pos = ids
    kv_seg = common.pad_ids(kv_seg, sp)
    if cfg.causal:
        kv_pos = common.pad_ids(kv_pos, sp)
    # One q block covering every row: lo/hi per sequence.
    lo, hi, _, _ = common.block_ranges(
        q_seg, kv_seg, q_pos, kv_pos, causal=cfg.causal, block_q=tq, block_k=cfg.block_k
    )
    # Rows r = gi * tq + t of kv head h hold query head h * g + gi at token t.
    qr = q.reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * tq, d)
    qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows - g * tq), (0, dp - d)))
    tile_rows = lambda x: common.pad_ids(jnp.tile(x, (1, g)), rows)
    row_ids = [tile_rows(q_seg), kv_seg] + ([tile_rows(q_pos), kv_pos] if cfg.causal else [])
    if cfg.heads_major:  # already [b, hkv, S, d]: pad only when S or d are not tile multiples
        pad = ((0, 0), (0, 0), (0, sp - s_len), (0, dp - d))
        k, v = (k, v) if sp == s_len and dp == d else (jnp.pad(k, pad), jnp.pad(v, pad))
    elif cfg.in_place:
        k, v = k.reshape(b, s_len, hkv * d), v.reshape(b, s_len, hkv * d)
    else:
        k, v = common.to_heads(k, sp, dp), common.to_heads(v, sp, dp)
    run = _tpu_decode if cfg.backend == "tpu" else _gpu_decode
    o, lse = run(cfg, qr, k, v, lo[:, 0], hi[:, 0], row_ids, hkv)
    # Merge the splits by their logsumexp. Splits that saw no visible key carry lse == MASK_VALUE, so their
    # weight underflows to 0; if every split is empty all weights are 1 but every o is 0 -> zero row.
    w = jnp.exp(lse - lse.max(axis=2, keepdims=True))
    out = (o * w[..., None]).sum(axis=2) / w.sum(axis=2)[..., None]
    out = out[:, :, : g * tq, :d].reshape(b, hkv, g, tq, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, tq, hq, d).astype(q.dtype)


def _split_range(lo, hi, s, n):
    """Key blocks ``[start, end)`` of split ``s`` out of ``n`` over the visible range ``[lo, hi)``."""
    per = (hi - lo + n - 1) // n
    start = lo + s * per
    return start, jnp.minimum(start + per, hi)


# ----------------------------------------------------------------------------------------------------------
# TPU: grid (b, hkv, split, step); the running (acc, m, l) live in VMEM scratch across steps.


def _tpu_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, cfg):
    # Same lane-replicated (rows, 128) statistics as the flash TPU kernel: no 1-D vectors in Mosaic.
    n_side = 4 if cfg.causal else 2
    side, (o_ref, lse_ref, acc_sc, m_sc, l_sc) = refs[:n_side], refs[n_side:]
    bi, s, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    start, end = _split_range(lo_ref[bi], hi_ref[bi], s, cfg.num_splits)
    bk, dp = k_ref.shape[0], acc_sc.shape[1]

    @pl.when(j == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)
        m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
        l_sc[...] = jnp.zeros_like(l_sc)

    @pl.when(start + j < end)
    def _step():
        q_pos = lanes(side[2][...], bk) if cfg.causal else None
        k_pos = side[3][:1, :] if cfg.causal else None
        mask = visible(lanes(side[0][...], bk), side[1][:1, :], q_pos, k_pos, cfg.causal)
        s_ = jnp.where(mask, dot(q_ref[...], k_ref[...], trans_b=True) * cfg.scale, MASK_VALUE)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, s_.max(axis=-1)[:, None])
        p = jnp.where(mask, jnp.exp(s_ - lanes(m_next, bk)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(p.sum(axis=-1), m_prev.shape, (0,))
        m_sc[...] = m_next
        acc_sc[...] = lanes(alpha, dp) * acc_sc[...] + dot(p.astype(v_ref.dtype), v_ref[...])

    @pl.when(j == pl.num_programs(3) - 1)
    def _final():
        l = l_sc[...]
        o_ref[...] = acc_sc[...] * lanes(jnp.where(l > 0, 1.0 / l, 0.0), dp)
        lse_ref[...] = jnp.where(l > 0, m_sc[...] + jnp.log(l), MASK_VALUE)


def _tpu_decode(cfg, qr, k, v, lo, hi, row_ids, hkv):
    b, _, rows, dp = qr.shape
    bk, ns = cfg.block_k, cfg.num_splits
    steps = common.cdiv(cfg.s_pad // bk, ns)

    def blk(bi, s, j, lo, hi):
        start, end = _split_range(lo[bi], hi[bi], s, ns)
        return jnp.maximum(jnp.minimum(start + j, end - 1), 0)  # past the end: repeat, no new DMA

    if cfg.in_place:  # [b, S, hkv * d]: lane block h is kv head h
        kv_spec = pl.BlockSpec((None, bk, dp), lambda bi, h, s, j, lo, hi: (bi, blk(bi, s, j, lo, hi), h))
    else:
        kv_spec = pl.BlockSpec(
            (None, None, bk, dp), lambda bi, h, s, j, lo, hi: (bi, h, blk(bi, s, j, lo, hi), 0)
        )
    q_map = lambda bi, h, s, j, lo, hi: (bi, h, 0, 0)
    col_spec = pl.BlockSpec((None, rows, LANES), lambda bi, h, s, j, lo, hi: (bi, 0, 0))
    row_spec = pl.BlockSpec((None, SUBLANES, bk), lambda bi, h, s, j, lo, hi: (bi, 0, blk(bi, s, j, lo, hi)))
    col = lambda x: jnp.broadcast_to(x[..., None], (*x.shape, LANES))
    row = lambda x: jnp.broadcast_to(x[:, None, :], (b, SUBLANES, x.shape[1]))
    side = [col(row_ids[0]), row(row_ids[1])] + ([col(row_ids[2]), row(row_ids[3])] if cfg.causal else [])
    out_map = lambda bi, h, s, j, lo, hi: (bi, h, s, 0, 0)
    o, lse = pl.pallas_call(
        functools.partial(_tpu_kernel, cfg=cfg),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, hkv, ns, steps),
            in_specs=[
                pl.BlockSpec((None, None, rows, dp), q_map),
                kv_spec,
                kv_spec,
                *([col_spec, row_spec] * (2 if cfg.causal else 1)),
            ],
            out_specs=[
                pl.BlockSpec((None, None, None, rows, dp), out_map),
                pl.BlockSpec((None, None, None, rows, LANES), out_map),
            ],
            scratch_shapes=[
                pltpu.VMEM((rows, dp), jnp.float32),
                pltpu.VMEM((rows, LANES), jnp.float32),
                pltpu.VMEM((rows, LANES), jnp.float32),
            ],
        ),
        out_shape=[
            jax.ShapeDtypeStruct((b, hkv, ns, rows, dp), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, ns, rows, LANES), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3 + ("arbitrary",)),
        interpret=cfg.interpret,
        name="decode_attention_tpu",
        # rows = the kv head's query heads x tokens: one [rows, S] logit tile per kv head
        cost_estimate=common.attention_cost(
            b, hkv, rows, cfg.s_pad, dp, causal=False, matmuls=2, operands=(qr, k, v)
        ),
    )(lo, hi, qr, k, v, *side)
    return o, lse[..., 0]


# ----------------------------------------------------------------------------------------------------------
# GPU (Triton): grid (b, hkv, split); each program loops over its share of the visible key blocks.


def _finish(acc, m, l):
    ok = l > 0
    return acc * jnp.where(ok, 1.0 / l, 0.0)[:, None], jnp.where(ok, m + jnp.log(l), MASK_VALUE)


def _online_step(cfg, q, k, v, mask, acc, m, l):
    s = jnp.where(mask, dot(q, k, trans_b=True) * cfg.scale, MASK_VALUE)
    m_next = jnp.maximum(m, s.max(axis=-1))
    p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)  # rows masked so far: m == MASK, exp(0) != 0
    alpha = jnp.exp(m - m_next)
    return alpha[:, None] * acc + dot(p.astype(v.dtype), v), m_next, alpha * l + p.sum(axis=-1)


def _gpu_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, cfg):
    n_side = 4 if cfg.causal else 2
    side, (o_ref, lse_ref) = refs[:n_side], refs[n_side:]
    bk = cfg.block_k
    start, end = _split_range(lo_ref[()], hi_ref[()], pl.program_id(2), cfg.num_splits)
    q = q_ref[...]
    q_seg = side[0][...][:, None]
    q_pos = side[2][...][:, None] if cfg.causal else None

    def body(kb, carry):
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k_pos = side[3][sl][None, :] if cfg.causal else None
        mask = visible(q_seg, side[1][sl][None, :], q_pos, k_pos, cfg.causal)
        return _online_step(cfg, q, k_ref[sl, :], v_ref[sl, :], mask, *carry)

    rows, dp = q.shape
    init = (
        jnp.zeros((rows, dp), jnp.float32),
        jnp.full((rows,), MASK_VALUE, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    o, lse = _finish(*lax.fori_loop(start, end, body, init))
    o_ref[...] = o
    lse_ref[...] = lse


def _gpu_decode(cfg, qr, k, v, lo, hi, row_ids, hkv):
    b, _, rows, dp = qr.shape
    sp, ns = cfg.s_pad, cfg.num_splits
    if cfg.in_place:  # [b, S, hkv * d]: column block h is kv head h
        kv_spec = pl.BlockSpec((None, sp, dp), lambda bi, h, s: (bi, 0, h))
    else:
        kv_spec = pl.BlockSpec((None, None, sp, dp), lambda bi, h, s: (bi, h, 0, 0))
    scal = pl.BlockSpec((None,), lambda bi, h, s: (bi,))
    q_side = pl.BlockSpec((None, rows), lambda bi, h, s: (bi, 0))
    k_side = pl.BlockSpec((None, sp), lambda bi, h, s: (bi, 0))
    out_map = lambda bi, h, s: (bi, h, s, 0, 0)
    o, lse = pl.pallas_call(
        functools.partial(_gpu_kernel, cfg=cfg),
        grid=(b, hkv, ns),
        in_specs=[
            scal,
            scal,
            pl.BlockSpec((None, None, rows, dp), lambda bi, h, s: (bi, h, 0, 0)),
            kv_spec,
            kv_spec,
            *([q_side, k_side] * (2 if cfg.causal else 1)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, rows, dp), out_map),
            pl.BlockSpec((None, None, None, rows), lambda bi, h, s: (bi, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, hkv, ns, rows, dp), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, ns, rows), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=cfg.interpret,
        name="decode_attention_triton",
    )(lo, hi, qr, k, v, *row_ids)
    return o, lse
