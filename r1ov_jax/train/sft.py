"""Supervised fine-tuning on formal reasoning traces: assistant-only cross-entropy over packed batches.

A batch is a dict of arrays (from ``r1ov_jax.data.pipeline`` in SFT mode):
  ``input_ids, segment_ids, loss_mask: [b, L]``, ``positions: [3, b, L]`` (per-segment M-RoPE),
  optional ``pixel_values: [N, C*T*P*P]`` and ``vision`` (geometry dict, see ``processing.positions``).
``loss_mask[t]`` marks tokens that are *targets* (assistant content and its ``<|im_end|>``); the logit at
``t - 1`` predicts token ``t``, and never across a packing boundary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from tqdm.auto import tqdm

from r1ov_jax.train.loop import TrainingRun
from r1ov_jax.train.losses import token_logprobs
from r1ov_jax.train.optim import make_nnx_optimizer

MODEL_KEYS = ("input_ids", "segment_ids", "positions", "pixel_values", "vision")


def token_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Next-token targets ``[b, L-1]`` and their weights (assistant tokens within the same segment)."""
    ids, seg = batch["input_ids"], batch["segment_ids"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    return ids[:, 1:], (batch["loss_mask"][:, 1:].astype(bool) & same).astype(jnp.float32)


def sft_loss(model, batch: dict, chunk_size: int = 1024) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over assistant target tokens of the batch (token-level mean).

    The LM head runs chunk by chunk over the sequence (``losses.token_logprobs``): the ``[b, L, vocab]`` logits
    and their softmax gradient never exist at once.
    """
    hidden = model.decoder_outputs(**{k: batch[k] for k in MODEL_KEYS if k in batch}).hidden[:, :-1]
    targets, weights = token_targets(batch)
    w, vocab_major = model.output_projection()
    logp, hit = token_logprobs(
        hidden, w, targets, vocab_major=vocab_major, chunk_size=chunk_size, dtype=model.cfg.dtype,
        unroll=model.cfg.head_unroll
    )  # fmt: skip
    n = jnp.maximum(weights.sum(), 1.0)
    loss = -(logp * weights).sum() / n
    acc = (hit * weights).sum() / n
    return loss, {"loss": loss, "token_acc": acc, "tokens": weights.sum()}


@nnx.jit(donate_argnums=(0, 1))
def train_step(model, optimizer, batch):
    # gradients of what the optimizer updates only (LoRA adapters; no frozen group): no others are computed
    wrt = nnx.DiffState(0, optimizer.wrt)
    (_, aux), grads = nnx.value_and_grad(sft_loss, has_aux=True, argnums=wrt)(model, batch)
    optimizer.update(model, grads)
    aux["grad_norm"] = optax.global_norm(grads)
    return aux


@nnx.jit
def eval_step(model, batch):
    return sft_loss(model, batch)[1]


def run_sft(
    model,
    train_iter: Iterator[dict],
    cfg: ml_collections.ConfigDict,
    *,
    out_dir: str,
    eval_batches: list[dict] | None = None,
    progress: bool = True,
    mesh=None,
) -> dict:
    """Trains ``model`` in place for ``cfg.train.steps`` steps, resuming from ``out_dir/checkpoints``.

    ``train_iter`` may be a Grain iterator (its ``get_state``/``set_state`` make resume exact). Returns the
    final metrics dict. A SIGTERM/SIGINT saves a checkpoint at the current step and returns early with
    ``{"preempted": True}``. With ``mesh``, params, optimizer state and batches are sharded over it (each
    process feeds its own slice of the global batch).
    """
    tc = cfg.train
    optimizer = make_nnx_optimizer(model, cfg.optim, tc.steps)
    run = TrainingRun(out_dir, tc, model, optimizer, train_iter, mesh=mesh)
    step, rng = run.start(jax.random.key(tc.seed))
    bar = tqdm(total=tc.steps, initial=step, desc="sft", disable=not progress, dynamic_ncols=True)
    last, data_wait, t0 = {}, 0.0, time.perf_counter()
    try:
        while step < tc.steps:
            # data wait = the input pipeline only: placing the batch blocks until the step still running (async
            # dispatch) is done, which is compute (on the demo's CPU it was 84% of the step, 3% the pipeline)
            t_data = time.perf_counter()
            raw = next(train_iter)
            data_wait += time.perf_counter() - t_data
            batch = run.put(raw)
            with run.ctx():
                aux = train_step(model, optimizer, batch)
            step += 1
            if step % tc.log_every == 0 or step == tc.steps:
                last = {k: float(v) for k, v in aux.items()}
                last["lr"] = float(optimizer_lr(cfg, step))
                last["data_wait_frac"] = data_wait / max(time.perf_counter() - t0, 1e-9)
                run.log(step, {f"train/{k}": v for k, v in last.items()})
                bar.set_postfix(loss=f"{last['loss']:.3f}")
            if eval_batches and (step % tc.eval_every == 0 or step == tc.steps):
                with run.ctx():
                    ev = [jax.device_get(eval_step(model, run.put(b))) for b in eval_batches]
                tokens = sum(float(e["tokens"]) for e in ev)
                run.log(step, {"eval/loss": sum(float(e["loss"]) * float(e["tokens"]) for e in ev) / tokens})
            bar.update(1)
            if run.end_step(step, rng):
                return {"preempted": True, "step": step, **last}
    finally:
        bar.close()
        run.close()
    return {"step": step, **last}


def optimizer_lr(cfg, step):
    from r1ov_jax.train.optim import schedule, updates

    return schedule(cfg.optim, updates(cfg.optim, cfg.train.steps))(step // max(cfg.optim.grad_accum, 1))
