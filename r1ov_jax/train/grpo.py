"""GRPO with verifiable rewards, as R1-Onevision trained (via VLM-R1 / open-r1-multimodal), plus the options
of today's RL frameworks (DAPO, Dr. GRPO, GSPO; `grpo_config` has the presets and paper symbols).

Per step: sample G completions per prompt with the *current* policy (our KV-cache sampler, no weight copy);
rewards by name (`rewards.registry`), plus DAPO's soft overlong penalty; with dynamic sampling, draw more prompt
batches until ``prompt_batch_size`` groups have rewards that do not all tie; group advantages; reference
log-probs from the frozen SFT policy (skipped when β = 0); then μ = ``num_iterations`` passes over
``num_minibatches`` minibatches of whole groups, one optimizer update each, of the loss in `grpo_loss`:

    L = agg_t [ −min(ρ_t A, clip(ρ_t, 1−ε, 1+ε_high) A) + β KL_t ],  ρ_t = exp(logp_t − old_t)

The old log-probs are computed once per batch, before any update (or taken from the sampler, ``old_logp =
"sampler"``). With μ = 1 and one minibatch, old = stop_gradient(logp): ρ = 1 but its gradient is the policy
gradient's, and no extra pass is needed. ``grpo.skip_zero_advantage`` (default on) skips an update whose
advantages are all zero (every group tied): its gradient would be KL float noise only, which Adam would blow up
to a full-size step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from r1ov_jax.config_utils import ConfigError
from r1ov_jax.models.qwen2_5_vl.model import decode_positions, next_positions
from r1ov_jax.rewards import compute_rewards, resolve_rewards
from r1ov_jax.rollout.sampler import SamplingConfig, generate
from r1ov_jax.sharding.mesh import host_local_rows
from r1ov_jax.train.dynamic_sampling import Rollout, collect_mixed
from r1ov_jax.train.grpo_config import GRPOOptions, default_grpo_config, describe, resolve_options
from r1ov_jax.train.grpo_loss import (
    LossOptions,
    clip_fraction,
    group_advantages,
    grpo_loss,
    k3_kl,
    masked_mean,
    overlong_penalty,
    token_kl,
    truncated_is_weights,
)
from r1ov_jax.train.loop import TrainingRun, placement
from r1ov_jax.train.losses import token_logprobs
from r1ov_jax.train.optim import make_nnx_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "GRPOOptions",
    "check_config",
    "default_grpo_config",
    "group_advantages",
    "grpo_loss",
    "grpo_update",
    "k3_kl",
    "masked_mean",
    "reference_logprobs",
    "resolve_options",
    "run_grpo",
]


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
        unroll=model.cfg.head_unroll,
    )
    return logp


@nnx.jit(static_argnames=("group",))
def _logprobs_jit(model, prompt, completions, comp_mask, group):
    return completion_logprobs(model, prompt, completions, comp_mask, group)


def reference_logprobs(ref_model, prompt, completions, comp_mask, group: int) -> jax.Array:
    """The reference pass: log-probs of the completions under the frozen SFT policy (the KL anchor). The one
    place the reference is computed (never called when β = 0)."""
    return _logprobs_jit(ref_model, prompt, completions, comp_mask, group=group)


@nnx.jit(
    static_argnames=("group", "beta", "epsilon", "first_iteration", "options"),
    donate_argnums=(1,),
)
def grpo_update(
    model,
    optimizer,
    prompt,
    completions,
    comp_mask,
    old_logp,
    ref_logp,
    advantages,
    sampler_logp=None,
    loss_mask=None,
    *,
    group,
    beta,
    epsilon,
    first_iteration,
    options: LossOptions = LossOptions(),
):
    """One optimizer update on a batch of whole groups. ``first_iteration``: old = stop_gradient(logp) (the
    on-policy case; ``old_logp`` unused). ``loss_mask`` (default ``comp_mask``) drops tokens from the loss only;
    ``sampler_logp`` feeds the truncated importance weights when ``options.tis_cap`` is set."""
    mask = comp_mask if loss_mask is None else loss_mask

    def loss_fn(m):
        logp = completion_logprobs(m, prompt, completions, comp_mask, group)
        old = jax.lax.stop_gradient(logp) if first_iteration else old_logp
        weights = None
        if options.tis_cap is not None:
            weights = truncated_is_weights(jax.lax.stop_gradient(old), sampler_logp, options.tis_cap)
        loss = grpo_loss(
            logp, old, ref_logp, advantages, mask, beta, epsilon, is_weights=weights, **options.loss_kwargs()
        )
        aux = {
            "loss": loss,
            "clip_frac": clip_fraction(logp, old, mask, epsilon, options.epsilon_high, options.ratio_level),
        }
        if ref_logp is not None:
            aux["kl"] = masked_mean(token_kl(logp, ref_logp, options.kl_estimator), mask)
        if weights is not None:
            aux["is_weight"] = masked_mean(weights, mask)
        return loss, aux

    wrt = nnx.DiffState(0, optimizer.wrt)  # LoRA adapters / unfrozen groups only
    (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True, argnums=wrt)(model)
    optimizer.update(model, grads)
    return aux


# --------------------------------------------------------------------------- batches
@dataclasses.dataclass
class TrainBatch:
    """A step's rollouts on device (global arrays in multi-process runs); rows grouped by prompt."""

    prompt: dict
    completions: jax.Array  # int32 [B*G, T]
    comp_mask: jax.Array  # bool [B*G, T]: generated tokens (attention)
    loss_mask: jax.Array  # bool [B*G, T]: tokens in the loss (truncated completions dropped if asked)
    sampler_logp: jax.Array  # float32 [B*G, T]
    advantages: jax.Array  # float32 [B*G]
    num_prompts: int

    def minibatch(self, lo: int, hi: int, group: int) -> dict:
        """Prompts [lo, hi) with their G completions each, as ``grpo_update`` arguments."""
        rows = slice(lo * group, hi * group)
        prompt = {k: _slice_prompt(k, v, lo, hi) for k, v in self.prompt.items()}
        return dict(
            prompt=prompt,
            completions=self.completions[rows],
            comp_mask=self.comp_mask[rows],
            loss_mask=self.loss_mask[rows],
            sampler_logp=self.sampler_logp[rows],
            advantages=self.advantages[rows],
        )


