"""Flash attention (forward + backward) with segment ids, causal positions and GQA, as Pallas kernels.

Semantics are those of ``r1ov_jax.layers.attention``: query i sees key j iff both carry the same non-zero
segment id and, when causal, ``kv_pos[j] <= q_pos[i]``; rows with no visible key are zeros; GQA query head
``h`` reads kv head ``h // (hq // hkv)``; softmax and accumulation in fp32, output in q's dtype.

Algorithm (FlashAttention-2): the forward pass streams key blocks through an online softmax and saves the
row logsumexp; the backward pass recomputes probabilities from it, in two kernels, one accumulating dq per
query block, one accumulating dk/dv per key block over every query head of its kv group (so GQA needs no
extra reduction). Only key blocks in the per-query-block range from ``common.block_ranges`` are visited;
on TPU the grid still spans ``kv_steps`` but skipped steps neither compute nor DMA (the block index is
clamped, so the pipeline sees an unchanged block).

This file holds the TPU flavour (Mosaic; BlockSpec pipelining, scalar-prefetched ranges, VMEM scratch
accumulators); ``flash_attention_gpu`` holds the Triton flavour. Both run with ``interpret=True`` on CPU.
Reference: ``reference.reference_flash_attention``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from r1ov_kernels import common
from r1ov_kernels.common import LANES, MASK_VALUE, SUBLANES, Geometry, dot, lanes, visible


# ----------------------------------------------------------------------------------------------------------
# Public API


def plan(tq: int, tk: int, d: int, *, backend: str, block_q: int | None, block_k: int | None):
    """Tile sizes and padded extents: (block_q, block_k, tq_pad, tk_pad, d_pad)."""
    dbq, dbk = common.DEFAULT_BLOCKS[backend]
    bq = common.pick_block(tq, block_q or dbq, backend)
    bk = common.pick_block(tk, block_k or dbk, backend)
    return bq, bk, common.round_up(tq, bq), common.round_up(tk, bk), common.padded_head_dim(d, backend)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    backend: str | None = None,
    interpret: bool | None = None,
    max_seqlen: int | None = None,
) -> jax.Array:
    """Differentiable flash attention.

    Args:
      q: ``[b, tq, hq, d]``; k, v: ``[b, tk, hkv, d]``, same dtype, ``hq % hkv == 0``.
      q_segment_ids, kv_segment_ids: int ``[b, tq]`` / ``[b, tk]``; 0 = padding; None = all ones.
      q_positions, kv_positions: int ``[b, tq]`` / ``[b, tk]`` for the causal test; None = ``arange``.
      causal: mask keys whose position exceeds the query's.
      scale: logit scale, default ``d ** -0.5``.
      block_q, block_k: tile lengths (defaults per backend in ``common.DEFAULT_BLOCKS``).
      backend: "tpu" (Mosaic) or "gpu" (Triton); default from ``jax.default_backend()``.
      interpret: run the Pallas interpreter; default True exactly on CPU.
      max_seqlen: static bound on every segment's length, for segment ids that are contiguous runs (packed
        sequences, vision windows). The grid then spans only the blocks one segment can reach (a 64-patch
        window over 8k patches: 3 key blocks per query block instead of 32), on TPU and in the cost estimate.
        Checked when the ids are concrete; a wrong bound under jit silently drops keys.

    Returns:
      ``[b, tq, hq, d]`` in q's dtype.
    """
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    common.check_qkv(q, k, v)
    backend = common.kernel_backend(backend)
    bq, bk, tqp, tkp, dp = plan(tq, tk, d, backend=backend, block_q=block_q, block_k=block_k)
    ones = lambda t: jnp.ones((b, t), jnp.int32)
    q_seg = common.pad_ids(ones(tq) if q_segment_ids is None else q_segment_ids, tqp)
    kv_seg = common.pad_ids(ones(tk) if kv_segment_ids is None else kv_segment_ids, tkp)
    q_pos = kv_pos = None
    if causal:
        q_pos = common.pad_ids(common.default_positions(b, tq) if q_positions is None else q_positions, tqp)
        kv_pos = common.pad_ids(
            common.default_positions(b, tk) if kv_positions is None else kv_positions, tkp
        )
    ranges = common.block_ranges(q_seg, kv_seg, q_pos, kv_pos, causal=causal, block_q=bq, block_k=bk)
    kv_steps, q_steps = tkp // bk, tqp // bq
    if max_seqlen is not None:
        common.check_max_seqlen(max_seqlen, q_seg, kv_seg)
        kv_steps = min(kv_steps, common.max_blocks_reached(bq, bk, max_seqlen))
        q_steps = min(q_steps, common.max_blocks_reached(bk, bq, max_seqlen))
    geo = Geometry(
        backend=backend,
        interpret=common.use_interpret(interpret),
        causal=causal,
        scale=float(d**-0.5 if scale is None else scale),
        block_q=bq,
        block_k=bk,
        groups=hq // hkv,
        kv_steps=kv_steps,
        q_steps=q_steps,
    )
    out = attention_core(
        geo,
        common.to_heads(q, tqp, dp),
        common.to_heads(k, tkp, dp),
        common.to_heads(v, tkp, dp),
        (q_seg, kv_seg, q_pos, kv_pos, *ranges),
    )
    return common.from_heads(out, tq, d)


# ----------------------------------------------------------------------------------------------------------
# custom_vjp core on the padded head-major layout. ``meta`` holds int arrays only (no cotangents):
# (q_seg [b, tqp], kv_seg [b, tkp], q_pos | None, kv_pos | None, lo, hi [b, nq], qlo, qhi [b, nk]).


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention_core(geo: Geometry, q, k, v, meta):
    return _forward(geo, q, k, v, meta)[0]


def _forward(geo, q, k, v, meta):
    if geo.backend == "gpu":
        from r1ov_kernels import flash_attention_gpu

        return flash_attention_gpu.forward(geo, q, k, v, meta)
    return _tpu_forward(geo, q, k, v, meta)


def _core_fwd(geo, q, k, v, meta):
    out, lse = _forward(geo, q, k, v, meta)
    return out, (q, k, v, meta, out, lse)


def _core_bwd(geo, res, do):
    q, k, v, meta, out, lse = res
    # delta_i = sum_d dO_i * O_i: the softmax-Jacobian term of FlashAttention-2, cheap enough for XLA.
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    if geo.backend == "gpu":
        from r1ov_kernels import flash_attention_gpu

        dq, dk, dv = flash_attention_gpu.backward(geo, q, k, v, meta, do, lse, delta)
    else:
        dq, dk, dv = _tpu_backward(geo, q, k, v, meta, do, lse, delta)
    return dq, dk, dv, None


attention_core.defvjp(_core_fwd, _core_bwd)


# ----------------------------------------------------------------------------------------------------------
# TPU flavour. Per-token side data is lane- or sublane-replicated so that every block obeys the (8, 128)
# tiling: query-side ids / logsumexp as ``[.., t, 128]`` columns, key-side ids as ``[b, 8, t]`` rows.


def _col(x):
    return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _row(x):
    return jnp.broadcast_to(x[:, None, :], (x.shape[0], SUBLANES, x.shape[1]))


def _clamped(lo_ref, hi_ref, idx, j):
    """Block index of step ``j`` in range ``[lo, hi)``; past the end it repeats the last block (no DMA)."""
    return jnp.minimum(lo_ref[idx] + j, jnp.maximum(hi_ref[idx] - 1, 0))


def _tpu_mask(geo, side, n):
    qs_ref, ks_ref, qp_ref, kp_ref = side
    q_pos = lanes(qp_ref[...], n) if geo.causal else None
    k_pos = kp_ref[:1, :] if geo.causal else None
    return visible(lanes(qs_ref[...], n), ks_ref[:1, :], q_pos, k_pos, geo.causal)


def _split_side(geo, refs):
    """Unpack (q_seg, kv_seg[, q_pos, kv_pos]) refs from the front of ``refs``."""
    if geo.causal:
        return tuple(refs[:4]), refs[4:]
    return (refs[0], refs[1], None, None), refs[2:]


def _side_specs(geo, q_map, k_map):
    bq, bk = geo.block_q, geo.block_k
    specs = [pl.BlockSpec((None, bq, LANES), q_map), pl.BlockSpec((None, SUBLANES, bk), k_map)]
    return specs * (2 if geo.causal else 1)


def _side_args(geo, meta):
    q_seg, kv_seg, q_pos, kv_pos = meta[:4]
    args = [_col(q_seg), _row(kv_seg)]
    return args + ([_col(q_pos), _row(kv_pos)] if geo.causal else [])


def _logits(geo, q, k, mask):
    return jnp.where(mask, dot(q, k, trans_b=True) * geo.scale, MASK_VALUE)


def _tpu_fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, geo: Geometry, nq: int):
    side, (o_ref, lse_ref, m_sc, l_sc, acc_sc) = _split_side(geo, refs)
    bi, qi, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    bk, d = k_ref.shape[0], acc_sc.shape[1]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
        l_sc[...] = jnp.zeros_like(l_sc)
        acc_sc[...] = jnp.zeros_like(acc_sc)

    @pl.when(lo_ref[bi * nq + qi] + j < hi_ref[bi * nq + qi])
    def _step():
        mask = _tpu_mask(geo, side, bk)
        s = _logits(geo, q_ref[...], k_ref[...], mask)  # [bq, bk] fp32
        m_prev = m_sc[...]  # [bq, 128], lane-replicated
        m_next = jnp.maximum(m_prev, s.max(axis=-1)[:, None])
        # where(): a row masked so far has m == MASK_VALUE and exp(0) = 1 would leak into l.
        p = jnp.where(mask, jnp.exp(s - lanes(m_next, bk)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(p.sum(axis=-1), m_prev.shape, (0,))
        m_sc[...] = m_next
        acc_sc[...] = lanes(alpha, d) * acc_sc[...] + dot(p.astype(v_ref.dtype), v_ref[...])

    @pl.when(j == geo.kv_steps - 1)
    def _final():
        l = l_sc[...]
        # No visible key -> l == 0 -> output row of zeros, logsumexp 0 (bwd masks the row anyway).
        inv = jnp.where(l > 0, 1.0 / l, 0.0)
        o_ref[...] = (acc_sc[...] * lanes(inv, d)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(l > 0, m_sc[...] + jnp.log(l), 0.0)


def _tpu_forward(geo, q, k, v, meta):
    b, hq, tqp, d = q.shape
    bq, bk, g = geo.block_q, geo.block_k, geo.groups
    nq = tqp // bq
    lo, hi = meta[4].reshape(-1), meta[5].reshape(-1)

    def q_map(bi, h, qi, j, lo, hi):
        return bi, h, qi, 0

    def kv_map(bi, h, qi, j, lo, hi):
        return bi, h // g, _clamped(lo, hi, bi * nq + qi, j), 0

    blk = (None, None, bq, d)
    in_specs = [
        pl.BlockSpec(blk, q_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        *_side_specs(
            geo,
            lambda bi, h, qi, j, lo, hi: (bi, qi, 0),
            lambda bi, h, qi, j, lo, hi: (bi, 0, _clamped(lo, hi, bi * nq + qi, j)),
        ),
    ]
    out, lse = pl.pallas_call(
        functools.partial(_tpu_fwd_kernel, geo=geo, nq=nq),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, hq, nq, geo.kv_steps),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec(blk, q_map), pl.BlockSpec((None, None, bq, LANES), q_map)],
            scratch_shapes=[
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, d), jnp.float32),
            ],
        ),
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, hq, tqp, LANES), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3 + ("arbitrary",)),
        interpret=geo.interpret,
        name="flash_fwd_tpu",
        cost_estimate=common.attention_cost(
            b, hq, tqp, geo.kv_steps * bk, d, causal=geo.causal, matmuls=2, operands=(q, k, v, q)
        ),
    )(lo, hi, q, k, v, *_side_args(geo, meta))
    return out, lse


def _tpu_probs(geo, side, q, k, v, do, lse, delta):
    """Recomputed probabilities p and logit gradients ds for one ``[bq, bk]`` tile."""
    bk = k.shape[0]
    s = _logits(geo, q, k, _tpu_mask(geo, side, bk))
    p = jnp.exp(s - lanes(lse, bk))  # masked: exp(MASK_VALUE - lse) == 0
    dp = dot(do, v, trans_b=True)
    return p, p * (dp - lanes(delta, bk))


def _tpu_dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, geo, nq):
    side, (dq_ref, dq_sc) = _split_side(geo, refs)
    bi, qi, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros_like(dq_sc)

    @pl.when(lo_ref[bi * nq + qi] + j < hi_ref[bi * nq + qi])
    def _step():
        k = k_ref[...]
        _, ds = _tpu_probs(geo, side, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], dl_ref[...])
        dq_sc[...] += dot(ds.astype(k.dtype), k)

    @pl.when(j == geo.kv_steps - 1)
    def _final():
        dq_ref[...] = (dq_sc[...] * geo.scale).astype(dq_ref.dtype)


def _tpu_dkv_kernel(qlo_ref, qhi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, geo, nk):
    side, (dk_ref, dv_ref, dk_sc, dv_sc) = _split_side(geo, refs)
    bi, ki, gi, j = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when((gi == 0) & (j == 0))
    def _init():
        dk_sc[...] = jnp.zeros_like(dk_sc)
        dv_sc[...] = jnp.zeros_like(dv_sc)

    @pl.when(qlo_ref[bi * nk + ki] + j < qhi_ref[bi * nk + ki])
    def _step():
        q, do = q_ref[...], do_ref[...]
        p, ds = _tpu_probs(geo, side, q, k_ref[...], v_ref[...], do, lse_ref[...], dl_ref[...])
        # Explicit 2-D transposes (XLU) then plain matmuls, the pattern Mosaic lowers everywhere.
        dv_sc[...] += dot(p.T.astype(do.dtype), do)
        dk_sc[...] += dot(ds.T.astype(q.dtype), q)

    @pl.when((gi == geo.groups - 1) & (j == geo.q_steps - 1))
    def _final():
        dk_ref[...] = (dk_sc[...] * geo.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _tpu_backward(geo, q, k, v, meta, do, lse, delta):
    b, hq, tqp, d = q.shape
    hkv, tkp = k.shape[1], k.shape[2]
    bq, bk, g = geo.block_q, geo.block_k, geo.groups
    nq, nk = tqp // bq, tkp // bk
    lo, hi, qlo, qhi = (x.reshape(-1) for x in meta[4:8])
    delta = _col(delta)
    sides = _side_args(geo, meta)
    sem = pltpu.CompilerParams

    # dq: same iteration space as the forward pass.
    def q_map(bi, h, qi, j, lo, hi):
        return bi, h, qi, 0

    def kv_map(bi, h, qi, j, lo, hi):
        return bi, h // g, _clamped(lo, hi, bi * nq + qi, j), 0

    qblk, kblk, cblk = (None, None, bq, d), (None, None, bk, d), (None, None, bq, LANES)
    dq = pl.pallas_call(
        functools.partial(_tpu_dq_kernel, geo=geo, nq=nq),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, hq, nq, geo.kv_steps),
            in_specs=[
                pl.BlockSpec(qblk, q_map),
                pl.BlockSpec(kblk, kv_map),
                pl.BlockSpec(kblk, kv_map),
                pl.BlockSpec(qblk, q_map),
                pl.BlockSpec(cblk, q_map),
                pl.BlockSpec(cblk, q_map),
                *_side_specs(
                    geo,
                    lambda bi, h, qi, j, lo, hi: (bi, qi, 0),
                    lambda bi, h, qi, j, lo, hi: (bi, 0, _clamped(lo, hi, bi * nq + qi, j)),
                ),
            ],
            out_specs=pl.BlockSpec(qblk, q_map),
            scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=sem(dimension_semantics=("parallel",) * 3 + ("arbitrary",)),
        interpret=geo.interpret,
        name="flash_dq_tpu",
        cost_estimate=common.attention_cost(  # logits, dp = do v^T, dq = ds k
            b, hq, tqp, geo.kv_steps * bk, d, causal=geo.causal, matmuls=3, operands=(q, k, v, do, q)
        ),
    )(lo, hi, q, k, v, do, lse, delta, *sides)

    # dk, dv: one program per key block, reducing over the kv group's query heads and their query blocks.
    def qg_map(bi, h, ki, gi, j, qlo, qhi):
        return bi, h * g + gi, _clamped(qlo, qhi, bi * nk + ki, j), 0

    def k_map(bi, h, ki, gi, j, qlo, qhi):
        return bi, h, ki, 0

    dk, dv = pl.pallas_call(
        functools.partial(_tpu_dkv_kernel, geo=geo, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, hkv, nk, g, geo.q_steps),
            in_specs=[
                pl.BlockSpec(qblk, qg_map),
                pl.BlockSpec(kblk, k_map),
                pl.BlockSpec(kblk, k_map),
                pl.BlockSpec(qblk, qg_map),
                pl.BlockSpec(cblk, qg_map),
                pl.BlockSpec(cblk, qg_map),
                *_side_specs(
                    geo,
                    lambda bi, h, ki, gi, j, qlo, qhi: (bi, _clamped(qlo, qhi, bi * nk + ki, j), 0),
                    lambda bi, h, ki, gi, j, qlo, qhi: (bi, 0, ki),
                ),
            ],
            out_specs=[pl.BlockSpec(kblk, k_map), pl.BlockSpec(kblk, k_map)],
            scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=sem(dimension_semantics=("parallel",) * 3 + ("arbitrary",) * 2),
        interpret=geo.interpret,
        name="flash_dkv_tpu",
        cost_estimate=common.attention_cost(  # logits, dp, dv = p^T do, dk = ds^T q
            b, hq, geo.q_steps * bq, tkp, d, causal=geo.causal, matmuls=4, operands=(q, k, v, do, k, v)
        ),
    )(qlo, qhi, q, k, v, do, lse, delta, *sides)
    return dq, dk, dv
