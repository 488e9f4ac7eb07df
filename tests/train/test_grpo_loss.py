"""GRPO-family loss options == direct NumPy formulas (ragged masks, clipping on > 30 % of tokens, off-policy
ratios as with μ > 1), GSPO value and gradient, advantages, DAPO overlong penalty, TIS weights, presets."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from r1ov_jax.config_utils import ConfigError
from r1ov_jax.train.grpo_config import PRESETS, default_grpo_config, resolve_options
from r1ov_jax.train.grpo_loss import (
    group_advantages,
    grpo_loss,
    overlong_penalty,
    truncated_is_weights,
)


def numpy_loss(logp, old, ref, adv, mask, beta, eps, eps_high, agg, level, kl, max_len=None, w=None):
    """Loops over rows and tokens, written from the papers' formulas."""
    b, t = logp.shape
    eps_high = eps if eps_high is None else eps_high
    per_row_sum, per_row_n = np.zeros(b), np.zeros(b)
    for i in range(b):
        toks = [j for j in range(t) if mask[i, j]]
        seq_ratio = np.exp(np.mean([logp[i, j] - old[i, j] for j in toks])) if toks else 1.0
        for j in toks:
            ratio = seq_ratio if level == "sequence" else np.exp(logp[i, j] - old[i, j])
            surr = min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps_high) * adv[i])
            if w is not None:
                surr *= w[i, j]
            d = ref[i, j] - logp[i, j]
            k = {"k1": -d, "k2": 0.5 * d * d, "k3": np.exp(d) - d - 1}[kl]
            per_row_sum[i] += -surr + beta * k
            per_row_n[i] += 1
    if agg == "seq-mean-token-mean":
        rows = [per_row_sum[i] / per_row_n[i] for i in range(b) if per_row_n[i]]
        return np.mean(rows)
    if agg == "token-mean":
        return per_row_sum.sum() / per_row_n.sum()
    return per_row_sum.sum() / (b * (t if max_len is None else max_len))


def random_inputs(seed, b=6, t=9, spread=0.5, empty_row=False):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.1, 3.0, (b, t))
    old = logp + rng.normal(0, spread, (b, t))  # as after earlier updates (μ > 1): ratios far from 1
    ref = logp + rng.normal(0, 0.3, (b, t))
    adv = rng.normal(0, 1, b)
    lengths = rng.integers(1, t + 1, b)
    if empty_row:
        lengths[1] = 0
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    return [x.astype(np.float32) for x in (logp, old, ref, adv)] + [mask]


OPTIONS = list(
    itertools.product(
        ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"),
        ("token", "sequence"),
        ("k1", "k2", "k3"),
    )
)


@pytest.mark.parametrize("agg, level, kl", OPTIONS)
def test_every_option_equals_numpy(agg, level, kl):
    for seed, (beta, eps_high, max_len) in enumerate(
        [(0.04, None, None), (0.1, 0.28, 16), (0.0, 0.28, None)]
    ):
        logp, old, ref, adv, mask = random_inputs(seed, empty_row=seed == 2)
        if level == "token":
            ratio = np.exp(logp - old)
            assert ((ratio < 0.8) | (ratio > 1.2))[mask > 0].mean() > 0.3  # clipping really active
        ours = grpo_loss(
            logp, old, None if beta == 0 else ref, adv, mask, beta, 0.2, epsilon_high=eps_high, loss_agg=agg,
            ratio_level=level, kl_estimator=kl, max_completion_len=max_len,
        )  # fmt: skip
        want = numpy_loss(logp, old, ref, adv, mask, beta, 0.2, eps_high, agg, level, kl, max_len)
        assert float(ours) == pytest.approx(want, rel=1e-5, abs=1e-6), (seed, beta, eps_high)


def test_sequence_ratios_clip_on_many_sequences():
    """The GSPO cases above are not vacuous: with ε = 0.2 most sequence ratios lie outside the clip range."""
    logp, old, _, _, mask = random_inputs(0, spread=0.5)
    s = np.exp(((logp - old) * mask).sum(1) / mask.sum(1))
    assert ((s < 0.8) | (s > 1.2)).mean() > 0.3