def _slice_prompt(key, x, lo, hi):
    if isinstance(x, dict):
        return {k: _slice_prompt(k, v, lo, hi) for k, v in x.items()}
    return x[:, lo:hi] if key == "positions" else x[lo:hi]


def policy_updates(model, optimizer, batch: TrainBatch, old_logp, ref_logp, opts: GRPOOptions) -> list[dict]:
    """μ passes over the minibatches (contiguous blocks of whole groups, the same split every pass), one
    optimizer update each; the aux dict of every update (None where a minibatch with all-zero advantages was
    skipped). ``old_logp`` None: the on-policy case (old = stop_gradient(logp) inside the update)."""
    n_mb = opts.num_minibatches
    per = batch.num_prompts // n_mb
    if per * n_mb != batch.num_prompts:  # dynamic sampling ran out of draws: split what there is
        per = max(1, -(-batch.num_prompts // n_mb))
    bounds = [(lo, min(lo + per, batch.num_prompts)) for lo in range(0, batch.num_prompts, per)]
    auxes = []
    for _ in range(opts.num_iterations):
        for lo, hi in bounds:
            mb = batch.minibatch(lo, hi, opts.group)
            rows = slice(lo * opts.group, hi * opts.group)
            if opts.skip_zero_advantage and not bool(jnp.any(mb["advantages"] != 0)):
                auxes.append(None)
                continue
            aux = grpo_update(
                model,
                optimizer,
                mb["prompt"],
                mb["completions"],
                mb["comp_mask"],
                None if old_logp is None else old_logp[rows],
                None if ref_logp is None else ref_logp[rows],
                mb["advantages"],
                mb["sampler_logp"] if opts.loss.tis_cap is not None else None,
                mb["loss_mask"],
                group=opts.group,
                beta=opts.beta,
                epsilon=opts.epsilon,
                first_iteration=old_logp is None,
                options=opts.loss,
            )
            auxes.append(aux)
    return auxes


def old_logprobs(model, batch: TrainBatch, opts: GRPOOptions):
    """The pre-update log-probs the ratios compare with, computed once per batch; None when on-policy."""
    if opts.on_policy:
        return None
    if opts.old_logp == "sampler":
        return batch.sampler_logp
    return _logprobs_jit(model, batch.prompt, batch.completions, batch.comp_mask, group=opts.group)


# --------------------------------------------------------------------------- rollouts and rewards
def score_samples(samples, item: dict, decode_fn, terms, group: int, lengths=None) -> dict[str, np.ndarray]:
    """Rewards ``{name: float32 [rows]}`` of this process's samples (all of them in a single-process run).
    ``terms``: `rewards.resolve_rewards` output (or a legacy ``{name: weight}`` dict)."""
    tokens = host_local_rows(samples.tokens)
    lengths = host_local_rows(samples.lengths) if lengths is None else lengths
    prompt_index = np.arange(len(tokens)) // group  # this process's prompts, in order
    texts = [decode_fn(tok[:n]) for tok, n in zip(tokens, lengths)]
    golds = [item["answers"][i] for i in prompt_index]
    choices = [item["choices"][i] for i in prompt_index]
    kw = dict(weights=terms) if isinstance(terms, dict) else dict(terms=terms)
    rewards = compute_rewards(texts, golds, choices, group_size=group, lengths=list(lengths), **kw)
    return {k: np.asarray(v, np.float32) for k, v in rewards.items()}


def reward_weights(cfg: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(name -> weight, name -> "module:function") of a run: ``rl.rewards`` / ``rl.reward_fns``, or the legacy
    ``grpo.reward_weights`` when that is set; format 1 + accuracy 1 when neither is."""
    legacy = cfg.grpo.get("reward_weights")
    weights = legacy if legacy is not None else cfg.get("rewards")
    weights = dict(weights) if weights is not None else {"format": 1.0, "accuracy": 1.0}
    return weights, dict(cfg.get("reward_fns") or {})


def _rollout(model, prompt_dev, item, key, sampling, decode_fn, terms, opts: GRPOOptions, eos_ids):
    """Samples and scores one prompt batch: (samples, host-local rewards incl. overlong, host-local truncated)."""
    samples = generate(model, prompt_dev, key, sampling, num_samples=opts.group)
    tokens, lengths = host_local_rows(samples.tokens), host_local_rows(samples.lengths)
    rewards = score_samples(samples, item, decode_fn, terms, opts.group, lengths=lengths)
    truncated = (
        ~np.isin(tokens, np.asarray(eos_ids, np.int64)).any(-1) if eos_ids else lengths >= tokens.shape[1]
    )
    if opts.overlong_buffer:
        pen = overlong_penalty(lengths, tokens.shape[1], opts.overlong_buffer, opts.overlong_penalty)
        rewards["overlong"] = pen
        rewards["total"] = rewards["total"] + pen
    return samples, rewards, np.asarray(truncated, bool)


def _train_batch(prompt, completions, lengths, sampler_logp, rewards_total, truncated, opts, n_prompts):
    comps = jnp.asarray(completions)
    comp_mask = jnp.arange(comps.shape[1])[None] < jnp.asarray(lengths)[:, None]
    loss_mask = comp_mask & ~jnp.asarray(truncated)[:, None] if opts.mask_truncated else comp_mask
    adv = group_advantages(jnp.asarray(rewards_total), opts.group, scale=opts.advantage_scale)
    return TrainBatch(prompt, comps, comp_mask, loss_mask, jnp.asarray(sampler_logp), adv, n_prompts)


# --------------------------------------------------------------------------- training loop
def check_config(cfg: ml_collections.ConfigDict, prompt_batch_size: int | None = None):
    """(options, reward terms) of a stage view (``grpo``, ``rewards``, ``reward_fns``); ConfigError /
    InvalidInputError naming the field or reward, before any model is built. User rewards are imported and
    dry-run here."""
    opts = resolve_options(cfg.grpo, prompt_batch_size)
    weights, fns = reward_weights(cfg)
    return opts, resolve_rewards(weights, fns)


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
    policy (``nnx.clone(model)`` before training; unused when β = 0).

    ``prompt_iter`` yields dicts with ``inputs`` (``model.prepare_inputs`` of left-padded prompts),
    ``answers`` and ``choices`` (lists, one per prompt). ``decode_fn(token_ids) -> text`` (special tokens
    dropped) feeds the reward functions. ``cfg``: ``optim``, ``train``, ``grpo`` and optionally ``rewards`` /
    ``reward_fns`` (see `reward_weights`).
    """
    g, tc = cfg.grpo, cfg.train
    opts, terms = check_config(cfg)  # imports and dry-runs user rewards: fail before any rollout
    log.info("%s; rewards %s", describe(opts), {t.name: t.weight for t in terms})
    if opts.dynamic_sampling and jax.process_count() > 1:
        raise ConfigError(
            "rl.grpo.dynamic_sampling runs in single-process jobs only (rollouts filtered on host)"
        )
    group = opts.group
    optimizer = make_nnx_optimizer(model, cfg.optim, tc.steps * opts.updates_per_step)
    run = TrainingRun(out_dir, tc, model, optimizer, prompt_iter, mesh=mesh)
    put, ctx = run.put, run.ctx
    if mesh is not None and opts.needs_reference:
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

    def next_item():
        item = next(prompt_iter)
        shape = tuple(
            tuple(np.shape(item["inputs"][k])) for k in ("input_ids", "pixel_values") if k in item["inputs"]
        )
        if shape not in shapes and shapes:
            log.warning(
                "GRPO prompt shape %s is new (%d so far): the sampler and log-prob pass recompile; fix "
                "pipeline.max_prompt_len / max_prompt_patches for static shapes",
                shape,
                len(shapes) + 1,
            )
        shapes.add(shape)
        return item

    try:
        while step < tc.steps:
            t0 = time.perf_counter()
            rng, key = jax.random.split(rng)
            if opts.dynamic_sampling:
                keys = iter(jax.random.split(key, opts.max_draws))

                def draw():
                    item = next_item()
                    with ctx():
                        samples, rewards, truncated = _rollout(
                            model,
                            put(item["inputs"]),
                            item,
                            next(keys),
                            sampling,
                            decode_fn,
                            terms,
                            opts,
                            eos_ids,
                        )
                    return Rollout(
                        item["inputs"], list(item["answers"]), list(item["choices"]), np.asarray(samples.tokens),
                        np.asarray(samples.logprobs), np.asarray(samples.lengths), truncated, rewards, group,
                    )  # fmt: skip

                # as many mixed groups as one drawn batch has prompts (pipeline.prompt_batch_size)
                kept, ds, seen = collect_mixed(draw, None, opts.max_draws)
                batch = None
                if kept is not None:
                    batch = _train_batch(
                        put(kept.inputs), kept.tokens, kept.lengths, kept.logprobs, kept.rewards["total"],
                        kept.truncated, opts, kept.num_prompts,
                    )  # fmt: skip
            else:
                item = next_item()
                prompt = put(item["inputs"])
                with ctx():
                    samples, rewards, truncated = _rollout(
                        model, prompt, item, key, sampling, decode_fn, terms, opts, eos_ids
                    )
                g_rewards = seen = put(rewards)  # global arrays: the metrics average over every process
                n_prompts = int(np.shape(item["inputs"]["input_ids"])[0]) * jax.process_count()
                batch = _train_batch(
                    prompt, samples.tokens, samples.lengths, samples.logprobs, g_rewards["total"],
                    put({"t": truncated})["t"], opts, n_prompts,
                )  # fmt: skip
                ds = {"draws": 1, "groups_drawn": n_prompts, "groups_kept": n_prompts}
            t1 = time.perf_counter()
            ref_logp = old = None
            with ctx():
                if batch is not None and opts.needs_reference:
                    ref_logp = jax.block_until_ready(
                        reference_logprobs(ref_model, batch.prompt, batch.completions, batch.comp_mask, group)
                    )
            t2 = time.perf_counter()  # (blocking so the step breakdown is honest; dispatch is async)
            auxes = []
            with ctx():
                if batch is not None:
                    old = old_logprobs(model, batch, opts)
                    if old is not None:
                        old = jax.block_until_ready(old)
                t_old = time.perf_counter()
                if batch is not None:
                    auxes = policy_updates(model, optimizer, batch, old, ref_logp, opts)
            done = [a for a in auxes if a is not None]
            if done:
                jax.block_until_ready(done[-1])
            t3 = time.perf_counter()
            step += 1
            last = _step_metrics(done, batch, ref_logp, model, opts, ctx)
            last.update(
                updates=float(len(done)),
                skipped_update=float(not done),
                prompt_shapes=float(len(shapes)),
                draws=float(ds["draws"]),
                groups_drawn=float(ds["groups_drawn"]),
                groups_kept=float(ds["groups_kept"]),
                reward=float(jnp.mean(seen["total"])),
                reward_std=float(jnp.std(seen["total"])),
                format_rate=float(jnp.mean(seen["format"])) if "format" in seen else 0.0,
                accuracy=float(jnp.mean(seen["accuracy"])) if "accuracy" in seen else 0.0,
                completion_len=float(jnp.mean(batch.comp_mask.sum(-1))) if batch is not None else 0.0,
                rollout_s=t1 - t0,
                ref_s=t2 - t1,
                old_logp_s=t_old - t2,
                update_s=t3 - t_old,
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


def _step_metrics(done, batch, ref_logp, model, opts, ctx) -> dict:
    """Means over the step's updates; without any update, where the policy stands (loss 0, its KL)."""
    if done:
        keys = done[0].keys()
        return {k: float(np.mean([float(a[k]) for a in done])) for k in keys}
    out = {"loss": 0.0, "clip_frac": 0.0}
    if batch is not None and ref_logp is not None:
        with ctx():
            logp = _logprobs_jit(model, batch.prompt, batch.completions, batch.comp_mask, group=opts.group)
        out["kl"] = float(masked_mean(token_kl(logp, ref_logp, opts.loss.kl_estimator), batch.loss_mask))
    return out
