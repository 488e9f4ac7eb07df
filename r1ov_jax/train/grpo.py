"""GRPO with verifiable rewards, as R1-Onevision trained (via VLM-R1 / open-r1-multimodal).

Symbols (paper → config): G = ``grpo.num_generations``, β = ``grpo.beta``, ε = ``grpo.epsilon``,
μ = ``grpo.num_iterations`` (policy updates per batch of rollouts), T = ``grpo.max_new_tokens``.

Per step: sample G completions per prompt with the *current* policy (our KV-cache sampler, no weight copy);
rewards r = format + accuracy; group advantage A_i = (r_i − mean_g r) / (std_g r + 1e-4); reference
log-probs from the frozen SFT params; then μ updates of

    L = mean_seq [ Σ_t m_t · −(min(ρ_t A, clip(ρ_t, 1−ε, 1+ε) A) − β KL_t) / Σ_t m_t ]
    ρ_t = exp(logp_t − old_logp_t),  KL_t = exp(ref_t − logp_t) − (ref_t − logp_t) − 1   (k3 estimator)

With μ = 1, old_logp = stop_gradient(logp), so ρ = 1 but its gradient is that of the policy gradient.
``grpo.skip_zero_advantage`` (default on) skips the update of a batch whose advantages are all zero (every group
tied): its gradient would be KL float noise only, which Adam would blow up to a full-size step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from r1ov_jax.models.qwen2_5_vl.model import decode_positions, next_positions
from r1ov_jax.rewards import compute_rewards
from r1ov_jax.rollout.sampler import SamplingConfig, generate
from r1ov_jax.sharding.mesh import host_local_rows
from r1ov_jax.train.loop import TrainingRun, placement
from r1ov_jax.train.losses import token_logprobs
from r1ov_jax.train.optim import make_nnx_optimizer

log = logging.getLogger(__name__)


def default_grpo_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            num_generations=8,
            beta=0.04,
            epsilon=0.2,
            num_iterations=1,
            max_new_tokens=256,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            reward_weights={"format": 1.0, "accuracy": 1.0},
            skip_zero_advantage=True,
        )
    )


# --------------------------------------------------------------------------- pure functions
def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4) -> jax.Array:
    """(r − mean_g) / (std_g + eps) within contiguous groups of ``group_size`` rows (torch-style unbiased std,
    as TRL computes it)."""
    r = rewards.reshape(-1, group_size)
    mean = r.mean(-1, keepdims=True)
    std = jnp.std(r, axis=-1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(policy || reference): ``exp(ref − logp) − (ref − logp) − 1`` (≥ 0)."""
    diff = ref_logp - logp
    return jnp.exp(diff) - diff - 1.0


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over the tokens where ``mask`` is set (0 when none is)."""
    mask = mask.astype(jnp.float32)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta: float, epsilon: float) -> jax.Array:
    """GRPO objective (scalar, to minimize).

    Args:
      logp, old_logp, ref_logp, mask: ``[batch, completion_len]`` (mask 1 on real completion tokens).
      advantages: ``[batch]``.
    """
    mask = mask.astype(jnp.float32)
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * a)
    per_token = -(surrogate - beta * k3_kl(logp, ref_logp))
    per_seq = (per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return per_seq.mean()


# --------------------------------------------------------------------------- model log-probs
def completion_logprobs(
    model, prompt: dict, completions: jax.Array, comp_mask: jax.Array, group: int, chunk_size: int = 1024
):
    """log p(completion tokens) ``[B*G, T]`` under ``model``: prompt embeddings (vision tower run once per
    prompt) repeated G times, then completions appended, one causal pass."""
    rep = lambda x, axis=0: jnp.repeat(x, group, axis=axis)  # noqa: E731
    x_prompt = rep(model.embed(prompt["input_ids"], prompt.get("pixel_values"), prompt.get("vision")))
    x = jnp.concatenate([x_prompt, model.embed(completions)], axis=1)
    seg_prompt, pos_prompt = rep(prompt["segment_ids"]), rep(prompt["positions"], axis=1)
    t = completions.shape[1]
    pos_comp = decode_positions(next_positions(pos_prompt, seg_prompt), t)
    segments = jnp.concatenate([seg_prompt, comp_mask.astype(jnp.int32)], axis=1)
    positions = jnp.concatenate([pos_prompt, pos_comp], axis=2)
    h = model.decoder(x, positions, segments).hidden
    length = seg_prompt.shape[1]
    w, vocab_major = model.output_projection()  # chunked LM head: no [B*G, T, vocab] logits
    logp, _ = token_logprobs(
        h[:, length - 1 : length - 1 + t],
        w,
        completions,
        vocab_major=vocab_major,
        chunk_size=chunk_size,
        dtype=model.cfg.dtype,
    )
    return logp


@nnx.jit(static_argnames=("group",))
def _logprobs_jit(model, prompt, completions, comp_mask, group):
    return completion_logprobs(model, prompt, completions, comp_mask, group)


@nnx.jit(static_argnames=("group", "beta", "epsilon", "first_iteration"), donate_argnums=(1,))
def grpo_update(
    model,
    optimizer,
    prompt,
    completions,
    comp_mask,
    old_logp,
    ref_logp,
    advantages,
    *,
    group,
    beta,
    epsilon,
    first_iteration,
):
    def loss_fn(m):
        logp = completion_logprobs(m, prompt, completions, comp_mask, group)
        old = jax.lax.stop_gradient(logp) if first_iteration else old_logp
        loss = grpo_loss(logp, old, ref_logp, advantages, comp_mask, beta, epsilon)
        ratio = jnp.exp(logp - old)
        clipped = ((ratio < 1 - epsilon) | (ratio > 1 + epsilon)).astype(jnp.float32)
        return loss, {
            "loss": loss,
            "kl": masked_mean(k3_kl(logp, ref_logp), comp_mask),
            "clip_frac": masked_mean(clipped, comp_mask),
        }

    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return aux


# --------------------------------------------------------------------------- training loop
def score_samples(samples, item: dict, decode_fn, weights: dict, group: int) -> dict[str, np.ndarray]:
    """Rewards ``{name: float32 [rows]}`` of this process's samples (all of them in a single-process run)."""
    tokens, lengths = host_local_rows(samples.tokens), host_local_rows(samples.lengths)
    prompt_index = np.arange(len(tokens)) // group  # this process's prompts, in order
    texts = [decode_fn(tok[:n]) for tok, n in zip(tokens, lengths)]
    golds = [item["answers"][i] for i in prompt_index]
    choices = [item["choices"][i] for i in prompt_index]
    rewards = compute_rewards(texts, golds, choices, weights, group_size=group)
    return {k: np.asarray(v, np.float32) for k, v in rewards.items()}