def test_clip_higher_is_asymmetric():
    logp, old, ref, adv, mask = random_inputs(5)
    a = grpo_loss(logp, old, ref, adv, mask, 0.0, 0.2, epsilon_high=0.28)
    b = grpo_loss(logp, old, ref, adv, mask, 0.0, 0.2)
    assert float(a) != pytest.approx(float(b))
    want = numpy_loss(logp, old, ref, adv, mask, 0.0, 0.2, 0.28, "seq-mean-token-mean", "token", "k3")
    assert float(a) == pytest.approx(want, rel=1e-5)


def test_importance_weights_multiply_the_surrogate():
    logp, old, ref, adv, mask = random_inputs(6)
    sampler = old + np.random.default_rng(0).normal(0, 0.5, old.shape).astype(np.float32)
    w = np.asarray(truncated_is_weights(old, sampler, 2.0))
    np.testing.assert_allclose(w, np.minimum(np.exp(old - sampler), 2.0), rtol=1e-6)
    assert (w == 2.0).any() and (w < 1.0).any()  # the cap binds on some tokens
    ours = grpo_loss(logp, old, ref, adv, mask, 0.04, 0.2, loss_agg="token-mean", is_weights=w)
    want = numpy_loss(logp, old, ref, adv, mask, 0.04, 0.2, None, "token-mean", "token", "k3", w=w)
    assert float(ours) == pytest.approx(want, rel=1e-5)


def _fd_check(loss_jax, loss_np, logp, h=1e-6, tol=1e-4):
    jax.config.update("jax_enable_x64", True)
    try:
        g = np.asarray(jax.grad(loss_jax)(jnp.asarray(logp, jnp.float64)))
    finally:
        jax.config.update("jax_enable_x64", False)
    lp = logp.astype(np.float64)
    for i, j in np.ndindex(*lp.shape):
        e = np.zeros_like(lp)
        e[i, j] = h
        num = (loss_np(lp + e) - loss_np(lp - e)) / (2 * h)
        assert g[i, j] == pytest.approx(num, abs=tol), (i, j)
    return g


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_gspo_value_and_gradient(agg):
    """GSPO (Zheng et al. 2025): value = sequence-level formula with s_i = exp(mean_t(logp − old)); gradient of
    the token form sg(s_i)·exp(logp_t − sg(logp_t)) equals finite differences of the sequence-level objective."""
    logp, old, ref, adv, mask = random_inputs(7, b=3, t=4, spread=0.05)
    args = [x.astype(np.float64) for x in (old, ref, adv, mask)]

    def seq_level(lp):  # J = mean_i min(s_i A_i, clip(s_i) A_i), written at the sequence level
        s = np.exp(((lp - args[0]) * args[3]).sum(1) / args[3].sum(1))
        per_seq = -np.minimum(s * args[2], np.clip(s, 1 - 0.2, 1 + 0.2) * args[2])
        if agg == "seq-mean-token-mean":
            return per_seq.mean()
        return (per_seq * args[3].sum(1)).sum() / args[3].sum()

    value = grpo_loss(logp, old, ref, adv, mask, 0.0, 0.2, ratio_level="sequence", loss_agg=agg)
    assert float(value) == pytest.approx(seq_level(logp.astype(np.float64)), rel=1e-5)

    def ours(lp):
        a = [jnp.asarray(x) for x in args]
        return grpo_loss(lp, a[0], a[1], a[2], a[3], 0.0, 0.2, ratio_level="sequence", loss_agg=agg)

    g = _fd_check(ours, seq_level, logp)
    assert np.abs(g).max() > 1e-3 and np.all(g[mask == 0] == 0)


def test_gspo_gradient_zero_when_the_sequence_is_clipped():
    logp = np.full((1, 3), -1.0, np.float32)
    old = logp - 0.5  # s = e^0.5 > 1 + ε with a positive advantage: clipped, no gradient
    g = jax.grad(lambda lp: grpo_loss(lp, old, None, np.ones(1, np.float32), np.ones((1, 3)), 0.0, 0.2,
                                      ratio_level="sequence"))(jnp.asarray(logp))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_token_gradient_matches_finite_differences(agg):
    logp, old, ref, adv, mask = random_inputs(8, b=2, t=3, spread=0.1)
    args = [x.astype(np.float64) for x in (old, ref, adv, mask)]
    f_np = lambda lp: numpy_loss(lp, *args[:3], args[3], 0.04, 0.2, 0.28, agg, "token", "k2")  # noqa: E731

    def ours(lp):
        a = [jnp.asarray(x) for x in args]
        return grpo_loss(lp, *a, 0.04, 0.2, epsilon_high=0.28, loss_agg=agg, kl_estimator="k2")

    _fd_check(ours, f_np, logp)


