"""μ × minibatches: the optimizer updates of a step and the loss of each equal a hand-computed schedule on a
toy model; old log-probs come from one pass per batch; β = 0 runs no reference forward; sampler log-probs."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import r1ov_jax.train.grpo as grpo
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.train.grpo_config import default_grpo_config, resolve_options
from r1ov_jax.train.grpo_loss import grpo_loss
from r1ov_jax.train.loop import default_train_config
from r1ov_jax.train.optim import default_optim_config

G, T = 2, 4
IDS = np.array([[3, 4, 5], [9, 8, 7], [5, 5, 6], [6, 2, 3]])


def first_token_is_7(completions, golds, choices, **kwargs):
    """User reward (``module:function``) for the toy loops: 1 when the decoded answer is the gold."""
    return [float(re.search(r"<answer>(\d+)", c).group(1) == g) for c, g in zip(completions, golds)]


def _toy_batch(model, advantages=None):
    prompt = jax.tree.map(jnp.asarray, model.prepare_inputs(IDS))
    rng = np.random.default_rng(0)
    comps = jnp.asarray(rng.integers(1, 50, (len(IDS) * G, T)), jnp.int32)
    lengths = jnp.asarray([4, 2, 3, 4, 1, 4, 2, 3])
    mask = jnp.arange(T)[None] < lengths[:, None]
    adv = jnp.asarray(rng.normal(0, 1, len(IDS) * G) if advantages is None else advantages, jnp.float32)
    sampler = grpo._logprobs_jit(model, prompt, comps, mask, group=G)
    return grpo.TrainBatch(prompt, comps, mask, mask, sampler, adv, len(IDS))


def _opts(**kw):
    g = default_grpo_config()
    g.num_generations, g.max_new_tokens = G, T
    for k, v in kw.items():
        g[k] = v
    return resolve_options(g)


def _hand_schedule(model, batch, ref_logp, opts, lr):
    """Plain jax.grad + SGD, written out: old log-probs once, then μ passes over contiguous minibatches."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    old = grpo._logprobs_jit(model, batch.prompt, batch.completions, batch.comp_mask, group=G)
    per = batch.num_prompts // opts.num_minibatches

    @jax.jit
    def value_and_grad(p, prompt, comps, mask, old_mb, ref_mb, adv):
        def loss(p):
            lp = grpo.completion_logprobs(nnx.merge(graphdef, p, rest), prompt, comps, mask, G)
            return grpo_loss(lp, old_mb, ref_mb, adv, mask, opts.beta, opts.epsilon)

        return jax.value_and_grad(loss)(p)

    losses = []
    for _ in range(opts.num_iterations):
        for lo in range(0, batch.num_prompts, per):
            hi, rows = lo + per, slice(lo * G, (lo + per) * G)
            prompt = {k: (v[:, lo:hi] if k == "positions" else v[lo:hi]) for k, v in batch.prompt.items()}
            value, grads = value_and_grad(params, prompt, batch.completions[rows], batch.comp_mask[rows],
                                          old[rows], ref_logp[rows], batch.advantages[rows])  # fmt: skip
            losses.append(float(value))
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return losses, params


def test_updates_and_losses_follow_the_hand_computed_schedule():
    lr = 0.3
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    ref, hand = nnx.clone(model), nnx.clone(model)
    with jax.default_matmul_precision("highest"):
        batch = _toy_batch(model)
        ref_logp = grpo.reference_logprobs(ref, batch.prompt, batch.completions, batch.comp_mask, G)
        opts = _opts(num_iterations=2, num_minibatches=2)
        assert opts.updates_per_step == 4 and not opts.on_policy
        old = grpo.old_logprobs(model, batch, opts)
        optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
        auxes = grpo.policy_updates(model, optimizer, batch, old, ref_logp, opts)
        want, params = _hand_schedule(hand, batch, ref_logp, opts, lr)
    assert len(auxes) == 4 and all(a is not None for a in auxes) and int(optimizer.step[...]) == 4
    np.testing.assert_allclose([float(a["loss"]) for a in auxes], want, rtol=2e-4, atol=1e-6)
    assert abs(want[2] - want[0]) > 1e-3  # the second pass sees the updated policy (ratios != 1)
    assert float(auxes[3]["clip_frac"]) > 0  # and clipping acts there
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-5)


