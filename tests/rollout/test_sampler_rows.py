"""generate_rows (per-row sampling for the server): greedy rows equal generate's greedy; a row's draws depend on
its own seed/stream only, not on the batch around it; per-row token budgets and padding rows; per-row top-p.

Every call has the same shape (4 rows, one prompt length, 6 tokens): one compile per sampling mode."""

import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.rollout.sampler import RowParams, SamplingConfig, generate, generate_rows, left_pad

P0, P1, P2 = [3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14]
CFG = SamplingConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def model():
    m = Qwen25VL(tiny(), rngs=nnx.Rngs(1))
    m.lm_head.kernel.value = (
        m.lm_head.kernel[...] * 8.0
    )  # a spread distribution: samples differ between seeds
    return m


def run(model, prompts, temperature, top_p=(1.0,) * 4, seed=(0,) * 4, stream=(0,) * 4, budget=(6,) * 4):
    ids, mask = left_pad(prompts)
    ids = np.pad(ids, ((0, 0), (6 - ids.shape[1], 0)))  # one prompt length for every call
    mask = np.pad(mask, ((0, 0), (6 - mask.shape[1], 0)))
    params = RowParams(
        temperature=np.asarray(temperature, np.float32), top_p=np.asarray(top_p, np.float32),
        seed=np.asarray(seed, np.uint32), stream=np.asarray(stream, np.uint32),
        max_new_tokens=np.asarray(budget, np.int32),
    )  # fmt: skip
    return generate_rows(model, model.prepare_inputs(ids, mask), params, CFG)


def test_greedy_rows_equal_generate(model):
    ids, mask = left_pad([P0, P1, P2, P1])
    ref = generate(
        model, model.prepare_inputs(ids, mask), 0, SamplingConfig(max_new_tokens=6, temperature=0.0)
    )
    out = run(model, [P0, P1, P2, P1], [0.0] * 4)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-6)
    np.testing.assert_array_equal(out.lengths, [6] * 4)


def test_row_draws_depend_on_their_own_seed_only(model):
    a = run(model, [P0, P1, P2, P1], [0.0, 1.0, 1.0, 0.5], seed=(5, 42, 42, 9), stream=(0, 3, 4, 0))
    b = run(model, [P2, P0, P0, P1], [1.0, 1.0, 0.0, 1.0], seed=(1, 2, 3, 42), stream=(0, 0, 0, 3))
    np.testing.assert_array_equal(a.tokens[1], b.tokens[3])  # same prompt, seed, stream; other neighbours
    greedy = run(model, [P0, P1, P2, P1], [0.0] * 4)
    np.testing.assert_array_equal(a.tokens[0], greedy.tokens[0])  # a greedy row beside sampled ones
    twins = run(model, [P1] * 4, [1.0] * 4, seed=(42,) * 4, stream=(0, 1, 2, 3))
    assert len({tuple(t) for t in twins.tokens.tolist()}) > 1  # the choice index gives a different stream
    again = run(model, [P1] * 4, [1.0] * 4, seed=(42,) * 4, stream=(0, 1, 2, 3))
    np.testing.assert_array_equal(again.tokens, twins.tokens)


def test_budgets_and_padding_rows(model):
    out = run(model, [P0, P1, P2, P2], [0.0, 1.0, 0.0, 1.0], budget=(2, 5, 0, 6))
    np.testing.assert_array_equal(out.lengths, [2, 5, 0, 6])
    assert (out.tokens[0, 2:] == CFG.pad_id).all() and (out.tokens[2] == CFG.pad_id).all()
    assert (out.logprobs[2] == 0).all() and (out.logprobs[1, 5:] == 0).all()


def test_row_top_p(model):
    # top_p below the top token's probability leaves only the argmax in the nucleus: those rows decode greedily,
    # while rows without top-p sample freely (same seeds)
    seeds = (11, 12, 11, 12)
    out = run(model, [P0, P1, P0, P1], [1.0] * 4, top_p=(1e-6, 1e-6, 1.0, 1.0), seed=seeds)
    greedy = run(model, [P0, P1, P0, P1], [0.0] * 4)
    np.testing.assert_array_equal(out.tokens[:2], greedy.tokens[:2])
    assert (out.tokens[2:] != greedy.tokens[2:]).any()
