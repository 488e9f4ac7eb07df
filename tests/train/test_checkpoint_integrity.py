"""Damaged checkpoints: detected at restore (per-array checksums), reported in one line, never restored; a run
falls back to the newest intact step and reproduces the uninterrupted run from there; NaN params stop a run."""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.train import sft
from r1ov_jax.train.checkpoint import Checkpointer, DamagedCheckpointError, NonFiniteError, train_state
from r1ov_jax.train.loop import default_train_config, validate_train_config
from r1ov_jax.train.metrics import read_jsonl
from r1ov_jax.train.optim import default_optim_config, make_nnx_optimizer

from tests.train.test_sft import Replay


def cfg(steps, **train):
    c = ml_collections.ConfigDict()
    c.optim = default_optim_config()
    c.optim.lr, c.optim.warmup_ratio = 3e-3, 0.0
    c.train = default_train_config()
    c.train.steps, c.train.log_every, c.train.ckpt_every, c.train.keep_checkpoints = steps, 2, 4, 3
    c.train.update(train)
    return c


def _data_files(step_dir):
    """The array data files of an Orbax step, largest first."""
    out = []
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            p = os.path.join(root, f)
            if os.sep + "d" + os.sep in p:
                out.append(p)
    return sorted(out, key=os.path.getsize, reverse=True)


def _flip(path):
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    data[mid : mid + 4096] = os.urandom(min(4096, len(data) - mid))
    with open(path, "r+b") as f:  # in place: the size does not change
        f.write(data)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _empty(path):
    open(path, "wb").close()


DAMAGE = {"flip": _flip, "truncate": _truncate, "empty": _empty}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 12-step run and one preempted at step 10 (steps 4, 8, 10 kept)."""
    base = tmp_path_factory.mktemp("runs")
    full = str(base / "full")
    sft.run_sft(Qwen25VL(tiny(), rngs=nnx.Rngs(0)), Replay(0), cfg(12), out_dir=full, progress=False)
    part = str(base / "part")
    out = sft.run_sft(
        Qwen25VL(tiny(), rngs=nnx.Rngs(0)), Replay(0, kill_at=10), cfg(12), out_dir=part, progress=False
    )
    assert out["preempted"] and out["step"] == 10
    return full, part


def _losses(run):
    return {
        r["step"]: r["train/loss"]
        for r in read_jsonl(os.path.join(run, "metrics.jsonl"))
        if "train/loss" in r
    }


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_latest_step_is_refused_in_one_line(runs, tmp_path, how):
    _, part = runs
    run = str(tmp_path / "run")
    shutil.copytree(part, run)
    DAMAGE[how](_data_files(os.path.join(run, "checkpoints", "10"))[0])
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(1))
    target = train_state(model, make_nnx_optimizer(model, cfg(12).optim, 12), jax.random.key(0))
    ck = Checkpointer(os.path.join(run, "checkpoints"), async_save=False)
    try:
        with pytest.raises(DamagedCheckpointError) as e:
            ck.restore(10, target)
        assert "\n" not in str(e.value) and "step 10" in str(e.value)
        state, meta = ck.restore(8, target)  # the older step is intact
        assert meta["step"] == 8
    finally:
        ck.close()


def test_flipped_bytes_resume_from_previous_step_with_uninterrupted_losses(runs, tmp_path, capfd):
    full, part = runs
    run = str(tmp_path / "run")
    shutil.copytree(part, run)
    _flip(_data_files(os.path.join(run, "checkpoints", "10"))[0])
    resumed = Qwen25VL(tiny(), rngs=nnx.Rngs(7))  # everything must come from the checkpoint
    sft.run_sft(resumed, Replay(0), cfg(12), out_dir=run, progress=False)
    err = capfd.readouterr().err
    assert "step 10" in err and "resuming from step 8" in err
    assert len([ln for ln in err.splitlines() if "damaged" in ln]) <= 3  # a line or two, not tracebacks
    assert "Traceback" not in err
    a, b = _losses(full), _losses(run)
    assert sorted(b) == sorted(a)
    np.testing.assert_allclose([b[k] for k in sorted(a)], [a[k] for k in sorted(a)], rtol=1e-5)
    assert os.path.isdir(os.path.join(run, "checkpoints.damaged"))


def test_all_steps_damaged_is_one_error(runs, tmp_path):
    _, part = runs
    run = str(tmp_path / "run")
    shutil.copytree(part, run)
    for step in (4, 8, 10):
        _empty(_data_files(os.path.join(run, "checkpoints", str(step)))[0])
    with pytest.raises(DamagedCheckpointError.__mro__[1], match="no intact checkpoint"):
        sft.run_sft(Qwen25VL(tiny(), rngs=nnx.Rngs(0)), Replay(0), cfg(12), out_dir=run, progress=False)
    assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int) == ["4", "8", "10"]  # nothing moved


def test_nan_params_stop_the_run_or_roll_back(tmp_path):
    # poison the params at step 6 (after a checkpoint at 4, before the log/save checks at 6/8)
    class Poison(Replay):
        def __init__(self, model, **kw):
            super().__init__(0, **kw)
            self.model = model

        def __next__(self):
            b = super().__next__()
            if self.i == 6:
                k = self.model.lm_head.kernel
                k.value = k.value.at[0, 0].set(np.nan)
            return b

    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        sft.run_sft(model, Poison(model), cfg(8), out_dir=str(tmp_path / "stop"), progress=False)
    steps = Checkpointer(str(tmp_path / "stop" / "checkpoints")).all_steps()
    assert max(steps) == 4  # the NaN params of steps 6+ were never saved
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    out = sft.run_sft(
        model, Poison(model), cfg(8, nan_policy="skip"), out_dir=str(tmp_path / "skip"), progress=False
    )
    assert out["step"] == 8 and np.isfinite(np.asarray(model.lm_head.kernel[...])).all()


@pytest.mark.parametrize(
    "field, value",
    [
        ("keep_checkpoints", 0),
        ("ckpt_every", 0),
        ("log_every", 0),
        ("steps", 0),
        ("steps", 2.5),
        ("keep_checkpoints", -1),
        ("log_every", True),
        ("nan_policy", "ignore"),
    ],  # fmt: skip
)
def test_train_config_validation(field, value):
    tc = ml_collections.ConfigDict({**default_train_config().to_dict(), field: value})
    with pytest.raises(ValueError, match=f"train.{field}"):
        validate_train_config(tc)
    with pytest.raises(ValueError):
        if field in ("keep_checkpoints", "ckpt_every"):
            Checkpointer("/tmp/unused-ckpt", **{"keep" if field == "keep_checkpoints" else "every": value})
        else:
            raise ValueError


def test_checkpoint_meta_holds_checksums(tmp_path):
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    ck = Checkpointer(str(tmp_path), async_save=False)
    try:
        ck.save(1, train_state(model, None, None), {"step": 1}, force=True)
        _, meta = ck.restore(1, train_state(model, None, None))
        assert meta["integrity"]["arrays"] and all(len(v) == 3 for v in meta["integrity"]["arrays"].values())
    finally:
        ck.close()
