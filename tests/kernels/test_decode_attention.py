"""decode_attention (both flavours, in place, copied and head-major caches) == reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels.decode_attention import decode_attention
from r1ov_kernels.reference import reference_decode_attention

from tests.kernels.helpers import BF16_TOL, FP32_TOL, assert_close, check_against_reference, qkv

# backend, b, tq, hq, hkv, S, d, causal, in_place, num_splits, block_k
CASES = [
    ("tpu", 3, 1, 4, 4, 96, 16, True, False, 1, 32),  # MHA, copied (head dim not lane aligned)
    ("gpu", 3, 1, 8, 4, 96, 16, True, True, 2, 32),  # GQA 2, in place
    ("tpu", 2, 4, 8, 2, 160, 128, True, True, 2, 32),  # GQA 4, 4 speculative tokens, in place
    ("gpu", 2, 2, 7, 1, 80, 16, False, False, 3, 32),  # GQA 7, cache not a multiple of the block
    ("tpu", 2, 1, 7, 1, 64, 8, True, True, 4, 16),  # MQA in place (hkv == 1), more splits than blocks seen
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:9])))
def test_matches_reference(case):
    backend, b, tq, hq, hkv, s_len, d, causal, in_place, splits, bk = case
    rng = np.random.default_rng(s_len + d + hq)
    q, k, v = qkv(rng, b, tq, s_len, hq, hkv, d)
    # Sequence 0 has an empty cache (zero output), the last one fills it; a middle one ends one slot into a
    # block, so its newest query sits exactly on the first position of that key block.
    lengths = jnp.asarray(np.r_[0, [bk + 1] * (b - 2), s_len][:b], jnp.int32)
    q_pos = jnp.maximum(lengths[:, None] - tq + jnp.arange(tq)[None], 0).astype(jnp.int32)
    kw = {"q_positions": q_pos, "lengths": lengths, "causal": causal}
    out = decode_attention(q, k, v, **kw, block_k=bk, num_splits=splits, in_place=in_place, backend=backend)
    ref = reference_decode_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, ref, FP32_TOL)
    assert not np.any(np.asarray(out[0]))


heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [b, S, hkv, d] -> the model's [b, hkv, S, d] cache


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:8])))
def test_heads_major_cache_matches_reference(case):
    """The model's cache layout: same outputs as the [b, S, hkv, d] call, with no transposed copy."""
    backend, b, tq, hq, hkv, s_len, d, causal, _, splits, bk = case
    rng = np.random.default_rng(s_len + d + hq + 1)
    q, k, v = qkv(rng, b, tq, s_len, hq, hkv, d)
    lengths = jnp.asarray(np.r_[0, [bk + 1] * (b - 2), s_len][:b], jnp.int32)
    q_pos = jnp.maximum(lengths[:, None] - tq + jnp.arange(tq)[None], 0).astype(jnp.int32)
    kw = {"q_positions": q_pos, "lengths": lengths, "causal": causal}
    out = decode_attention(
        q, heads(k), heads(v), **kw, block_k=bk, num_splits=splits, backend=backend, kv_heads_major=True
    )
    assert_close(out, reference_decode_attention(q, k, v, **kw), FP32_TOL)
    with pytest.raises(ValueError, match="head-major"):
        decode_attention(q, heads(k), heads(v), in_place=True, kv_heads_major=True, backend=backend)


def test_heads_major_gradient():
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, 2, 1, 96, 4, 2, 16)
    ids = (None, None, jnp.asarray([[40], [95]], jnp.int32), None)
    kernel = lambda q, k, v: decode_attention(
        q, heads(k), heads(v), *ids, causal=True, block_k=32, kv_heads_major=True
    )
    reference = lambda q, k, v: reference_decode_attention(q, k, v, *ids, causal=True)
    check_against_reference(kernel, reference, q, k, v, FP32_TOL, rng)


def test_bf16_segments_and_gradient():
    """bf16 with per-slot segment ids (left-padded prompts); gradients equal the reference's."""
    rng = np.random.default_rng(1)
    b, s_len = 2, 128
    q, k, v = qkv(rng, b, 1, s_len, 4, 2, 16, jnp.bfloat16)
    kv_seg = jnp.asarray(np.r_[[0] * 10 + [1] * 118, [0] * 40 + [1] * 88].reshape(b, s_len), jnp.int32)
    q_seg = jnp.ones((b, 1), jnp.int32)
    q_pos = jnp.full((b, 1), 100, jnp.int32)
    ids = (q_seg, kv_seg, q_pos, None)
    kernel = lambda q, k, v: decode_attention(q, k, v, *ids, causal=True, block_k=32)
    reference = lambda q, k, v: reference_decode_attention(q, k, v, *ids, causal=True)
    check_against_reference(kernel, reference, q, k, v, BF16_TOL, rng)


def test_jit_and_in_place_errors():
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, 1, 1, 100, 2, 2, 16)
    with pytest.raises(ValueError, match="in place"):
        decode_attention(q, k, v, in_place=True, block_k=32, backend="tpu")
    lengths = jnp.array([37])
    out = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, lengths=n, block_k=32))(q, k, v, lengths)
    assert_close(out, reference_decode_attention(q, k, v, lengths=lengths), FP32_TOL)


@pytest.mark.parametrize("heads_major", [False, True], ids=["token_major", "heads_major"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradient_speculative_tokens_with_lengths(heads_major, causal):
    """The decode backward (plain XLA, not the reference) with tq > 1, GQA 3, lengths and an empty cache."""
    rng = np.random.default_rng(4)
    b, tq, s_len = 3, 3, 64
    q, k, v = qkv(rng, b, tq, s_len, 6, 2, 16)
    lengths = jnp.asarray([0, 20, 64], jnp.int32)
    q_pos = jnp.maximum(lengths[:, None] - tq + jnp.arange(tq)[None], 0).astype(jnp.int32)
    kw = {"q_positions": q_pos, "lengths": lengths, "causal": causal}
    layout = heads if heads_major else (lambda x: x)
    kernel = lambda q, k, v: decode_attention(
        q, layout(k), layout(v), **kw, block_k=16, num_splits=2, kv_heads_major=heads_major
    )
    reference = lambda q, k, v: reference_decode_attention(q, k, v, **kw)
    _, (dq, dk, dv) = check_against_reference(kernel, reference, q, k, v, FP32_TOL, rng)
    assert not np.any(np.asarray(dq[0])) and not np.any(np.asarray(dk[0]))