def run_grpo(
    model,
    ref_model,
    prompt_iter: Iterator[dict],
    decode_fn: Callable[[np.ndarray], str],
    cfg: ml_collections.ConfigDict,
    *,
    out_dir: str,
    eos_ids: tuple[int, ...],
    pad_id: int,
    progress: bool = True,
    mesh=None,
) -> dict:
    """GRPO from the current params of ``model`` (the SFT policy); ``ref_model`` = a frozen copy of the SFT
    policy (``nnx.clone(model)`` before training).

    ``prompt_iter`` yields dicts with ``inputs`` (``model.prepare_inputs`` of left-padded prompts),
    ``answers`` and ``choices`` (lists, one per prompt). ``decode_fn(token_ids) -> text`` (special tokens
    dropped) feeds the reward functions.
    """
    g, tc = cfg.grpo, cfg.train
    group = g.num_generations
    optimizer = make_nnx_optimizer(model, cfg.optim, tc.steps * g.num_iterations)
    run = TrainingRun(out_dir, tc, model, optimizer, prompt_iter, mesh=mesh)
    put, ctx = run.put, run.ctx
    if mesh is not None:
        placement(ref_model, None, mesh)
    sampling = SamplingConfig(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        eos_ids=tuple(eos_ids),
        pad_id=pad_id,
    )
    step, rng = run.start(jax.random.key(tc.seed))
    bar = tqdm(total=tc.steps, initial=step, desc="grpo", disable=not progress, dynamic_ncols=True)
    last = {}
    shapes = set()  # distinct prompt shapes seen: each one compiles the sampler and the log-prob pass again
    try:
        while step < tc.steps:
            item = next(prompt_iter)
            shape = tuple(
                tuple(np.shape(item["inputs"][k]))
                for k in ("input_ids", "pixel_values")
                if k in item["inputs"]
            )
            if shape not in shapes and shapes:
                log.warning(
                    "GRPO prompt shape %s is new (%d so far): the sampler and log-prob pass recompile; fix "
                    "pipeline.max_prompt_len / max_prompt_patches for static shapes",
                    shape,
                    len(shapes) + 1,
                )
            shapes.add(shape)
            prompt = put(item["inputs"])
            rng, key = jax.random.split(rng)
            t0 = time.perf_counter()
            with ctx():
                samples = generate(model, prompt, key, sampling, num_samples=group)
            t1 = time.perf_counter()
            # Each process decodes and scores the samples of its own prompts (it holds their answers); the
            # rewards then become global arrays laid out like the samples.
            rewards = put(score_samples(samples, item, decode_fn, dict(g.reward_weights), group))
            adv = group_advantages(rewards["total"], group)
            comps = jnp.asarray(samples.tokens)
            lengths = jnp.asarray(samples.lengths)
            comp_mask = jnp.arange(comps.shape[1])[None] < lengths[:, None]
            with ctx():
                ref_logp = jax.block_until_ready(
                    _logprobs_jit(ref_model, prompt, comps, comp_mask, group=group)
                )
            t2 = time.perf_counter()  # (blocking so the step breakdown is honest; dispatch is async)
            old_logp = None
            # A batch where every group's rewards tie has zero advantages: its only gradient would be the KL
            # term, which at policy == reference is float noise (~1e-6) that Adam would scale to a full step.
            skip = g.skip_zero_advantage and not bool(jnp.any(adv != 0))
            with ctx():
                for it in range(0 if skip else g.num_iterations):
                    if it == 0 and g.num_iterations > 1:  # μ > 1: ratios against the pre-update policy
                        old_logp = _logprobs_jit(model, prompt, comps, comp_mask, group=group)
                    aux = grpo_update(
                        model,
                        optimizer,
                        prompt,
                        comps,
                        comp_mask,
                        old_logp if old_logp is not None else ref_logp,
                        ref_logp,
                        adv,
                        group=group,
                        beta=float(g.beta),
                        epsilon=float(g.epsilon),
                        first_iteration=old_logp is None,
                    )
            if not skip:
                jax.block_until_ready(aux)
            t3 = time.perf_counter()
            step += 1
            if skip:  # still report where the policy stands
                with ctx():
                    logp = _logprobs_jit(model, prompt, comps, comp_mask, group=group)
                aux = {
                    "loss": 0.0,
                    "kl": float(masked_mean(k3_kl(logp, ref_logp), comp_mask)),
                    "clip_frac": 0.0,
                }
            last = {k: float(v) for k, v in aux.items()}
            last["skipped_update"] = float(skip)
            last["prompt_shapes"] = float(len(shapes))
            last.update(
                reward=float(jnp.mean(rewards["total"])),
                reward_std=float(jnp.std(rewards["total"])),
                format_rate=float(jnp.mean(rewards["format"])) if "format" in rewards else 0.0,
                accuracy=float(jnp.mean(rewards["accuracy"])) if "accuracy" in rewards else 0.0,
                completion_len=float(jnp.mean(lengths)),
                rollout_s=t1 - t0,
                ref_s=t2 - t1,
                update_s=t3 - t2,
            )
            if step % tc.log_every == 0 or step == tc.steps:
                run.log(step, {f"grpo/{k}": v for k, v in last.items()})
            bar.set_postfix(reward=f"{last['reward']:.2f}", acc=f"{last['accuracy']:.2f}")
            bar.update(1)
            if run.end_step(step, rng):
                return {"preempted": True, "step": step, **last}
    finally:
        bar.close()
        run.close()
    return {"step": step, **last}
