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

Resume is loud about damage: a latest step that fails to restore (unreadable files, checksums that do not match,
NaN/inf) is reported in one line, moved to ``checkpoints.damaged/`` and the newest intact step is used instead.
``train.nan_policy``: "stop" (default) ends the run with NonFiniteError when the params become NaN/inf (checked
at every log step and before every save); "skip" rolls the model and optimizer back to the latest checkpoint and
carries on with the next batches.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import jax
import jax.numpy as jnp
import ml_collections

from r1ov_jax import runs
from r1ov_jax.config_utils import ConfigError
from r1ov_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    DamagedCheckpointError,
    NonFiniteError,
    PreemptionGuard,
    nonfinite_paths,
    train_state,
)
from r1ov_jax.train.metrics import MetricsWriter

log = logging.getLogger(__name__)
NAN_POLICIES = ("stop", "skip")


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
            nan_policy="stop",  # "stop" | "skip": what a NaN/inf in the params does (see module docstring)
        )
    )


def validate_train_config(tc, where: str = "train") -> None:
    """ConfigError naming the field for a ``train`` block value that would fail (or silently lose work) later."""
    for name in ("steps", "log_every", "ckpt_every", "keep_checkpoints", "eval_every"):
        if name not in tc:
            continue
        v = tc[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}.{name} must be an integer >= 1, got {v!r}")
    policy = tc.get("nan_policy", "stop")
    if policy not in NAN_POLICIES:
        raise ConfigError(f"{where}.nan_policy must be one of {NAN_POLICIES}, got {policy!r}")


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
        validate_train_config(tc)
        self.tc, self.model, self.optimizer, self.data_iter = tc, model, optimizer, data_iter
        self.nan_policy = tc.get("nan_policy", "stop")
        self.nan_skips = 0
        self.put, self.ctx = placement(model, optimizer, mesh)
        self.ckpt = Checkpointer(runs.checkpoints_dir(out_dir), every=tc.ckpt_every, keep=tc.keep_checkpoints)
        self.writer = MetricsWriter(out_dir, enabled=jax.process_index() == 0)
        self.guard = PreemptionGuard()

    def start(self, rng: jax.Array) -> tuple[int, jax.Array]:
        """(first step, rng): from the latest checkpoint (params, optimizer, RNG, data position) or fresh."""
        if self.ckpt.latest_step() is None:
            return 0, rng
        state, meta = self._restore_newest_intact(train_state(self.model, self.optimizer, rng))
        from flax import nnx

        nnx.update(self.model, state["params"])
        nnx.update(self.optimizer, state["opt"])
        step = int(meta["step"])
        if meta.get("data_state") is not None and hasattr(self.data_iter, "set_state"):
            self.data_iter.set_state(_decode_state(meta["data_state"]))
        self.writer.truncate_after(step)
        return step, jax.random.wrap_key_data(state["rng"])

    def _restore_newest_intact(self, target):
        """Newest step that restores and verifies; damaged newer steps are reported (one line each), then moved
        aside once an intact one is found. All damaged: the newest step's error."""
        damaged, first_error = [], None
        for step in sorted(self.ckpt.all_steps(), reverse=True):
            try:
                state, meta = self.ckpt.restore(step, target)
            except DamagedCheckpointError as e:
                first_error = first_error or e
                damaged.append(step)
                _loud(f"WARNING: {e}; trying an earlier step")
                continue
            for bad in damaged:
                moved = self.ckpt.quarantine(bad)
                _loud(f"WARNING: checkpoint step {bad} is damaged, moved to {moved}")
            if damaged:
                _loud(f"WARNING: resuming from step {step}, the newest intact checkpoint (not {damaged[0]})")
            return state, meta
        raise CheckpointError(f"no intact checkpoint in {self.ckpt.directory}: {first_error}")

    def log(self, step: int, scalars: dict) -> None:
        self.writer.write(step, scalars)

    def _check_finite(self, step: int) -> bool:
        """True when the params are finite; else stops (NonFiniteError) or, with nan_policy "skip", rolls back to
        the latest checkpoint and returns False."""
        from flax import nnx

        bad = nonfinite_paths(nnx.state(self.model, nnx.Param))
        if not bad:
            return True
        latest = self.ckpt.latest_step()
        msg = f"step {step}: params hold NaN/inf in {len(bad)} arrays (first: {bad[0]})"
        if self.nan_policy != "skip" or latest is None:
            raise NonFiniteError(
                f"{msg}; stopping (last checkpoint: step {latest}). Lower the learning rate, check the data, or "
                "set train.nan_policy=skip to roll back and continue"
            )
        self.ckpt.wait()
        state, _ = self.ckpt.restore(latest, train_state(self.model, self.optimizer, None), partial=True)
        nnx.update(self.model, state["params"])
        nnx.update(self.optimizer, state["opt"])
        self.nan_skips += 1
        _loud(f"WARNING: {msg}; nan_policy=skip: rolled back to checkpoint step {latest} and continuing")
        return False

    def end_step(self, step: int, rng: jax.Array) -> bool:
        """Saves on the interval and at the last step; on SIGTERM/SIGINT saves now and returns True.

        The params are checked for NaN/inf at every log step and before every save (``train.nan_policy``)."""
        saving = bool(self.guard) or step == self.tc.steps or self.ckpt.manager.should_save(step)
        if (saving or step % self.tc.log_every == 0) and not self._check_finite(step):
            return False  # rolled back: nothing to save from this step
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


def _loud(msg: str) -> None:
    """One line on stderr (and in the log): damage and roll-backs must not pass unnoticed."""
    log.warning("%s", msg)
    print(msg, file=sys.stderr, flush=True)


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
