"""Triton (Pallas GPU) flavour of ``flash_attention``: same padded layout, ranges and math as the TPU one.

A Triton program owns a whole output tile and loops over the blocks it needs with ``lax.fori_loop`` whose
bounds come from the per-block ranges (dynamic loop bounds, so skipped blocks cost nothing):

* forward / dq: grid ``(nq, b, hq)``, loop over key blocks ``[lo, hi)`` of this query block;
* dk / dv: grid ``(nk, b, hkv)``, loop over (query head of the kv group) x (query blocks ``[qlo, qhi)``),
  accumulating in registers, so GQA needs neither atomics nor a group reduction afterwards.

Triton wants power-of-two tiles (``common.pick_block`` / ``padded_head_dim`` ensure it) and >= 16 for
``tl.dot``. Entry points are ``forward`` and ``backward``, called by ``flash_attention.attention_core``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from r1ov_kernels.common import MASK_VALUE, Geometry, dot, visible


def _params(d: int, stages: int = 2):
    return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=stages)


def _ids(ref, sl):
    return None if ref is None else ref[sl]


def _mask(geo, side, q_sl, k_sl):
    """Tile mask from 1-D id refs; ``q_sl`` / ``k_sl`` select this tile's rows / columns."""
    qs_ref, ks_ref, qp_ref, kp_ref = side
    q_pos, k_pos = _ids(qp_ref, q_sl), _ids(kp_ref, k_sl)
    return visible(
        qs_ref[q_sl][:, None],
        ks_ref[k_sl][None, :],
        None if q_pos is None else q_pos[:, None],
        None if k_pos is None else k_pos[None, :],
        geo.causal,
    )


def _split_side(geo, refs):
    if geo.causal:
        return tuple(refs[:4]), refs[4:]
    return (refs[0], refs[1], None, None), refs[2:]


def _side_specs(geo, tq, tk, q_map, k_map):
    specs = [pl.BlockSpec((None, tq), q_map), pl.BlockSpec((None, tk), k_map)]
    return specs * (2 if geo.causal else 1)


def _side_args(geo, meta):
    return list(meta[:4]) if geo.causal else list(meta[:2])


def _fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, geo: Geometry):
    side, (o_ref, lse_ref) = _split_side(geo, refs)
    bq, d = q_ref.shape
    bk = geo.block_k
    q = q_ref[...]
    all_q = slice(None)

    def body(kb, carry):
        acc, m, l = carry
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        mask = _mask(geo, side, all_q, sl)
        s = jnp.where(mask, dot(q, k_ref[sl, :], trans_b=True) * geo.scale, MASK_VALUE)
        m_next = jnp.maximum(m, s.max(axis=-1))
        # where(): rows masked so far sit at m == MASK_VALUE where exp(s - m) would be 1.
        p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m - m_next)
        v = v_ref[sl, :]
        return alpha[:, None] * acc + dot(p.astype(v.dtype), v), m_next, alpha * l + p.sum(axis=-1)

    init = (
        jnp.zeros((bq, d), jnp.float32),
        jnp.full((bq,), MASK_VALUE, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, l = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    # Rows without a visible key: zeros out, logsumexp 0 (the backward pass masks them anyway).
    o_ref[...] = (acc * jnp.where(l > 0, 1.0 / l, 0.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(l > 0, m + jnp.log(l), 0.0)


def forward(geo: Geometry, q, k, v, meta):
    b, hq, tqp, d = q.shape
    tkp = k.shape[2]
    bq, g = geo.block_q, geo.groups
    nq = tqp // bq
    q_map = lambda qi, bi, h: (bi, h, qi, 0)
    kv_map = lambda qi, bi, h: (bi, h // g, 0, 0)
    rng_map = lambda qi, bi, h: (bi, qi)
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, geo=geo),
        grid=(nq, b, hq),
        in_specs=[
            pl.BlockSpec((None, None), rng_map),
            pl.BlockSpec((None, None), rng_map),
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, tkp, d), kv_map),
            pl.BlockSpec((None, None, tkp, d), kv_map),
            *_side_specs(geo, bq, tkp, lambda qi, bi, h: (bi, qi), lambda qi, bi, h: (bi, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bq), lambda qi, bi, h: (bi, h, qi)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, hq, tqp), jnp.float32),
        ],
        compiler_params=_params(d, stages=3),
        interpret=geo.interpret,
        name="flash_fwd_triton",
    )(meta[4], meta[5], q, k, v, *_side_args(geo, meta))
    return out, lse


