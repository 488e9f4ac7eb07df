"""One process of a 2-process localhost job (4 CPU devices each): tiny SFT on a (8, 1, 1) global mesh.

    python multihost_worker.py OUT_DIR STEPS KILL_AT       (env: R1OV_COORDINATOR_ADDRESS, R1OV_NUM_PROCESSES,
                                                           R1OV_PROCESS_ID)
KILL_AT > 0 sends this process SIGTERM while fetching that step's batch (as a preemption would).
"""

import json
import os
import signal
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny  # noqa: E402
from r1ov_jax.sharding import initialize_distributed, make_mesh  # noqa: E402
from r1ov_jax import runs  # noqa: E402
from r1ov_jax.train.optim import default_optim_config  # noqa: E402
from r1ov_jax.train.loop import default_train_config  # noqa: E402
from r1ov_jax.train.sft import run_sft  # noqa: E402

GLOBAL_BATCH, LENGTH = 8, 16


def global_batch(step: int) -> dict:
    rng = np.random.default_rng(1000 + step)
    ids = rng.integers(0, 200, size=(GLOBAL_BATCH, LENGTH)).astype(np.int32)
    loss = np.zeros_like(ids, bool)
    loss[:, LENGTH // 2 :] = True
    pos = np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (3, GLOBAL_BATCH, LENGTH)).copy()
    return {"input_ids": ids, "segment_ids": np.ones_like(ids), "positions": pos, "loss_mask": loss}


class LocalSlice:
    """This process's rows of each global batch; checkpointable like a Grain iterator."""

    def __init__(self, kill_at: int):
        self.step, self.kill_at = 0, kill_at
        n, p = jax.process_count(), jax.process_index()
        self.rows = slice(p * GLOBAL_BATCH // n, (p + 1) * GLOBAL_BATCH // n)

    def __next__(self):
        self.step += 1
        if self.step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        b = global_batch(self.step)
        return {k: (v[:, self.rows] if k == "positions" else v[self.rows]) for k, v in b.items()}

    def get_state(self):
        return {"step": self.step}

    def set_state(self, s):
        self.step = s["step"]


def main():
    out_dir, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert initialize_distributed() and jax.process_count() == 2 and jax.device_count() == 8
    mesh = make_mesh(data=-1)
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    runs.create(out_dir, model, None, stage="sft")
    cfg = ml_collections.ConfigDict({"optim": default_optim_config(), "train": default_train_config()})
    cfg.optim.lr, cfg.optim.warmup_ratio = 1e-2, 0.0
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = steps, 1, 3
    out = run_sft(model, LocalSlice(kill_at), cfg, out_dir=out_dir, progress=False, mesh=mesh)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
