"""flash_attention (both flavours, interpret mode) == reference: outputs and gradients."""

from __future__ import annotations

import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels import common
from r1ov_kernels.flash_attention import flash_attention
from r1ov_kernels.reference import reference_flash_attention

from r1ov_jax.layers.attention import make_mask
from tests.kernels.helpers import (
    BF16_TOL,
    FP32_TOL,
    assert_close,
    check_against_reference,
    qkv,
    segments,
    value_and_grads,
)


def _positions(kind, b, tq, tk, q_seg, kv_seg):
    """(q_positions, kv_positions) for the causal test, or (None, None) for the arange default."""
    if kind is None:
        return None, None
    if kind == "offset":  # chunked prefill: the tq queries are the last tq of tk keys
        kv = np.broadcast_to(np.arange(tk), (b, tk))
        return jnp.asarray(kv[:, tk - tq :], jnp.int32), jnp.asarray(kv, jnp.int32)
    if kind == "restart":  # packed sequences, each numbered from 0 (not monotone along the row)

        def restart(seg):
            seg = np.asarray(seg)
            pos = np.zeros_like(seg)
            for i in range(seg.shape[0]):
                for t in range(1, seg.shape[1]):
                    pos[i, t] = pos[i, t - 1] + 1 if seg[i, t] == seg[i, t - 1] else 0
            return jnp.asarray(pos, jnp.int32)

        return restart(q_seg), restart(kv_seg)
    raise ValueError(kind)


# backend, b, tq, tk, hq, hkv, d, causal, segment layout, positions, (block_q, block_k)
CASES = [
    ("tpu", 2, 37, 37, 2, 2, 8, False, "packed", None, (16, 16)),  # MHA, ragged, packing + padded row
    ("gpu", 2, 37, 37, 2, 2, 8, True, "packed", "restart", (16, 16)),  # non-monotone positions
    ("tpu", 2, 45, 45, 4, 2, 16, True, "left_pad", None, (16, 32)),  # GQA 2, bq != bk
    ("gpu", 1, 40, 40, 4, 1, 16, False, "left_pad", None, (16, 32)),  # GQA 4
    ("tpu", 1, 20, 52, 7, 1, 8, True, "none", "offset", (16, 16)),  # GQA 7 (MQA), positions offset
    ("gpu", 1, 20, 52, 14, 2, 8, True, "none", "offset", (16, 16)),  # GQA 7 with two kv heads
    ("tpu", 2, 24, 24, 8, 2, 8, True, "packed", "restart", (8, 16)),  # GQA 4, packed + causal
    ("gpu", 1, 9, 33, 2, 1, 8, False, "packed", None, (16, 16)),  # tq != tk, single q block
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:9])))
def test_fp32_matches_reference(case):
    backend, b, tq, tk, hq, hkv, d, causal, seg_kind, pos_kind, (bq, bk) = case
    rng = np.random.default_rng(zlib.crc32(repr(case[:10]).encode()))  # stable across processes
    q, k, v = qkv(rng, b, tq, tk, hq, hkv, d)
    if tq == tk:
        q_seg = kv_seg = segments(rng, b, tq, seg_kind)
    else:
        q_seg, kv_seg = segments(rng, b, tq, seg_kind), segments(rng, b, tk, seg_kind)
    q_pos, kv_pos = _positions(pos_kind, b, tq, tk, q_seg, kv_seg)
    ids = (q_seg, kv_seg, q_pos, kv_pos)
    kernel = lambda q, k, v: flash_attention(
        q, k, v, *ids, causal=causal, block_q=bq, block_k=bk, backend=backend
    )
    reference = lambda q, k, v: reference_flash_attention(q, k, v, *ids, causal=causal)
    out, grads = check_against_reference(kernel, reference, q, k, v, FP32_TOL, rng)
    if q_seg is not None and seg_kind == "packed" and b > 1:  # the fully padded row
        assert not np.any(np.asarray(out[-1])) and not np.any(np.asarray(grads[0][-1]))


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("d", [64, 80, 128])
def test_head_dims(backend, d):
    rng = np.random.default_rng(d)
    q, k, v = qkv(rng, 1, 24, 24, 2, 1, d)
    seg = segments(rng, 1, 24, "left_pad")
    kernel = lambda q, k, v: flash_attention(
        q, k, v, seg, seg, causal=True, block_q=16, block_k=16, backend=backend
    )
    reference = lambda q, k, v: reference_flash_attention(q, k, v, seg, seg, causal=True)
    check_against_reference(kernel, reference, q, k, v, FP32_TOL, rng)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_bf16(backend):
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, 2, 40, 40, 4, 2, 16, jnp.bfloat16)
    seg = segments(rng, 2, 40, "packed")
    kernel = lambda q, k, v: flash_attention(
        q, k, v, seg, seg, causal=True, block_q=16, block_k=16, backend=backend
    )
    reference = lambda q, k, v: reference_flash_attention(q, k, v, seg, seg, causal=True)
    check_against_reference(kernel, reference, q, k, v, BF16_TOL, rng)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_invisible_blocks_are_never_read(backend):
    """NaN keys/values in blocks no query can see must not reach outputs or gradients."""
    rng = np.random.default_rng(3)
    tq, tk = 16, 64
    q, k, v = qkv(rng, 1, tq, tk, 2, 1, 8)
    q_pos = jnp.arange(tq, dtype=jnp.int32)[None]  # causal: key blocks 1..3 lie in every query's future
    poison = jnp.arange(tk)[None, :, None, None] >= 16
    k_nan, v_nan = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)
    kernel = lambda q, k, v: flash_attention(
        q, k, v, q_positions=q_pos, causal=True, block_q=16, block_k=16, backend=backend
    )
    reference = lambda q, k, v: reference_flash_attention(q, k, v, q_positions=q_pos, causal=True)
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    out, (dq, dk, dv) = value_and_grads(kernel, q, k_nan, v_nan, cot)
    ref_out, (rdq, rdk, rdv) = value_and_grads(reference, q, k, v, cot)
    assert_close(out, ref_out, FP32_TOL, "output")
    assert_close(dq, rdq, FP32_TOL, "dq")
    assert_close(dk, rdk, FP32_TOL, "dk")
    assert_close(dv, rdv, FP32_TOL, "dv")