def _tile_grads(geo, mask, q, k, v, do, lse, delta):
    """Recomputed probabilities p and logit gradients ds of one ``[bq, bk]`` tile."""
    s = jnp.where(mask, dot(q, k, trans_b=True) * geo.scale, MASK_VALUE)
    p = jnp.exp(s - lse[:, None])  # masked entries: exp(MASK_VALUE - lse) == 0
    return p, p * (dot(do, v, trans_b=True) - delta[:, None])


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, geo: Geometry):
    side, (dq_ref,) = _split_side(geo, refs)
    bk = geo.block_k
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], dl_ref[...]

    def body(kb, dq):
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k = k_ref[sl, :]
        _, ds = _tile_grads(geo, _mask(geo, side, slice(None), sl), q, k, v_ref[sl, :], do, lse, delta)
        return dq + dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(lo_ref[()], hi_ref[()], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * geo.scale).astype(dq_ref.dtype)


def _dkv_kernel(qlo_ref, qhi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, geo: Geometry):
    side, (dk_ref, dv_ref) = _split_side(geo, refs)
    bq = geo.block_q
    k, v = k_ref[...], v_ref[...]
    qlo = qlo_ref[()]
    n = qhi_ref[()] - qlo

    def body(t, carry):
        dk, dv = carry
        # One flat loop over (group head gi, query block qb): a single dynamic trip count for Triton.
        gi, qb = t // n, qlo + t % n
        sl = pl.ds(pl.multiple_of(qb * bq, bq), bq)
        q, do = q_ref[gi, sl, :], do_ref[gi, sl, :]
        p, ds = _tile_grads(
            geo, _mask(geo, side, sl, slice(None)), q, k, v, do, lse_ref[gi, sl], dl_ref[gi, sl]
        )
        return dk + dot(ds.astype(q.dtype), q, trans_a=True), dv + dot(p.astype(do.dtype), do, trans_a=True)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, geo.groups * n, body, (zeros, zeros))
    dk_ref[...] = (dk * geo.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(geo: Geometry, q, k, v, meta, do, lse, delta):
    b, hq, tqp, d = q.shape
    hkv, tkp = k.shape[1], k.shape[2]
    bq, bk, g = geo.block_q, geo.block_k, geo.groups
    nq, nk = tqp // bq, tkp // bk
    sides = _side_args(geo, meta)

    q_map = lambda qi, bi, h: (bi, h, qi, 0)
    row_map = lambda qi, bi, h: (bi, h, qi)
    kv_map = lambda qi, bi, h: (bi, h // g, 0, 0)
    rng_map = lambda qi, bi, h: (bi, qi)
    qblk = (None, None, bq, d)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, geo=geo),
        grid=(nq, b, hq),
        in_specs=[
            pl.BlockSpec((None, None), rng_map),
            pl.BlockSpec((None, None), rng_map),
            pl.BlockSpec(qblk, q_map),
            pl.BlockSpec((None, None, tkp, d), kv_map),
            pl.BlockSpec((None, None, tkp, d), kv_map),
            pl.BlockSpec(qblk, q_map),
            pl.BlockSpec((None, None, bq), row_map),
            pl.BlockSpec((None, None, bq), row_map),
            *_side_specs(geo, bq, tkp, lambda qi, bi, h: (bi, qi), lambda qi, bi, h: (bi, 0)),
        ],
        out_specs=pl.BlockSpec(qblk, q_map),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(d),
        interpret=geo.interpret,
        name="flash_dq_triton",
    )(meta[4], meta[5], q, k, v, do, lse, delta, *sides)

    # The kv head's g query heads are one contiguous block of the head axis: block g, index h.
    grp_map = lambda ki, bi, h: (bi, h, 0, 0)
    k_map = lambda ki, bi, h: (bi, h, ki, 0)
    gblk = (None, g, tqp, d)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, geo=geo),
        grid=(nk, b, hkv),
        in_specs=[
            pl.BlockSpec((None, None), lambda ki, bi, h: (bi, ki)),
            pl.BlockSpec((None, None), lambda ki, bi, h: (bi, ki)),
            pl.BlockSpec(gblk, grp_map),
            pl.BlockSpec((None, None, bk, d), k_map),
            pl.BlockSpec((None, None, bk, d), k_map),
            pl.BlockSpec(gblk, grp_map),
            pl.BlockSpec((None, g, tqp), lambda ki, bi, h: (bi, h, 0)),
            pl.BlockSpec((None, g, tqp), lambda ki, bi, h: (bi, h, 0)),
            *_side_specs(geo, tqp, bk, lambda ki, bi, h: (bi, 0), lambda ki, bi, h: (bi, ki)),
        ],
        out_specs=[pl.BlockSpec((None, None, bk, d), k_map), pl.BlockSpec((None, None, bk, d), k_map)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_params(d),
        interpret=geo.interpret,
        name="flash_dkv_triton",
    )(meta[6], meta[7], q, k, v, do, lse, delta, *sides)
    return dq, dk, dv