def test_beta_zero_needs_no_reference_and_nonzero_does():
    logp, old, _, adv, mask = random_inputs(9)
    grpo_loss(logp, old, None, adv, mask, 0.0, 0.2)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old, None, adv, mask, 0.04, 0.2)


def test_advantages_std_and_none():
    r = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0, 3.0], np.float32)
    g = r[4:]
    np.testing.assert_allclose(np.asarray(group_advantages(r, 4))[:4], 0.0)
    np.testing.assert_allclose(
        np.asarray(group_advantages(r, 4))[4:], (g - g.mean()) / (g.std(ddof=1) + 1e-4), rtol=1e-5
    )
    a = np.asarray(group_advantages(r, 4, scale="none"))
    np.testing.assert_allclose(a[4:], g - g.mean(), rtol=1e-6)  # Dr. GRPO: mean-centred, not scaled
    np.testing.assert_allclose(a.reshape(2, 4).sum(1), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(r, 4, scale="max")


def test_overlong_penalty_is_dapo_eq13():
    l_max, l_cache = 20, 5
    lengths = np.arange(0, 21)
    want = [0.0 if n <= l_max - l_cache else ((l_max - l_cache) - n) / l_cache for n in lengths]
    np.testing.assert_allclose(overlong_penalty(lengths, l_max, l_cache), want, rtol=1e-6)
    np.testing.assert_allclose(overlong_penalty(lengths, l_max, l_cache, factor=0.5), np.multiply(want, 0.5))
    assert not overlong_penalty(lengths, l_max, 0).any()


def _grpo_block(**kw) -> ml_collections.ConfigDict:
    g = default_grpo_config()
    for k, v in kw.items():
        g[k] = v
    return g


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_their_papers_values(name):
    opts = resolve_options(_grpo_block(preset=name, max_new_tokens=100))
    p = PRESETS[name]
    assert (opts.beta, opts.epsilon) == (p["beta"], p["epsilon"])
    assert (opts.loss.loss_agg, opts.loss.ratio_level, opts.advantage_scale) == (
        p["loss_agg"], p["ratio_level"], p["advantage_scale"])  # fmt: skip
    assert opts.loss.epsilon_high == p["epsilon_high"] and opts.dynamic_sampling == p["dynamic_sampling"]
    assert opts.overlong_buffer == (20 if name == "dapo" else 0)  # DAPO: L_cache = L_max / 5


def test_explicit_values_override_the_preset():
    opts = resolve_options(_grpo_block(preset="dapo", beta=0.01, loss_agg="seq-mean-token-mean",
                                       dynamic_sampling=False, overlong_buffer=0))  # fmt: skip
    assert opts.beta == 0.01 and opts.loss.loss_agg == "seq-mean-token-mean"
    assert not opts.dynamic_sampling and opts.overlong_buffer == 0 and opts.loss.epsilon_high == 0.28
    default = resolve_options(default_grpo_config())  # today's GRPO
    assert (default.beta, default.epsilon, default.loss.loss_agg, default.on_policy) == (
        0.04, 0.2, "seq-mean-token-mean", True)  # fmt: skip


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(preset="ppo"), "preset"),
        (dict(loss_agg="mean"), "loss_agg"),
        (dict(ratio_level="tok"), "ratio_level"),
        (dict(kl_estimator="k4"), "kl_estimator"),
        (dict(num_minibatches=0), "num_minibatches"),
        (dict(tis_cap=2.0, old_logp="sampler"), "tis_cap"),
        (dict(overlong_buffer=999), "overlong_buffer"),
    ],
)
def test_bad_options_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        resolve_options(_grpo_block(**kw))
    with pytest.raises(ConfigError, match="divide"):
        resolve_options(_grpo_block(num_minibatches=3), prompt_batch_size=4)
