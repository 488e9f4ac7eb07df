"""The two stages as the trainers run them: SFT's ``train_step``; GRPO's sampler, log-prob pass and update."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from r1ov_jax.preflight.compile import Target, compile_phase
from r1ov_jax.preflight.flops import analytic_flops, count_flops, rollout_flops
from r1ov_jax.preflight.shapes import (
    abstract_model,
    abstract_optimizer,
    completion_shapes,
    image_cap,
    per_chip_bytes,
    place_batch,
    prompt_batch_shapes,
    prompt_shape,
    sds,
    sft_batch_shapes,
)


def preflight_sft(cfg: ml_collections.ConfigDict, target: Target) -> dict:
    from r1ov_jax.train import sft

    geometry = target.mcfg.vision.geometry()
    opt = abstract_optimizer(target.mcfg, target.model, cfg.sft.optim, int(cfg.sft.train.steps), target.mesh)
    batch = place_batch(sft_batch_shapes(cfg.pipeline, geometry), target.mesh)

    def lower():
        with target.ctx():
            return sft.train_step.lower(target.model, opt, batch)

    rep, _ = compile_phase("sft", lower, default_device=target.default_device)
    count_flops(rep, lower, [target.model], target)
    p = cfg.pipeline
    rep.model_flops = analytic_flops(
        "sft", target.mcfg, target.counts, batch=p.batch_size, seq_len=p.seq_len,
        patches=int(p.max_patches or 0), image_cap=image_cap(cfg, geometry),
    )  # fmt: skip
    if rep.fits:  # (a report that does not fit keeps the one OOM line as its note)
        rep.add_note(f"grad_accum={cfg.sft.optim.grad_accum}: one optimizer update per that many steps")
    return {"phases": [rep], "shapes": 1, "warning": ""}


def preflight_grpo(cfg: ml_collections.ConfigDict, target: Target) -> dict:
    from r1ov_jax.rollout import sampler
    from r1ov_jax.rollout.sampler import SamplingConfig
    from r1ov_jax.train import grpo

    g = cfg.rl.grpo
    group, new_tokens = int(g.num_generations), int(g.max_new_tokens)
    geometry = target.mcfg.vision.geometry()
    ps = prompt_shape(cfg.pipeline, geometry)
    mesh, model = target.mesh, target.model
    from r1ov_jax.models import lora

    opts = grpo.resolve_options(g, ps.batch)  # the trainer's resolved preset, minibatches and passes
    if not opts.needs_reference:  # beta = 0: run_grpo_stage builds no reference model
        ref = None
    elif lora.is_lora(model):  # the policy with its adapters off: no second set of weights
        ref = lora.AdaptersOff(model)
    else:  # run_grpo_stage's frozen nnx.clone of the policy, same placement
        ref = abstract_model(target.mcfg, mesh)
    opt = abstract_optimizer(
        target.mcfg, model, cfg.rl.optim, int(cfg.rl.train.steps) * int(g.num_iterations), mesh
    )
    prompt = place_batch(prompt_batch_shapes(ps, geometry), mesh)
    rows = ps.batch * group
    comp = place_batch(completion_shapes(rows, new_tokens), mesh)
    # the update runs on one minibatch of whole groups (grpo.policy_updates), opts.updates_per_step per step
    updates = opts.updates_per_step
    mb_ps = dataclasses.replace(ps, batch=ps.batch // opts.num_minibatches)  # resolve_options: it divides
    mb_prompt = place_batch(prompt_batch_shapes(mb_ps, geometry), mesh)
    mb_comp = place_batch(completion_shapes(mb_ps.batch * group, new_tokens), mesh)
    t = target.mcfg.text
    sampling = SamplingConfig(
        max_new_tokens=new_tokens, temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p),
        eos_ids=(int(t.eos_token_id if t.eos_token_id is not None else 0),), pad_id=int(t.pad_token_id or 0),
    )  # fmt: skip
    key = sds(jax.eval_shape(lambda: jax.random.key(0)), NamedSharding(mesh, PartitionSpec()))

    def lower_rollout():
        graphdef, state = nnx.split(model)  # here: count_flops varies the config in the graphdef
        with target.ctx():
            return sampler._generate_jit.lower(graphdef, state, prompt, key, cfg=sampling, num_samples=group)

    # the log-prob pass runs for the reference (beta > 0) and/or the trainer's old log-probs (off-policy)
    logprob_model = ref if ref is not None else model
    needs_logprobs = ref is not None or (not opts.on_policy and opts.old_logp == "trainer")

    def lower_logprobs():
        with target.ctx():
            return grpo._logprobs_jit.lower(
                logprob_model, prompt, comp["completions"], comp["comp_mask"], group=group
            )

    def lower_update():
        # as policy_updates calls it: the resolved preset's beta / epsilon / loss options, no reference
        # log-probs when beta = 0, no old log-probs on-policy, sampler log-probs only for the IS weights
        lp = mb_comp["logp"]
        with target.ctx():
            return grpo.grpo_update.lower(
                model, opt, mb_prompt, mb_comp["completions"], mb_comp["comp_mask"],
                None if opts.on_policy else lp, lp if opts.needs_reference else None, mb_comp["advantages"],
                lp if opts.loss.tis_cap is not None else None, mb_comp["comp_mask"], group=group,
                beta=opts.beta, epsilon=opts.epsilon, first_iteration=opts.on_policy, options=opts.loss,
            )  # fmt: skip

    policy_b, opt_b = (per_chip_bytes(nnx.state(x)) for x in (model, opt))
    # AdaptersOff's state *is* the policy's (shared arrays)
    ref_b = 0 if ref is None or lora.is_lora(model) else per_chip_bytes(nnx.state(ref))
    shape = dict(batch=ps.batch, length=ps.length, patches=ps.patches, group=group, new_tokens=new_tokens,
                 image_cap=image_cap(cfg, geometry))  # fmt: skip
    phases = []
    # (phase, lower, bytes resident outside, modules it traces, scanned towers: prefill's text path has a cache)
    plan = [("rollout", lower_rollout, ref_b + opt_b, [model], ("vision",))]
    if needs_logprobs:
        outside = (policy_b if ref is not None else ref_b) + opt_b
        plan.append(("logprobs", lower_logprobs, outside, [logprob_model], ("text", "vision")))
    plan.append(("update", lower_update, ref_b, [model], ("text", "vision")))
    for name, lower, outside, traced, towers in plan:
        rep, _ = compile_phase(name, lower, default_device=target.default_device)
        count_flops(rep, lower, traced, target, towers)
        rep.resident_outside = outside
        if name == "update":
            rep.model_flops = analytic_flops(
                name, target.mcfg, target.counts, **{**shape, "batch": mb_ps.batch}
            )
            # bytes are one update's; FLOPs and time the step's `updates` updates
            if updates > 1:
                rep.flops_per_chip *= updates
                rep.model_flops *= updates
                if rep.est_step_seconds is not None:
                    rep.est_step_seconds *= updates
                scaled = (f"update compiled on one minibatch of {mb_ps.batch} prompts x G={group}; FLOPs and "
                          f"time x {updates} updates per step")  # fmt: skip
                rep.add_note(scaled)
        else:
            rep.model_flops = analytic_flops(name, target.mcfg, target.counts, **shape)
        phases.append(rep)
    rollout = phases[0]
    if rollout.fits and rollout.flops_per_chip:  # (no count under --memory-only)
        # Scale the once-counted decode body: one decode step's analytic share per chip, times the ratio the
        # prefill shows between compiled and analytic counts, approximated by 1 (dense matmuls dominate).
        body = (analytic_flops("rollout", target.mcfg, target.counts, **{**shape, "new_tokens": 1})
                - analytic_flops("rollout", target.mcfg, target.counts, **{**shape, "new_tokens": 0}))  # fmt: skip
        counted = rollout.flops_per_chip
        rollout.flops_per_chip = rollout_flops(counted, body / target.topo.chips, new_tokens)
        if rollout.est_step_seconds is not None and counted:
            rollout.est_step_seconds *= rollout.flops_per_chip / counted
        rollout.add_note(
            f"decode while_loop counted once by XLA ({counted:.3g} FLOP/chip); scaled to {new_tokens} steps"
        )
    warning = ""
    if not ps.static:
        warning = (
            f"GRPO prompt shapes are not static ({ps.assumed}): the sampler and the log-prob pass recompile "
            "whenever the longest prompt or image of a batch changes; set pipeline.max_prompt_len and "
            "pipeline.max_prompt_patches"
        )
    return {"phases": phases, "shapes": 1 if ps.static else "unbounded", "warning": warning, "prompt": ps}
