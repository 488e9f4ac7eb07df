"""The tiny Qwen2.5-VL with attn_impl="pallas" (kernels in interpret mode) == attn_impl="xla".

Covers every attention the model issues: vision windows + full attention (segment ids), the causal text
decoder with left padding and an image, and the sampler's KV-cache prefill + decode loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from r1ov_kernels import dispatch

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.rollout.sampler import SamplingConfig, generate, left_pad
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image


def _models(seed=0):
    return Qwen25VL(tiny(attn_impl="xla"), rngs=nnx.Rngs(seed)), Qwen25VL(
        tiny(attn_impl="pallas"), rngs=nnx.Rngs(seed)
    )


@pytest.fixture(scope="module")
def batch():
    pv, thw = hf_pixels([random_image(56, 84, seed=1)])
    ids, mask = left_pad([build_ids([1, 2, "img", 3], thw), [5, 6, 7, 8, 9, 10, 11]])
    return ids, mask, pv, thw


def test_logits_match(batch):
    xla, pallas = _models()
    ref = np.asarray(xla(*batch))
    out = np.asarray(pallas(*batch))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_sampler_tokens_match_with_decode_kernel(batch, monkeypatch):
    # The tiny cache is shorter than DECODE_MIN_KV; lower it so decode steps take the decode kernel.
    monkeypatch.setattr(dispatch, "DECODE_MIN_KV", 16)
    xla, pallas = _models(1)
    for m in (xla, pallas):  # peaky logits: greedy paths are unambiguous
        m.lm_head.kernel.value = m.lm_head.kernel[...] * 60.0
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.0)
    ref = generate(xla, xla.prepare_inputs(*batch), 0, cfg)
    out = generate(pallas, pallas.prepare_inputs(*batch), 0, cfg)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
