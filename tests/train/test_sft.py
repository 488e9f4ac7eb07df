"""SFT: assistant-only loss, overfit of a fixed batch, exact resume."""

import os
import signal

import ml_collections
import numpy as np
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.train import sft
from r1ov_jax.train.loop import default_train_config
from r1ov_jax.train.optim import default_optim_config


def packed_batch(seed=0, b=2, length=32):
    """Two packed segments per row, loss on the second half of each segment."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 200, size=(b, length)).astype(np.int32)
    seg = np.repeat(np.array([[1] * 14 + [2] * 14 + [0] * (length - 28)]), b, 0).astype(np.int32)
    loss = np.zeros_like(ids, bool)
    loss[:, 8:14] = loss[:, 22:28] = True
    pos = np.zeros((3, b, length), np.int32)
    for s in (1, 2):  # per-segment positions restart at 0
        m = seg == s
        pos[:, m] = np.tile(np.arange(14), b)
    return {"input_ids": ids, "segment_ids": seg, "positions": pos, "loss_mask": loss}


def test_token_targets_mask_boundaries():
    b = packed_batch()
    _, w = sft.token_targets(b)
    w = np.asarray(w)
    assert w.sum() == 2 * 12  # 6 + 6 targets per row
    assert w[0, 13] == 0  # position 14 starts segment 2: not predicted from segment 1


def cfg(steps):
    c = ml_collections.ConfigDict()
    c.optim = default_optim_config()
    c.optim.lr, c.optim.warmup_ratio = 3e-3, 0.0
    c.train = default_train_config()
    c.train.steps, c.train.log_every, c.train.ckpt_every = steps, 5, 5
    return c


def test_overfits_fixed_batch(tmp_path):
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    batch = packed_batch()
    first = float(sft.eval_step(model, batch)["loss"])
    out = sft.run_sft(model, iter([batch] * 200), cfg(150), out_dir=str(tmp_path), progress=False)
    assert first > 4.0 and out["loss"] < 0.05, (first, out)


class Replay:
    """A checkpointable iterator (like Grain's): state = position. Sends itself SIGTERM at ``kill_at``."""

    def __init__(self, seed, kill_at=None):
        self.i, self.seed, self.kill_at = 0, seed, kill_at

    def __next__(self):
        self.i += 1
        if self.i == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return packed_batch(self.seed + self.i)

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    from r1ov_jax.train.metrics import read_jsonl

    full = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    sft.run_sft(full, Replay(0), cfg(20), out_dir=str(tmp_path / "a"), progress=False)
    part = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    out = sft.run_sft(part, Replay(0, kill_at=12), cfg(20), out_dir=str(tmp_path / "b"), progress=False)
    assert out["preempted"] and out["step"] == 12
    resumed = Qwen25VL(tiny(), rngs=nnx.Rngs(7))  # different init: everything must come from the checkpoint
    sft.run_sft(resumed, Replay(0), cfg(20), out_dir=str(tmp_path / "b"), progress=False)
    a = [r["train/loss"] for r in read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))]
    b = [r["train/loss"] for r in read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))]
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(full.lm_head.kernel[...]), np.asarray(resumed.lm_head.kernel[...]), atol=1e-6
    )
