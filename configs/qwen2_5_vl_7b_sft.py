"""R1-Onevision SFT recipe (arXiv 2503.10615) on Qwen2.5-VL-7B-Instruct: full fine-tune on the reasoning traces.

    r1ov sft --config configs/qwen2_5_vl_7b_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft --config.mesh.fsdp=8

lr 1e-5 cosine, warmup 0.05, no weight decay, clip 1.0, 1 epoch, global batch 128, cutoff 8192 tokens, bf16
compute (fp32 params and optimizer), images up to ~768x768. ~155k samples / 128 → 1210 steps for one epoch.
"""

import ml_collections

from r1ov_jax.train.recipes import base_config


def get_config(size: str = "7b") -> ml_collections.ConfigDict:
    cfg = base_config()
    cfg.model.preset = f"qwen2_5_vl_{size}"
    cfg.model.dtype = "bfloat16"  # compute; params stay fp32 for the optimizer
    cfg.model.param_dtype = "float32"
    cfg.model.attn_impl = "auto"  # Pallas kernels on TPU/GPU
    cfg.model.remat = True
    cfg.pipeline.max_pixels = 768 * 768
    cfg.pipeline.seq_len = 8192
    cfg.pipeline.batch_size = 128  # global; split over processes and the mesh's data axes
    cfg.pipeline.max_patches = (
        8192  # per row: two images at the 768x768 cap (3009 patches each) and more small ones
    )

    o = cfg.sft.optim
    o.lr, o.warmup_ratio, o.weight_decay, o.clip_norm = 1e-5, 0.05, 0.0, 1.0
    t = cfg.sft.train
    t.steps, t.log_every, t.ckpt_every = 1210, 10, 200
    t.out_dir = f"runs/qwen2_5_vl_{size}_sft"
    return cfg
