"""varlen_attention == reference (outputs, gradients); cu_seqlens helpers; block-range bounds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels.reference import reference_varlen_attention
from r1ov_kernels.varlen_attention import (
    cu_seqlens_from_segment_ids,
    segment_ids_from_cu_seqlens,
    varlen_attention,
    varlen_plan,
)

from tests.kernels.helpers import BF16_TOL, FP32_TOL, assert_close, check_against_reference, normal


def _random_cu(rng, t, max_len, n_max):
    """``[n_max + 1]`` offsets (fixed size: one compilation) with empty sequences and trailing padding."""
    lens = []
    while sum(lens) < t:
        lens.append(0 if rng.random() < 0.1 else int(rng.integers(1, max_len + 1)))
    lens[-1] -= sum(lens) - t
    if rng.random() < 0.5:
        lens[-1] = max(0, lens[-1] - int(rng.integers(0, 5)))
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return np.pad(cu, (0, n_max + 1 - len(cu)), mode="edge")


def test_segment_ids_roundtrip():
    rng = np.random.default_rng(0)
    t = 50
    seg_fn = jax.jit(segment_ids_from_cu_seqlens, static_argnums=1)
    cu_fn = jax.jit(cu_seqlens_from_segment_ids, static_argnums=1)
    for _ in range(20):
        cu = _random_cu(rng, t, 9, n_max=60)
        expect = np.zeros(t, np.int32)
        for i in range(len(cu) - 1):
            expect[cu[i] : cu[i + 1]] = i + 1
        seg = np.asarray(seg_fn(jnp.asarray(cu), t))
        np.testing.assert_array_equal(seg, expect)
        np.testing.assert_array_equal(np.asarray(cu_fn(seg, len(cu) - 1)), cu)


@pytest.mark.parametrize("bq,bk", [(16, 16), (8, 32), (32, 8)])
def test_plan_covers_every_visible_tile_within_step_bound(bq, bk):
    rng = np.random.default_rng(bq * 100 + bk)
    t, tp = 120, 128
    for max_len in (1, 7, 16, 23, 40):
        cu = _random_cu(rng, t, max_len, n_max=2 * t)
        seg, (lo, hi, qlo, qhi), (kv_steps, q_steps) = varlen_plan(jnp.asarray(cu), t, tp, bq, bk, max_len)
        seg = np.pad(np.asarray(seg), (0, tp - t))
        dense = (seg[:, None] == seg[None, :]) & (seg[:, None] != 0)
        tiles = dense.reshape(tp // bq, bq, tp // bk, bk).any(axis=(1, 3))
        lo, hi, qlo, qhi = (np.asarray(x)[0] for x in (lo, hi, qlo, qhi))
        for qb in range(tp // bq):
            hit = np.flatnonzero(tiles[qb])
            assert hi[qb] - lo[qb] <= kv_steps
            if hit.size:  # contiguous sequences: the range is exactly the tiles that matter
                assert (lo[qb], hi[qb]) == (hit[0], hit[-1] + 1)
        for kb in range(tp // bk):
            hit = np.flatnonzero(tiles[:, kb])
            assert qhi[kb] - qlo[kb] <= q_steps
            if hit.size:
                assert (qlo[kb], qhi[kb]) == (hit[0], hit[-1] + 1)


# backend, t, hq, hkv, d, cu_seqlens, max_seqlen, dtype
CASES = [
    ("tpu", 70, 4, 2, 16, [0, 5, 5, 21, 40, 64], 24, jnp.float32),  # empty sequence + 6 padding tokens
    ("gpu", 70, 4, 2, 16, [0, 5, 5, 21, 40, 64], None, jnp.float32),
    ("tpu", 64, 2, 1, 80, [0, 16, 32, 48, 64], 16, jnp.float32),  # vision-like windows, head dim 80
    ("gpu", 48, 2, 2, 16, [0, 30, 48], 30, jnp.bfloat16),
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}-t{c[1]}-d{c[4]}-L{c[6]}-{jnp.dtype(c[7]).name}"
)
def test_matches_reference(case):
    backend, t, hq, hkv, d, cu, max_seqlen, dtype = case
    rng = np.random.default_rng(t + d)
    q, k, v = normal(rng, (t, hq, d), dtype), normal(rng, (t, hkv, d), dtype), normal(rng, (t, hkv, d), dtype)
    cu = jnp.asarray(cu, jnp.int32)
    kernel = lambda q, k, v: varlen_attention(
        q, k, v, cu, max_seqlen=max_seqlen, block_q=16, block_k=16, backend=backend
    )
    reference = lambda q, k, v: reference_varlen_attention(q, k, v, cu)
    tol = FP32_TOL if dtype == jnp.float32 else BF16_TOL
    out, (dq, _, _) = check_against_reference(kernel, reference, q, k, v, tol, rng)
    assert not np.any(np.asarray(out[int(cu[-1]) :])) and not np.any(np.asarray(dq[int(cu[-1]) :]))


def test_max_seqlen_shrinks_grid_and_padding_is_never_read():
    """64-token windows over 256 tokens: 3 kv steps per q block instead of 16; NaN padding never read."""
    t, valid = 256, 192
    rng = np.random.default_rng(5)
    q, k, v = (normal(rng, (t, 2, 8)) for _ in range(3))
    cu = jnp.arange(0, valid + 1, 64, dtype=jnp.int32)
    _, _, (kv_steps, q_steps) = varlen_plan(cu, t, t, 16, 16, 64)
    assert (kv_steps, q_steps) == (9, 9) and t // 16 == 16
    _, _, (kv_steps, _) = varlen_plan(cu, t, t, 64, 64, 64)
    assert kv_steps == 3  # the window's own block and its two neighbours, at worst
    pad = jnp.arange(t)[:, None, None] >= valid
    k_nan, v_nan = jnp.where(pad, jnp.nan, k), jnp.where(pad, jnp.nan, v)
    out = jax.jit(lambda q, k, v: varlen_attention(q, k, v, cu, max_seqlen=64, block_q=64, block_k=64))(
        q, k_nan, v_nan
    )
    assert_close(out, reference_varlen_attention(q, k, v, cu), FP32_TOL)


def test_max_seqlen_too_small_is_rejected():
    q = jnp.zeros((32, 1, 8))
    with pytest.raises(ValueError, match="length 20"):
        varlen_attention(q, q, q, jnp.array([0, 20, 32]), max_seqlen=16)
