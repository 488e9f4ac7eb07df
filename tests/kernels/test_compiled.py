"""Compiled (non-interpret) kernels on real accelerators; skipped cleanly elsewhere.

Run on a GPU machine with ``pytest -m gpu tests/kernels`` (Triton flavour) or on a TPU VM with ``-m tpu``.
Shapes are realistic: head dim 64/80/128, ragged lengths around 1k, packed causal GQA, bf16 and fp32.
Without an accelerator, ``test_aot_tpu.py`` (Mosaic compile for v5e / v5p via libtpu) and
``test_aot_triton.py`` (Triton lowering for CUDA) still check that every kernel compiles / lowers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from r1ov_kernels.decode_attention import decode_attention
from r1ov_kernels.flash_attention import flash_attention
from r1ov_kernels.reference import (
    reference_decode_attention,
    reference_flash_attention,
    reference_varlen_attention,
)
from r1ov_kernels.varlen_attention import varlen_attention

from r1ov_jax.layers import attention as attn
from tests.kernels.helpers import (
    BF16_TOL,
    FP32_TOL,
    assert_close,
    check_against_reference,
    normal,
    qkv,
    segments,
)

BACKENDS = [
    pytest.param(
        "gpu",
        marks=[pytest.mark.gpu, pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")],
    ),
    pytest.param(
        "tpu",
        marks=[pytest.mark.tpu, pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU")],
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_flash_compiled(backend, d, dtype):
    rng = np.random.default_rng(d)
    b, t = 2, 1000
    q, k, v = qkv(rng, b, t, t, 8, 2, d, dtype)
    seg = segments(rng, b, t, "packed")
    kernel = lambda q, k, v: flash_attention(q, k, v, seg, seg, causal=True, backend=backend, interpret=False)
    reference = lambda q, k, v: reference_flash_attention(q, k, v, seg, seg, causal=True)
    check_against_reference(kernel, reference, q, k, v, FP32_TOL if dtype == jnp.float32 else BF16_TOL, rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_compiled(backend):
    rng = np.random.default_rng(1)
    t = 1000
    q, k, v = (normal(rng, (t, 16, 80), jnp.bfloat16) for _ in range(3))
    cu = jnp.asarray(np.r_[np.arange(0, 960, 64), 990], jnp.int32)
    kernel = lambda q, k, v: varlen_attention(q, k, v, cu, max_seqlen=64, backend=backend, interpret=False)
    reference = lambda q, k, v: reference_varlen_attention(q, k, v, cu)
    check_against_reference(kernel, reference, q, k, v, BF16_TOL, rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s_len", [2048, 1000])  # in place / padded copy
def test_decode_compiled(backend, s_len):
    rng = np.random.default_rng(s_len)
    q, k, v = qkv(rng, 4, 1, s_len, 28, 4, 128, jnp.bfloat16)
    lengths = jnp.asarray([1, 300, s_len - 7, s_len], jnp.int32)
    kw = {"q_positions": (lengths - 1)[:, None], "lengths": lengths, "causal": True}
    out = decode_attention(q, k, v, **kw, backend=backend, interpret=False)
    ref = reference_decode_attention(q, k, v, **kw)
    assert_close(out, ref, BF16_TOL)
    heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  the model's KV-cache layout
    out = decode_attention(q, heads(k), heads(v), **kw, backend=backend, interpret=False, kv_heads_major=True)
    assert_close(out, ref, BF16_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_point_auto(backend):
    """impl="auto" picks the kernels on the accelerator and matches impl="xla"."""
    del backend
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, 2, 512, 512, 16, 2, 128, jnp.bfloat16)
    seg = segments(rng, 2, 512, "left_pad")
    kw = {"q_segment_ids": seg, "kv_segment_ids": seg, "causal": True}
    assert attn.resolve_impl("auto") == "pallas"
    out = jax.jit(lambda q, k, v: attn.attention(q, k, v, **kw, impl="auto"))(q, k, v)
    assert_close(out, attn.attention(q, k, v, **kw, impl="xla"), BF16_TOL)
