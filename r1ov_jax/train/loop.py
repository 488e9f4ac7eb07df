"""What every training loop shares: device placement, checkpoints with exact resume, preemption, metrics.

run = TrainingRun(out_dir, cfg.train, model, optimizer, data_iter, mesh=mesh)
step, rng = run.start(jax.random.key(seed))           # restores the latest checkpoint if there is one
while step < steps:
    with run.ctx():  ...one step...
    step += 1
    run.log(step, {...})
    if run.end_step(step, rng):                        # periodic save; True after a preemption save
        return {"preempted": True, ...}
run.close()
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import ml_collections

from r1ov_jax import runs
from r1ov_jax.train.checkpoint import Checkpointer, PreemptionGuard, train_state
from r1ov_jax.train.metrics import MetricsWriter


def default_train_config() -> ml_collections.ConfigDict:
    """The ``train`` block of a stage (SFT and GRPO): steps, logging, evaluation and checkpoint intervals."""
    return ml_collections.ConfigDict(
        dict(
            # batch shape lives in the pipeline config (pipeline.batch_size / seq_len), not here
            steps=100,
            log_every=10,
            eval_every=50,
            ckpt_every=50,
            keep_checkpoints=2,
            seed=0,
        )
    )


def placement(model, optimizer, mesh):
    """(batch placement fn, context factory) for single-device or mesh runs; shards model/optimizer in place."""
    if mesh is None:
        return (lambda b: jax.tree.map(jnp.asarray, b)), contextlib.nullcontext
    from r1ov_jax.sharding import activation_sharding, rules_for, shard_batch, shard_model, shard_optimizer

    shard_model(model, mesh)
    if optimizer is not None:
        shard_optimizer(optimizer, model, mesh)
    rules = rules_for(model.cfg, mesh)
    return (lambda b: shard_batch(b, mesh)), (lambda: activation_sharding(mesh, rules))


class TrainingRun:
    def __init__(
        self, out_dir: str, tc: ml_collections.ConfigDict, model, optimizer, data_iter, *, mesh=None
    ):
        self.tc, self.model, self.optimizer, self.data_iter = tc, model, optimizer, data_iter
        self.put, self.ctx = placement(model, optimizer, mesh)
        self.ckpt = Checkpointer(runs.checkpoints_dir(out_dir), every=tc.ckpt_every, keep=tc.keep_checkpoints)
        self.writer = MetricsWriter(out_dir, enabled=jax.process_index() == 0)
        self.guard = PreemptionGuard()

    def start(self, rng: jax.Array) -> tuple[int, jax.Array]:
        """(first step, rng): from the latest checkpoint (params, optimizer, RNG, data position) or fresh."""
        if self.ckpt.latest_step() is None:
            return 0, rng
        state, meta = self.ckpt.restore(None, train_state(self.model, self.optimizer, rng))
        from flax import nnx

        nnx.update(self.model, state["params"])
        nnx.update(self.optimizer, state["opt"])
        step = int(meta["step"])
        if meta.get("data_state") is not None and hasattr(self.data_iter, "set_state"):
            self.data_iter.set_state(_decode_state(meta["data_state"]))
        self.writer.truncate_after(step)
        return step, jax.random.wrap_key_data(state["rng"])

    def log(self, step: int, scalars: dict) -> None:
        self.writer.write(step, scalars)

    def end_step(self, step: int, rng: jax.Array) -> bool:
        """Saves on the interval and at the last step; on SIGTERM/SIGINT saves now and returns True."""
        state = train_state(self.model, self.optimizer, rng)
        meta = {"step": step, "data_state": _encode_state(self.data_iter)}
        if self.guard:
            self.ckpt.save(step, state, meta, force=True)
            self.ckpt.wait()
            return True
        self.ckpt.save(step, state, meta, force=step == self.tc.steps)
        return False

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()
        self.guard.close()


def _encode_state(it) -> object:
    """Data-iterator state as JSON (Grain states are dicts; some iterators return bytes)."""
    if not hasattr(it, "get_state"):
        return None
    state = it.get_state()
    if isinstance(state, bytes):
        return {"bytes": state.decode("latin-1")}
    return state


def _decode_state(state):
    if isinstance(state, dict) and set(state) == {"bytes"}:
        return state["bytes"].encode("latin-1")
    return state
