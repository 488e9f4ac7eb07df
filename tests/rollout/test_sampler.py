"""Sampler: greedy == step-by-step argmax of the full forward; temperature sampling matches softmax
frequencies (chi-square); top-p never leaves the nucleus; EOS handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.rollout.sampler import SamplingConfig, filter_logits, generate, left_pad
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image


@pytest.fixture(scope="module")
def peaky_model():
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    # Sharpen the output distribution so that greedy paths are unambiguous and sampling tests have power.
    model.lm_head.kernel.value = model.lm_head.kernel[...] * 60.0
    return model


def test_greedy_equals_stepwise_argmax(peaky_model):
    pv, thw = hf_pixels([random_image(56, 56, seed=3)])
    prompts = [build_ids([1, 2, "img", 3], thw), [5, 6, 7, 8, 9, 10, 11]]
    ids, mask = left_pad(prompts)
    grids = thw  # only the first prompt has an image
    inputs = peaky_model.prepare_inputs(ids, mask, pv, grids)
    out = generate(peaky_model, inputs, 0, SamplingConfig(max_new_tokens=6, temperature=0.0))
    assert out.tokens.shape == (2, 6) and (out.lengths == 6).all()
    seq, m = ids.copy(), mask.copy()
    for step in range(6):
        logits = np.asarray(peaky_model(seq, m, pv, grids))[:, -1]
        expect = logits.argmax(-1)
        np.testing.assert_array_equal(out.tokens[:, step], expect)
        lp = jax.nn.log_softmax(jnp.asarray(logits), -1)[np.arange(2), expect]
        np.testing.assert_allclose(out.logprobs[:, step], lp, atol=1e-4)
        seq = np.concatenate([seq, expect[:, None]], 1)
        m = np.concatenate([m, np.ones((2, 1), m.dtype)], 1)
    # G samples per prompt share one prefill (the prompt's cache is repeated): each greedy copy decodes alike.
    group = generate(peaky_model, inputs, 0, SamplingConfig(max_new_tokens=6, temperature=0.0), num_samples=3)
    np.testing.assert_array_equal(group.tokens, np.repeat(out.tokens, 3, axis=0))
    np.testing.assert_allclose(group.logprobs, np.repeat(out.logprobs, 3, axis=0), atol=1e-5)
    np.testing.assert_array_equal(group.prompt_index, [0, 0, 0, 1, 1, 1])


def test_temperature_frequencies_match_softmax(peaky_model):
    ids = np.array([[3, 4, 5]])
    inputs = peaky_model.prepare_inputs(ids)
    n = 4000
    out = generate(peaky_model, inputs, 1, SamplingConfig(max_new_tokens=1, temperature=1.0), num_samples=n)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(np.asarray(peaky_model(ids))[0, -1])))
    counts = np.bincount(out.tokens[:, 0], minlength=probs.size)
    big = probs * n >= 5  # chi-square needs expected counts >= 5: pool the tail into one bin
    obs = np.append(counts[big], counts[~big].sum()).astype(np.float64)
    exp = np.append(probs[big], probs[~big].sum()).astype(np.float64)
    if exp[-1] * n < 5:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp / exp.sum() * obs.sum()
    assert big.sum() >= 3, "distribution too peaked for a meaningful test"
    p = stats.chisquare(obs, exp).pvalue
    assert p > 1e-3, f"chi-square p={p}"


def test_top_p_never_samples_outside_nucleus(peaky_model):
    ids = np.array([[7, 8, 9]])
    inputs = peaky_model.prepare_inputs(ids)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(np.asarray(peaky_model(ids))[0, -1])))
    order = np.argsort(-probs)
    top_p = 0.6
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)].tolist())
    out = generate(
        peaky_model,
        inputs,
        2,
        SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=top_p),
        num_samples=2000,
    )
    assert set(out.tokens[:, 0].tolist()) <= nucleus
    assert len(nucleus) >= 2 and len(set(out.tokens[:, 0].tolist())) >= 2


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=2, top_p=1.0))) & (
        np.asarray(filter_logits(logits, top_k=2, top_p=1.0)) > -1e30
    )
    assert kept.tolist() == [[True, True, False, False, False]]
    f = np.asarray(filter_logits(logits, top_k=0, top_p=0.7))
    assert (f > -1e30).tolist() == [[True, True, False, False, False]]  # 0.5 + 0.2 reaches 0.7


def test_eos_stops_and_pads(peaky_model):
    ids = np.array([[3, 4, 5]])
    inputs = peaky_model.prepare_inputs(ids)
    free = generate(peaky_model, inputs, 0, SamplingConfig(max_new_tokens=5, temperature=0.0))
    eos = int(free.tokens[0, 2])
    out = generate(
        peaky_model, inputs, 0, SamplingConfig(max_new_tokens=5, temperature=0.0, eos_ids=(eos,), pad_id=255)
    )
    first = int(np.flatnonzero(free.tokens[0] == eos)[0])
    assert out.lengths[0] == first + 1
    assert (out.tokens[0, first + 1 :] == 255).all() and (out.logprobs[0, first + 1 :] == 0).all()
