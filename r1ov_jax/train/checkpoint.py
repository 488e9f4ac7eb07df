"""Orbax checkpoints of a training run: model params, optimizer state, step, RNG and data-iterator state.

Saves are atomic (Orbax writes to a temporary directory and renames on commit), asynchronous, every
``every`` steps with the last ``keep`` retained, and also on SIGTERM/SIGINT (preemption) via
:class:`PreemptionGuard`. Restores go onto whatever abstract target (and sharding) the caller gives, so a
checkpoint saved on one mesh restores onto another.

Integrity: every save records two 32-bit checksums per array (the sum of its 32-bit words and their sum weighted
by position, computed on device in one jit) in the step's JSON meta, and refuses to save NaN/inf parameters.
``restore`` recomputes them and raises :class:`DamagedCheckpointError` (one line) for bytes changed in place, a
truncated or emptied file, or non-finite values; ``TrainingRun.start`` then falls back to the newest intact step.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from r1ov_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, partial, damaged or does not match the model."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint step exists but its files are unreadable, fail their checksums or hold NaN/inf."""


log = logging.getLogger(__name__)
INTEGRITY_KEY = "integrity"
_NOISY_LOGGERS = ("absl", "orbax", "asyncio", "tensorstore", "jax._src.distributed")


@contextlib.contextmanager
def _quiet_logs():
    """Orbax/asyncio log a traceback per failed read (100+ lines for one damaged file); the error we raise names
    the step, so silence them while restoring."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


class _DroppedReadErrors(logging.Filter):
    """asyncio logs "Task exception was never retrieved" with a traceback for every failed tensorstore read of a
    damaged checkpoint, whenever the task is collected; the restore already raised one clear error for them."""

    def filter(self, record):
        if "never retrieved" not in record.getMessage():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        text = (
            f"{type(exc).__name__}: {exc}" if exc is not None else str(record.__dict__.get("exception", ""))
        )
        return not any(
            k in text for k in ("OCDBT", "tensorstore", "Error reading", "OUT_OF_RANGE", "DATA_LOSS")
        )


logging.getLogger("asyncio").addFilter(_DroppedReadErrors())


def _words(x):
    """The array's bits as uint32 words (flattened)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 4:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size in (1, 2):
        w = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    else:  # 8 bytes: two words each
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return w.reshape(-1)


def _fingerprint_leaf(x):
    w = _words(x)
    idx = jnp.arange(1, w.shape[0] + 1, dtype=jnp.uint32)
    s1 = jnp.sum(w, dtype=jnp.uint32)
    s2 = jnp.sum(w * idx, dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return s1, s2, finite


@jax.jit
def _fingerprint_tree(leaves):
    return [_fingerprint_leaf(x) for x in leaves]


def fingerprints(tree) -> dict[str, list]:
    """{path: [sum32, weighted sum32, dtype, finite]} for every array leaf of ``tree`` (one jit, on device)."""
    flat = [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(tree)]
    flat = [(k, v) for k, v in flat if hasattr(v, "dtype") and hasattr(v, "shape")]
    if not flat:
        return {}
    out = jax.device_get(_fingerprint_tree([v for _, v in flat]))
    return {
        k: [int(s1), int(s2), str(np.dtype(v.dtype)), bool(fin)] for (k, v), (s1, s2, fin) in zip(flat, out)
    }


def nonfinite_paths(tree) -> list[str]:
    """Paths of the leaves of ``tree`` that hold a NaN or an inf (integer leaves, e.g. QLoRA's quantized base
    kernels, cannot)."""
    floats = jax.tree.map(
        lambda v: v if jnp.issubdtype(getattr(v, "dtype", np.int8), jnp.inexact) else None, tree
    )
    return [k for k, fp in fingerprints(floats).items() if not fp[3]]


class NonFiniteError(UserError, FloatingPointError):
    """Parameters or optimizer state became NaN/inf (a diverged run); see ``train.nan_policy``."""


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
    """The pytree that is checkpointed: the trained params (a LoRA model's adapters only; its base is a pointer
    in ``run.json``, see ``runs``), optimizer state, RNG."""
    from r1ov_jax.models import lora

    tree = {"params": nnx.state(model, lora.trainable(model))}
    if optimizer is not None:
        tree["opt"] = nnx.state(optimizer)  # step + opt_state (the optimizer holds no model reference)
    if rng is not None:
        tree["rng"] = np.asarray(jax.random.key_data(rng))  # host value: identical on every process
    return tree


class Checkpointer:
    def __init__(self, directory: str, *, every: int = 100, keep: int = 3, async_save: bool = True):
        from r1ov_jax.config_utils import ConfigError

        for name, v in (("keep_checkpoints", keep), ("ckpt_every", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{name} must be an integer >= 1, got {v!r}")
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
        """Saves when ``step`` is on the interval (or ``force``); meta must be JSON-serializable.

        Adds per-array checksums to the meta; refuses (NonFiniteError) to save NaN/inf values."""
        if not (force or self.manager.should_save(step)):
            return False
        fps = fingerprints(state)
        bad = [k for k, fp in fps.items() if not fp[3]]
        if bad:
            raise NonFiniteError(
                f"step {step}: {len(bad)} arrays hold NaN/inf (first: {bad[0]}); not saving them over "
                f"{self.directory}"
            )
        meta = {
            **meta,
            INTEGRITY_KEY: {"algo": "u32sum+u32wsum", "arrays": {k: fp[:3] for k, fp in fps.items()}},
        }
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
            with _quiet_logs():
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
            with _quiet_logs():
                gc.collect()  # failed reads leave asyncio tasks that log their tracebacks when collected
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise DamagedCheckpointError(
                f"cannot restore step {step} from {self.directory} (damaged or unreadable): "
                f"{type(e).__name__}: {first}"
            ) from e
        _check_same_structure(abstract, out["state"], step, self.directory)
        self._verify(step, out["state"], out["meta"])
        return out["state"], out["meta"]

    def _verify(self, step: int, state, meta) -> None:
        """Recomputes the checksums recorded at save time; raises DamagedCheckpointError on any difference."""
        where = f"checkpoint step {step} in {self.directory}"
        if not isinstance(meta, dict):
            raise DamagedCheckpointError(f"{where}: meta is not a JSON object")
        got = fingerprints(state)
        bad = [k for k, fp in got.items() if not fp[3]]
        if bad:
            raise DamagedCheckpointError(f"{where} holds NaN/inf in {len(bad)} arrays (first: {bad[0]})")
        rec = (meta.get(INTEGRITY_KEY) or {}).get("arrays")
        if rec is None:
            log.warning("%s has no checksums (saved before they existed): restored unverified", where)
            return
        wrong = [
            k for k, fp in got.items() if k in rec and rec[k][2] == fp[2] and list(rec[k][:2]) != fp[:2]
        ]  # a leaf restored into another dtype cannot be compared bit for bit
        if wrong:
            raise DamagedCheckpointError(
                f"{where} is damaged: {len(wrong)} of {len(got)} arrays fail their checksums (first: {wrong[0]})"
            )

    def quarantine(self, step: int) -> str | None:
        """Moves a damaged step out of the checkpoint folder (to ``<dir>.damaged/<step>-<time>``); returns where."""
        src = os.path.join(self.directory, str(step))
        if not os.path.isdir(src) or jax.process_index() != 0:
            return None
        dst_dir = self.directory.rstrip("/") + ".damaged"
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(src, dst)
        self.manager.reload()
        return dst

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
