"""generate_rows (per-row sampling for the server): greedy rows equal generate's greedy; a row's draws depend on
its own seed/stream only, not on the batch around it; per-row token budgets; padding rows; per-row top-p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.rollout.sampler import RowParams, SamplingConfig, generate, generate_rows, left_pad


@pytest.fixture(scope="module")
def model():
    m = Qwen25VL(tiny(), rngs=nnx.Rngs(1))
    m.lm_head.kernel.value = (
        m.lm_head.kernel[...] * 8.0
    )  # a spread distribution: samples differ between seeds
    return m


def rows(temperature, top_p=None, seed=None, stream=None, budget=None, n=None):
    n = len(temperature)
    return RowParams(
        temperature=np.asarray(temperature, np.float32),
        top_p=np.asarray(top_p if top_p is not None else [1.0] * n, np.float32),
        seed=np.asarray(seed if seed is not None else [0] * n, np.uint32),
        stream=np.asarray(stream if stream is not None else [0] * n, np.uint32),
        max_new_tokens=np.asarray(budget if budget is not None else [6] * n, np.int32),
    )


def inputs_of(model, prompts):
    ids, mask = left_pad(prompts)
    return model.prepare_inputs(ids, mask)


PROMPTS = [[3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14]]
CFG = SamplingConfig(max_new_tokens=6)


def test_greedy_rows_equal_generate(model):
    inputs = inputs_of(model, PROMPTS)
    ref = generate(model, inputs, 0, SamplingConfig(max_new_tokens=6, temperature=0.0))
    out = generate_rows(model, inputs, rows([0.0, 0.0, 0.0]), CFG)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-6)
    np.testing.assert_array_equal(out.lengths, [6, 6, 6])


def test_row_draws_do_not_depend_on_the_batch(model):
    alone = generate_rows(model, inputs_of(model, [PROMPTS[1]]), rows([1.0], seed=[42], stream=[3]), CFG)
    mixed = generate_rows(
        model, inputs_of(model, PROMPTS), rows([0.0, 1.0, 1.0], seed=[5, 42, 42], stream=[0, 3, 4]), CFG
    )
    np.testing.assert_array_equal(mixed.tokens[1], alone.tokens[0])  # same (seed, stream): same draws
    greedy = generate_rows(model, inputs_of(model, PROMPTS), rows([0.0, 0.0, 0.0]), CFG)
    np.testing.assert_array_equal(mixed.tokens[0], greedy.tokens[0])  # a greedy row beside sampled ones
    twins = generate_rows(
        model, inputs_of(model, [PROMPTS[1]] * 4), rows([1.0] * 4, seed=[42] * 4, stream=[0, 1, 2, 3]), CFG
    )
    assert len({tuple(t) for t in twins.tokens.tolist()}) > 1  # choice index → a different stream


def test_budgets_and_padding_rows(model):
    out = generate_rows(model, inputs_of(model, PROMPTS), rows([0.0, 1.0, 0.0], budget=[2, 5, 0]), CFG)
    np.testing.assert_array_equal(out.lengths, [2, 5, 0])
    assert (out.tokens[0, 2:] == CFG.pad_id).all() and (out.logprobs[2] == 0).all()


def test_row_top_p_keeps_each_row_in_its_nucleus(model):
    prompt = [[3, 4, 5]]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(np.asarray(model(np.array(prompt)))[0, -1])))
    order = np.argsort(-probs)
    top = int(order[0])
    n = 256
    inputs = inputs_of(model, prompt * n)
    # half the rows with a nucleus holding only the top token, half without top-p
    params = rows(
        [1.0] * n, top_p=[probs[top] * 0.5] * (n // 2) + [1.0] * (n // 2), seed=list(range(n)), budget=[1] * n
    )
    out = generate_rows(model, inputs, params, SamplingConfig(max_new_tokens=1))
    assert (out.tokens[: n // 2, 0] == top).all()
    assert len(set(out.tokens[n // 2 :, 0].tolist())) > 1
