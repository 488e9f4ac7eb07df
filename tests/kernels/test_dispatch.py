"""The library entry point with impl="pallas" (interpret on CPU) equals impl="xla"; dispatch choices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels import common, dispatch

from r1ov_jax.layers import attention as attn
from tests.kernels.helpers import FP32_TOL, assert_close, qkv, segments, value_and_grads


def test_routing_and_backend_choice():
    assert dispatch.use_decode(1, 4096) and dispatch.use_decode(8, 128)
    assert not dispatch.use_decode(9, 4096) and not dispatch.use_decode(1, 64)
    assert common.kernel_backend() == ("gpu" if jax.default_backend() == "gpu" else "tpu")
    assert common.use_interpret(None) == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError):
        common.kernel_backend("cuda")


def test_prefill_and_training_path():
    """Packed causal GQA prefill through the flash kernel: outputs and gradients."""
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 2, 40, 40, 4, 2, 16)
    seg = segments(rng, 2, 40, "packed")
    kw = {"q_segment_ids": seg, "kv_segment_ids": seg, "causal": True}
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    out, grads = value_and_grads(lambda q, k, v: attn.attention(q, k, v, **kw, impl="pallas"), q, k, v, cot)
    ref, ref_grads = value_and_grads(lambda q, k, v: attn.attention(q, k, v, **kw, impl="xla"), q, k, v, cot)
    assert_close(out, ref, FP32_TOL)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, FP32_TOL)


def test_decode_step_path():
    """One new token per sequence against a left-padded 128-slot cache, as the sampler calls it."""
    rng = np.random.default_rng(1)
    b, s_len = 2, 128
    q, k, v = qkv(rng, b, 1, s_len, 4, 1, 16)
    lengths = np.array([70, 128])
    slot = np.arange(s_len)[None]
    kv_seg = jnp.asarray((slot >= 5) & (slot < lengths[:, None]), jnp.int32)
    kw = {
        "q_segment_ids": jnp.ones((b, 1), jnp.int32),
        "kv_segment_ids": kv_seg,
        "causal": True,
        "q_positions": jnp.asarray(lengths[:, None] - 1, jnp.int32),
    }
    out = attn.attention(q, k, v, **kw, impl="pallas")
    assert_close(out, attn.attention(q, k, v, **kw, impl="xla"), FP32_TOL)


def test_vision_windows_path():
    """Non-causal per-window segment ids (what the vision tower passes), head dim 80."""
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, 1, 64, 64, 2, 2, 80)
    seg = jnp.asarray(np.repeat(np.arange(1, 5), 16)[None], jnp.int32)
    kw = {"q_segment_ids": seg, "kv_segment_ids": seg}
    assert_close(
        attn.attention(q, k, v, **kw, impl="pallas"), attn.attention(q, k, v, **kw, impl="xla"), FP32_TOL
    )


def _window_segments(rng, b, t, max_len):
    """Contiguous runs of 1..max_len positions per id (the vision tower's windows), then padding (id 0)."""
    rows = []
    for _ in range(b):
        row, sid = [], 1
        while len(row) < t - 5:
            row += [sid] * int(rng.integers(1, max_len + 1))
            sid += 1
        rows.append((row[: t - 5] + [0] * 5)[:t])
    return jnp.asarray(np.array(rows), jnp.int32)


def test_xla_window_attention_is_block_local_and_exact():
    """With ``max_seqlen`` the XLA path attends within each block and its neighbours: same outputs and gradients
    as the dense path, and no [t, t] logits in the program."""
    rng = np.random.default_rng(3)
    t, window = 100, 8  # t not a multiple of the block: the last block is padded
    q, k, v = qkv(rng, 2, t, t, 4, 2, 16)
    seg = _window_segments(rng, 2, t, window)
    kw = {"q_segment_ids": seg, "kv_segment_ids": seg, "impl": "xla"}
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    local = lambda q, k, v: attn.attention(q, k, v, **kw, max_seqlen=window)  # noqa: E731
    out, grads = value_and_grads(local, q, k, v, cot)
    ref, ref_grads = value_and_grads(lambda q, k, v: attn.attention(q, k, v, **kw), q, k, v, cot)
    assert_close(out, ref, FP32_TOL)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, FP32_TOL)
    shapes = [tuple(o.aval.shape) for e in jax.make_jaxpr(local)(q, k, v).eqns for o in e.outvars]
    assert not [s for s in shapes if s[-2:] == (t, t)] and (2 * 13, 2, 2, window, 3 * window) in shapes
