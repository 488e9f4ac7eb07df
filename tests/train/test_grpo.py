"""GRPO: loss == direct NumPy formula (μ>1 with clipping active, ragged masks), zero advantages for equal
rewards, gradient vs finite differences, and a short end-to-end loop on a tiny model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.train.grpo import default_grpo_config, group_advantages, grpo_loss, run_grpo

jax.config.update("jax_enable_x64", False)


def numpy_grpo_loss(logp, old, ref, adv, mask, beta, eps):
    total = 0.0
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            ratio = np.exp(logp[i, t] - old[i, t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            surr = min(ratio * adv[i], clipped * adv[i])
            kl = np.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            terms.append(-(surr - beta * kl))
        total += sum(terms) / max(len(terms), 1)
    return total / logp.shape[0]


def random_inputs(seed, b=6, t=9, spread=0.5):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.1, 3.0, (b, t))
    old = logp + rng.normal(0, spread, (b, t))  # far from logp: ratios outside [1-ε, 1+ε]
    ref = logp + rng.normal(0, 0.3, (b, t))
    adv = rng.normal(0, 1, b)
    lengths = rng.integers(1, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    return [x.astype(np.float32) for x in (logp, old, ref, adv)] + [mask]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_numpy_formula(seed):
    logp, old, ref, adv, mask = random_inputs(seed)
    ratio = np.exp(logp - old)
    assert ((ratio < 0.8) | (ratio > 1.2))[mask > 0].mean() > 0.3  # clipping really active
    ours = float(grpo_loss(logp, old, ref, adv, mask, beta=0.04, epsilon=0.2))
    assert ours == pytest.approx(numpy_grpo_loss(logp, old, ref, adv, mask, 0.04, 0.2), rel=1e-5, abs=1e-6)


def test_mu_one_ratio_is_one_and_loss_is_kl_only_in_value():
    logp, _, ref, adv, mask = random_inputs(3)
    value = float(grpo_loss(logp, logp, ref, adv, mask, beta=0.04, epsilon=0.2))
    assert value == pytest.approx(numpy_grpo_loss(logp, logp, ref, adv, mask, 0.04, 0.2), rel=1e-5)


def test_advantages():
    r = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0, 1.0])
    a = np.asarray(group_advantages(r, 4))
    np.testing.assert_allclose(a[:4], 0.0)
    g = np.array([0.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(a[4:], (g - g.mean()) / (g.std(ddof=1) + 1e-4), rtol=1e-5)


def test_gradient_matches_finite_differences():
    logp, old, ref, adv, mask = random_inputs(4, b=2, t=3, spread=0.1)
    f = lambda lp: grpo_loss(lp, old, ref, adv, mask, 0.04, 0.2)  # noqa: E731
    jax.config.update("jax_enable_x64", True)
    try:
        lp64 = jnp.asarray(logp, jnp.float64)
        g = np.asarray(
            jax.grad(
                lambda x: grpo_loss(
                    x,
                    jnp.asarray(old, jnp.float64),
                    jnp.asarray(ref, jnp.float64),
                    jnp.asarray(adv, jnp.float64),
                    jnp.asarray(mask, jnp.float64),
                    0.04,
                    0.2,
                )
            )(lp64)
        )
        h = 1e-6
        for i in range(2):
            for t in range(3):
                e = np.zeros_like(logp, dtype=np.float64)
                e[i, t] = h
                num = (
                    numpy_grpo_loss(logp + e, old, ref, adv, mask, 0.04, 0.2)
                    - numpy_grpo_loss(logp - e, old, ref, adv, mask, 0.04, 0.2)
                ) / (2 * h)
                assert g[i, t] == pytest.approx(num, abs=1e-4), (i, t)
    finally:
        jax.config.update("jax_enable_x64", False)
    assert np.isfinite(np.asarray(jax.grad(f)(jnp.asarray(logp)))).all()


def test_short_end_to_end_loop_learns_a_toy_reward(tmp_path):
    """Reward = 1 when the first generated token is 7: a few GRPO steps must raise the reward."""
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
    import r1ov_jax.train.grpo as grpo_mod

    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    model.lm_head.kernel.value = model.lm_head.kernel[...] * 20.0
    ref = nnx.clone(model)
    cfg = ml_collections.ConfigDict()
    cfg.grpo = default_grpo_config()
    cfg.grpo.num_generations, cfg.grpo.max_new_tokens, cfg.grpo.beta = 8, 3, 0.0
    cfg.grpo.reward_weights = {"accuracy": 1.0}
    from r1ov_jax.train.optim import default_optim_config
    from r1ov_jax.train.loop import default_train_config

    cfg.optim = default_optim_config()
    cfg.optim.lr, cfg.optim.warmup_ratio = 3e-2, 0.0
    cfg.train = default_train_config()
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = 12, 1, 100

    ids = np.array([[3, 4, 5], [9, 8, 7]])

    class Prompts:
        def __next__(self):
            return {"inputs": model.prepare_inputs(ids), "answers": ["7", "7"], "choices": [None, None]}

    decode = lambda toks: f"<answer>{int(toks[0])}</answer>"  # noqa: E731
    out = run_grpo(
        model, ref, Prompts(), decode, cfg, out_dir=str(tmp_path), eos_ids=(), pad_id=0, progress=False
    )
    from r1ov_jax.train.metrics import read_jsonl

    rewards = [r["grpo/reward"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
    assert out["step"] == 12 and grpo_mod is not None
