"""The trainers' chunked LM head equals the plain full-logits loss: SFT cross-entropy on a packed batch with
images and masked tokens, and GRPO completion log-probs — values and gradients, fp32, ≤1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, decode_positions, next_positions, tiny
from r1ov_jax.train.grpo import completion_logprobs
from r1ov_jax.train.sft import MODEL_KEYS, sft_loss, token_targets
from tests.sharding import multihost_images as job

TOL = 1e-5


def plain_sft_loss(model, batch):
    logits = model.forward(**{k: batch[k] for k in MODEL_KEYS if k in batch})[:, :-1]
    targets, weights = token_targets(batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def plain_completion_logprobs(model, prompt, completions, comp_mask, group):
    rep = lambda x, axis=0: jnp.repeat(x, group, axis=axis)  # noqa: E731
    x = jnp.concatenate(
        [rep(model.embed(prompt["input_ids"], prompt.get("pixel_values"), prompt.get("vision"))),
         model.embed(completions)], axis=1,
    )  # fmt: skip
    seg, pos = rep(prompt["segment_ids"]), rep(prompt["positions"], axis=1)
    t = completions.shape[1]
    positions = jnp.concatenate([pos, decode_positions(next_positions(pos, seg), t)], axis=2)
    segments = jnp.concatenate([seg, comp_mask.astype(jnp.int32)], axis=1)
    h = model.decoder(x, positions, segments).hidden
    logits = model.logits(h[:, seg.shape[1] - 1 : seg.shape[1] - 1 + t]).astype(jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), completions[..., None], -1)[..., 0]


def _grads(fn, model):
    # jitted: eager grads of the tiny model take a minute
    value, grads = nnx.jit(nnx.value_and_grad(fn))(model)
    return float(value), jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize("tie", [False, True])
def test_sft_loss_equals_full_logits(tie):
    model = Qwen25VL(tiny(tie_word_embeddings=tie), rngs=nnx.Rngs(0))
    batch = jax.tree.map(jnp.asarray, job.sft_rows(slice(0, 4)))  # packed rows, images, masked prompt tokens
    assert (batch["segment_ids"] == 0).any() and not batch["loss_mask"].all()
    want, g_want = _grads(lambda m: plain_sft_loss(m, batch), model)
    got, g_got = _grads(lambda m: sft_loss(m, batch, chunk_size=7)[0], model)  # 7 does not divide the length
    assert got == pytest.approx(want, abs=TOL)
    for a, b in zip(g_want, g_got):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=TOL, rtol=TOL)


def test_completion_logprobs_equal_full_logits():
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(1))
    prompt = jax.tree.map(jnp.asarray, job.prompt_rows(slice(0, 2))["inputs"])
    comps = jnp.asarray(np.random.default_rng(0).integers(0, 200, (4, 9)), jnp.int32)
    mask = jnp.arange(9)[None] < jnp.array([[9], [4], [1], [6]])
    want = plain_completion_logprobs(model, prompt, comps, mask, 2)
    got = completion_logprobs(model, prompt, comps, mask, 2, chunk_size=4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL)

    def loss(fn):
        return lambda m: (fn(m, prompt, comps, mask, 2) * mask).sum()

    _, g_want = _grads(loss(plain_completion_logprobs), model)
    _, g_got = _grads(loss(lambda *a: completion_logprobs(*a, chunk_size=4)), model)
    for a, b in zip(g_want, g_got):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=TOL, rtol=TOL)
