"""A global batch with images (different sizes per row, some rows without any), split over processes, and the
SFT gradients / one GRPO step computed on it; shared by the 2-process worker and the single-process reference.

    python multihost_images.py MODE OUT_NPZ DATA FSDP TENSOR     (MODE sft | grpo; env as multihost_worker.py)
"""

import os
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from r1ov_jax.data.packing import assemble_packed_batch  # noqa: E402
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny  # noqa: E402
from r1ov_jax.processing.prompts import assemble_prompt_batch  # noqa: E402
from r1ov_jax.sharding import activation_sharding, make_mesh, rules_for, shard_batch, shard_model  # noqa: E402
from r1ov_jax.testing.hf_reference import IMG, V_END, V_START, hf_pixels, random_image  # noqa: E402
from r1ov_jax.train.loop import default_train_config  # noqa: E402
from r1ov_jax.train.optim import default_optim_config  # noqa: E402
from r1ov_jax.train.sft import sft_loss  # noqa: E402

ROWS, SEQ, PATCHES = 8, 96, 192  # global SFT rows; per-row patch budget
PROMPTS, PROMPT_LEN, PROMPT_PATCHES, GROUP = 4, 64, 128, 2
SIZES = [
    (56, 84),
    None,
    (84, 56),
    (56, 56),
    None,
    (112, 56),
    (56, 112),
    (84, 84),
]  # one image (or none) per row


def _example(rng, size, length, loss=True):
    """Token ids with one image (or none) + random text; the image's pixel values and grid."""
    if size is None:
        ids = rng.integers(1, 200, length)
        return ids, np.zeros((0, 1176), np.float32), np.zeros((0, 3), np.int64)
    pv, thw = hf_pixels([random_image(*size, seed=int(rng.integers(1 << 30)))])
    n = int(thw.prod()) // 4
    text = rng.integers(1, 200, length - n - 2)
    ids = np.concatenate([text[:3], [V_START], [IMG] * n, [V_END], text[3:]])
    return ids, pv, thw


def sft_rows(rows: slice) -> dict:
    """Rows ``rows`` of the global SFT batch (a process's share); identical arrays whatever the split."""
    examples = []
    for r in range(ROWS):
        rng = np.random.default_rng(100 + r)
        ids, pv, thw = _example(rng, SIZES[r], int(rng.integers(48, SEQ)))
        loss = np.zeros(len(ids), bool)
        loss[len(ids) // 2 :] = True
        pos = np.broadcast_to(np.arange(len(ids)), (3, len(ids)))
        examples.append(
            [{"input_ids": ids, "loss_mask": loss, "positions": pos, "pixel_values": pv, "grid": thw}]
        )
    geo = tiny().vision.geometry()
    return assemble_packed_batch(examples[rows], seq_len=SEQ, pad_id=0, max_patches=PATCHES, geometry=geo)


def prompt_rows(rows: slice) -> dict:
    examples = []
    for i in range(PROMPTS):
        rng = np.random.default_rng(200 + i)
        ids, pv, thw = _example(rng, SIZES[(2 * i) % len(SIZES)], int(rng.integers(24, PROMPT_LEN)))
        examples.append(
            {"input_ids": ids, "pixel_values": pv, "grid": thw, "answer": "1", "choices": None, "id": str(i)}
        )
    return assemble_prompt_batch(
        examples[rows], pad_id=0, image_token_id=IMG, max_prompt_len=PROMPT_LEN, max_patches=PROMPT_PATCHES,
        geometry=tiny().vision.geometry(),
    )  # fmt: skip


def local_slice(total: int) -> slice:
    n, p = jax.process_count(), jax.process_index()
    return slice(p * total // n, (p + 1) * total // n)


def sft_grads(mesh) -> dict:
    """Loss and gradients of the SFT loss on the global batch (this process feeding its rows)."""
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    local = sft_rows(local_slice(ROWS))
    if mesh is None:
        batch = jax.tree.map(jax.numpy.asarray, local)
        (loss, _), grads = nnx.jit(nnx.value_and_grad(sft_loss, has_aux=True))(model, batch)
    else:
        shard_model(model, mesh)
        batch = shard_batch(local, mesh)
        with activation_sharding(mesh, rules_for(model.cfg, mesh)):
            (loss, _), grads = nnx.jit(nnx.value_and_grad(sft_loss, has_aux=True))(model, batch)
    return {"loss": loss, **_flat(nnx.state(grads, nnx.Param))}


def _decode(ids) -> str:
    """A reward signal that depends on the sampled tokens (the tiny model is random)."""
    return f"<think>t</think><answer>{int(ids[0]) % 3 if len(ids) else 0}</answer>"


class LocalPrompts:
    def __init__(self):
        self.step = 0

    def __next__(self):
        self.step += 1
        return prompt_rows(local_slice(PROMPTS))

    def get_state(self):
        return {"step": self.step}

    def set_state(self, s):
        self.step = s["step"]


def grpo_step(mesh, out_dir: str) -> dict:
    """Parameters after one GRPO step (sampling, rewards, reference log-probs, update)."""
    from r1ov_jax.train.grpo import default_grpo_config, run_grpo

    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    ref = nnx.clone(model)
    cfg = ml_collections.ConfigDict({"optim": default_optim_config(), "train": default_train_config()})
    cfg.grpo = default_grpo_config()
    cfg.grpo.num_generations, cfg.grpo.max_new_tokens, cfg.grpo.temperature = GROUP, 6, 1.0
    cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.eps = 1e-2, 0.0, 1e-3
    cfg.train.steps, cfg.train.log_every, cfg.train.ckpt_every = 1, 1, 10
    out = run_grpo(model, ref, LocalPrompts(), _decode, cfg, out_dir=out_dir, eos_ids=(), pad_id=0,
                   progress=False, mesh=mesh)  # fmt: skip
    assert not out.get("skipped_update"), out
    return {
        "reward": np.float32(out["reward"]),
        "kl": np.float32(out["kl"]),
        **_flat(nnx.state(model, nnx.Param)),
    }


def _flat(state) -> dict:
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {
        jax.tree_util.keystr(k): np.asarray(multihost_utils.process_allgather(v, tiled=True))
        for k, v in leaves
    }


def main():
    from r1ov_jax.sharding import initialize_distributed

    mode, out, data, fsdp, tensor = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    assert initialize_distributed() and jax.process_count() == 2 and jax.device_count() == 8
    mesh = make_mesh(data, fsdp, tensor)
    result = sft_grads(mesh) if mode == "sft" else grpo_step(mesh, out + ".run")
    if jax.process_index() == 0:
        np.savez(out, **{k: np.asarray(v) for k, v in result.items()})
    print("RESULT ok", flush=True)


if __name__ == "__main__":
    main()