def _windows(rng, b, t, longest, pad):
    """Contiguous segments of 1..longest tokens, then ``pad`` padding tokens (the vision window layout)."""
    rows = []
    for _ in range(b):
        row, sid = [], 1
        while len(row) < t - pad:
            row += [sid] * int(rng.integers(1, longest + 1))
            sid += 1
        rows.append(row[: t - pad] + [0] * pad)
    return jnp.asarray(np.array(rows), jnp.int32)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_max_seqlen_shrinks_the_grid_with_equal_results(backend):
    """A bound on the segment length (vision windows) leaves outputs and gradients those of the reference,
    while the TPU grid spans max_blocks_reached key blocks, not all of them."""
    rng = np.random.default_rng(7)
    b, t, longest = 2, 100, 12
    q, k, v = qkv(rng, b, t, t, 4, 2, 8)
    seg = _windows(rng, b, t, longest, pad=9)
    assert common.max_blocks_reached(16, 16, longest) == 3 < t // 16
    kernel = lambda q, k, v: flash_attention(
        q, k, v, seg, seg, block_q=16, block_k=16, backend=backend, max_seqlen=longest
    )
    reference = lambda q, k, v: reference_flash_attention(q, k, v, seg, seg)
    check_against_reference(kernel, reference, q, k, v, FP32_TOL, rng)


def test_max_seqlen_smaller_than_a_segment_is_rejected():
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, 1, 32, 32, 2, 2, 8)
    seg = jnp.asarray([[1] * 20 + [2] * 10 + [0] * 2], jnp.int32)
    with pytest.raises(ValueError, match="segment of 20 tokens"):
        flash_attention(q, k, v, seg, seg, max_seqlen=16)
    with pytest.raises(ValueError, match=">= 1"):
        flash_attention(q, k, v, seg, seg, max_seqlen=0)
    flash_attention(q, k, v, seg, seg, max_seqlen=20)  # padding runs do not count


@pytest.mark.parametrize("kind", ["packed", "left_pad"])
def test_block_ranges_cover_every_visible_tile(kind):
    """Ranges contain every tile with a visible entry; for monotone ids and positions they are tight."""
    rng = np.random.default_rng(11)
    b, t, bq, bk = 3, 96, 8, 16
    seg = segments(rng, b, t, kind)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    for causal in (False, True):
        lo, hi, qlo, qhi = map(
            np.asarray, common.block_ranges(seg, seg, pos, pos, causal=causal, block_q=bq, block_k=bk)
        )
        dense = np.asarray(make_mask(seg, seg, causal=causal))
        tiles = dense.reshape(b, t // bq, bq, t // bk, bk).any(axis=(2, 4))  # [b, nq, nk]
        for i in range(b):
            for qb in range(t // bq):
                hit = np.flatnonzero(tiles[i, qb])
                expect = (hit[0], hit[-1] + 1) if hit.size else (0, 0)
                assert (lo[i, qb], hi[i, qb]) == expect
            for kb in range(t // bk):
                hit = np.flatnonzero(tiles[i, :, kb])
                expect = (hit[0], hit[-1] + 1) if hit.size else (0, 0)
                assert (qlo[i, kb], qhi[i, kb]) == expect


def test_block_ranges_keep_a_key_block_starting_at_the_query_position():
    # Decode-like: the newest query (position 32) sees exactly the first key of block 2.
    seg = jnp.ones((1, 64), jnp.int32)
    lo, hi, _, _ = common.block_ranges(
        jnp.ones((1, 1), jnp.int32), seg, jnp.full((1, 1), 32, jnp.int32),
        jnp.arange(64, dtype=jnp.int32)[None], causal=True, block_q=1, block_k=16,
    )  # fmt: skip
    assert (int(lo[0, 0]), int(hi[0, 0])) == (0, 3)


def test_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 1, 8, 8, 3, 2, 8)
    with pytest.raises(ValueError, match="hq % hkv"):
        flash_attention(q, k, v)
    q, k, v = qkv(rng, 1, 8, 8, 2, 1, 8)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, k.astype(jnp.bfloat16), v)
