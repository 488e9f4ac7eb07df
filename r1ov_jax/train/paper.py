"""The paper's recipes (R1-Onevision, arXiv 2503.10615) as configs; ``configs/qwen2_5_vl_{3b,7b}_{sft,grpo}.py``
select a size. The paper trained the 7B; the 3B variant keeps the same hyperparameters."""

from __future__ import annotations

import ml_collections

from r1ov_jax.train.recipes import base_config

SIZES = ("3b", "7b")


def _model(cfg: ml_collections.ConfigDict, size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size {size!r}: choose from {SIZES}")
    cfg.model.preset = f"qwen2_5_vl_{size}"
    cfg.model.dtype = "bfloat16"  # compute; params stay fp32 for the optimizer
    cfg.model.param_dtype = "float32"
    cfg.model.attn_impl = "auto"
    cfg.model.remat = True
    cfg.pipeline.max_pixels = 768 * 768


def sft_config(size: str) -> ml_collections.ConfigDict:
    """Full fine-tune, lr 1e-5 cosine, warmup 0.05, 1 epoch, global batch 128, cutoff 8192 tokens, bf16,
    images up to ~768x768. ~155k samples / 128 → 1210 steps for one epoch."""
    cfg = base_config()
    _model(cfg, size)
    cfg.pipeline.seq_len = 8192
    cfg.pipeline.batch_size = 128  # global; split over processes and the mesh's data axes
    cfg.pipeline.max_patches = 128 * 3072
    cfg.sft.optim.lr = 1e-5
    cfg.sft.optim.warmup_ratio = 0.05
    cfg.sft.optim.weight_decay = 0.0
    cfg.sft.optim.clip_norm = 1.0
    cfg.sft.train.steps = 1210
    cfg.sft.train.log_every = 10
    cfg.sft.train.ckpt_every = 200
    cfg.sft.train.out_dir = f"runs/qwen2_5_vl_{size}_sft"
    return cfg


def grpo_config(size: str) -> ml_collections.ConfigDict:
    """From the SFT model on 10k CLEVR-style prompts, 1 epoch: G=8, lr 1e-6, β=0.04 (k3 KL to the SFT policy),
    ε=0.2, μ=1, max completion 256 tokens, temperature 1.0, rewards = format + accuracy."""
    cfg = base_config()
    _model(cfg, size)
    cfg.pipeline.prompt_batch_size = 16  # prompts per step; x G = 128 completions
    cfg.rl.grpo.num_generations = 8
    cfg.rl.grpo.beta = 0.04
    cfg.rl.grpo.epsilon = 0.2
    cfg.rl.grpo.num_iterations = 1
    cfg.rl.grpo.max_new_tokens = 256
    cfg.rl.grpo.temperature = 1.0
    cfg.rl.optim.lr = 1e-6
    cfg.rl.optim.warmup_ratio = 0.0
    cfg.rl.train.steps = 625  # 10k prompts / 16 per step
    cfg.rl.train.log_every = 1
    cfg.rl.train.ckpt_every = 50
    cfg.rl.train.out_dir = f"runs/qwen2_5_vl_{size}_grpo"
    return cfg