def test_minibatch_with_zero_advantages_is_skipped():
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    adv = np.array([1.0, -1.0, 0.5, -0.5, 0, 0, 0, 0], np.float32)  # prompts 2, 3 tied
    batch = _toy_batch(model, adv)
    opts = _opts(num_iterations=2, num_minibatches=2, beta=0.0, preset="dr_grpo")
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    auxes = grpo.policy_updates(model, optimizer, batch, grpo.old_logprobs(model, batch, opts), None, opts)
    assert [a is None for a in auxes] == [False, True, False, True] and int(optimizer.step[...]) == 2


def test_sampler_old_logprobs_and_importance_weights():
    """old_logp="sampler" uses the sampler's log-probs (no pass); with the same params and dtype the sampler and
    the trainer agree, so the truncated importance weights are 1."""
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    prompt = model.prepare_inputs(IDS[:2])
    from r1ov_jax.rollout.sampler import SamplingConfig, generate

    s = generate(model, prompt, 0, SamplingConfig(max_new_tokens=T), num_samples=G)
    p = jax.tree.map(jnp.asarray, prompt)
    mask = jnp.arange(T)[None] < jnp.asarray(s.lengths)[:, None]
    trainer = grpo.completion_logprobs(model, p, jnp.asarray(s.tokens), mask, G)
    np.testing.assert_allclose(np.asarray(trainer) * np.asarray(mask), s.logprobs, atol=2e-4)
    batch = grpo.TrainBatch(p, jnp.asarray(s.tokens), mask, mask, jnp.asarray(s.logprobs),
                            jnp.ones(2 * G), 2)  # fmt: skip
    assert grpo.old_logprobs(model, batch, _opts(old_logp="sampler", num_iterations=2)) is batch.sampler_logp
    opts = _opts(tis_cap=2.0, beta=0.0)
    optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    (aux,) = grpo.policy_updates(model, optimizer, batch, None, None, opts)
    assert float(aux["is_weight"]) == pytest.approx(1.0, abs=1e-3)


def _toy_run(tmp_path, monkeypatch, steps=2, **grpo_kw):
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    cfg = ml_collections.ConfigDict({"optim": default_optim_config(), "train": default_train_config()})
    cfg.grpo = default_grpo_config()
    cfg.grpo.num_generations, cfg.grpo.max_new_tokens = 4, 3
    for k, v in grpo_kw.items():
        cfg.grpo[k] = v
    cfg.rewards = {"first_token_is_7": 1.0}
    cfg.reward_fns = {"first_token_is_7": f"{__name__}:first_token_is_7"}
    cfg.optim.lr, cfg.optim.warmup_ratio = 1e-2, 0.0
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = steps, 1, 100
    ids = IDS[:2]

    class Prompts:
        def __next__(self):
            return {"inputs": model.prepare_inputs(ids), "answers": ["7", "7"], "choices": [None, None]}

    calls = {"ref": 0, "logprobs": 0}
    real_ref, real_lp = grpo.reference_logprobs, grpo._logprobs_jit

    def counting_ref(*a, **k):
        calls["ref"] += 1
        return real_ref(*a, **k)

    def counting_lp(*a, **k):
        calls["logprobs"] += 1
        return real_lp(*a, **k)

    monkeypatch.setattr(grpo, "reference_logprobs", counting_ref)
    monkeypatch.setattr(grpo, "_logprobs_jit", counting_lp)
    decode = lambda toks: f"<answer>{int(toks[0])}</answer>"  # noqa: E731
    out = grpo.run_grpo(model, nnx.clone(model), Prompts(), decode, cfg, out_dir=str(tmp_path), eos_ids=(),
                        pad_id=0, progress=False)  # fmt: skip
    return out, calls


def test_beta_zero_runs_no_reference_and_old_logprobs_once_per_batch(tmp_path, monkeypatch):
    out, calls = _toy_run(tmp_path / "a", monkeypatch, preset="dapo", dynamic_sampling=False,
                          num_iterations=2, num_minibatches=2)  # fmt: skip
    assert calls["ref"] == 0  # β = 0: no reference forward at all
    assert calls["logprobs"] == 2  # one old-log-prob pass per batch (2 steps), not one per update
    assert out["step"] == 2 and "kl" not in out
    out, calls = _toy_run(tmp_path / "b", monkeypatch, steps=1)  # plain GRPO: β = 0.04, on-policy
    assert (
        calls["ref"] == 1 and "kl" in out
    )  # the reference pass; no old pass (only a tied batch's KL report)
    assert calls["logprobs"] == calls["ref"] + int(out["skipped_update"])
