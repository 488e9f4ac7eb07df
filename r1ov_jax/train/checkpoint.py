"""Orbax checkpoints of a training run: model params, optimizer state, step, RNG and data-iterator state.

Saves are atomic (Orbax writes to a temporary directory and renames on commit), asynchronous, every
``every`` steps with the last ``keep`` retained, and also on SIGTERM/SIGINT (preemption) via
:class:`PreemptionGuard`. Restores go onto whatever abstract target (and sharding) the caller gives, so a
checkpoint saved on one mesh restores onto another.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from r1ov_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, partial, damaged or does not match the model."""


class PreemptionGuard:
    """Turns SIGTERM/SIGINT into a flag the training loop polls, so it can save and exit cleanly."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = threading.Event()
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.requested.set()

    def __bool__(self):
        """True when any process was signalled; all processes agree, so they save at the same step."""
        flag = self.requested.is_set()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())
        return flag

    def close(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def train_state(model: nnx.Module, optimizer: nnx.Optimizer | None, rng: jax.Array | None) -> dict:
    """The pytree that is checkpointed."""
    tree = {"params": nnx.state(model, nnx.Param)}
    if optimizer is not None:
        tree["opt"] = nnx.state(optimizer)  # step + opt_state (the optimizer holds no model reference)
    if rng is not None:
        tree["rng"] = np.asarray(jax.random.key_data(rng))  # host value: identical on every process
    return tree


class Checkpointer:
    def __init__(self, directory: str, *, every: int = 100, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=every,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, meta: dict, *, force: bool = False) -> bool:
        """Saves when ``step`` is on the interval (or ``force``); meta must be JSON-serializable."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, step: int | None, target: dict, *, partial: bool = False) -> tuple[dict, dict]:
        """Restores onto ``target`` (a pytree of arrays or ShapeDtypeStructs with shardings).

        ``partial``: ``target`` may be a subtree of what was saved (e.g. params only from a training state).

        Raises CheckpointError naming the problem for a missing, partial or mismatching checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise CheckpointError(f"{self.directory}: no step {step} (have {self.all_steps()})")
        abstract = jax.tree.map(
            lambda x: (
                x
                if isinstance(x, np.ndarray)
                else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            ),
            target,
        )
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        abstract, restore_args=restore_args, partial_restore=partial
                    ),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types; name the folder and step in one clear error
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        _check_same_structure(abstract, out["state"], step, self.directory)
        return out["state"], out["meta"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _check_same_structure(expected, got, step, directory):
    e = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    g = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(got)}
    problems = [f"missing {k}" for k in e if k not in g]
    problems += [
        f"{k}: shape {tuple(g[k].shape)} != expected {tuple(e[k].shape)}"
        for k in e
        if k in g and tuple(g[k].shape) != tuple(e[k].shape)
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint step {step} in {directory} does not match the model config: "
            + "; ".join(problems[:10])
        )


def save_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serializable: {type(x)}")
