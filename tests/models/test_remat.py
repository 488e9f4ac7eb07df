"""Remat policies change what is saved for the backward pass, never the numbers."""

import jax
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image
from r1ov_jax.train.sft import sft_loss


def _batch(model):
    pv, thw = hf_pixels([random_image(56, 84, seed=1)])
    ids = np.array([build_ids([1, 2, "img", 3, 4, 5], thw)])
    inputs = model.prepare_inputs(ids, None, pv, thw)
    return {**inputs, "loss_mask": np.ones_like(ids, bool)}


def _grads(policy):
    model = Qwen25VL(tiny(remat=policy), rngs=nnx.Rngs(0))
    batch = _batch(model)
    (loss, _), grads = nnx.jit(nnx.value_and_grad(sft_loss, has_aux=True))(model, batch)
    return float(loss), jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch", True])
def test_policies_give_the_same_gradients(policy):
    loss0, g0 = _grads("none")
    loss, g = _grads(policy)
    assert loss == pytest.approx(loss0, abs=1e-6)
    for a, b in zip(g0, g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_unknown_policy_is_a_user_error():
    with pytest.raises(InvalidInputError, match="model.remat"):
        tiny(remat="sometimes")


def test_sampler_runs_a_remat_model():
    from r1ov_jax.rollout.sampler import SamplingConfig, generate

    plain, rematted = (Qwen25VL(tiny(remat=p), rngs=nnx.Rngs(0)) for p in ("none", "full"))
    inputs = plain.prepare_inputs(np.array([[5, 6, 7, 8]]))
    cfg = SamplingConfig(max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(
        generate(rematted, inputs, 0, cfg).tokens, generate(plain, inputs, 0, cfg).tokens
    )
