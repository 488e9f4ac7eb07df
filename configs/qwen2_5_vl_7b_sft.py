"""R1-Onevision SFT recipe (arXiv 2503.10615) on Qwen2.5-VL-7B-Instruct: full fine-tune on the reasoning traces.

    r1ov sft --config configs/qwen2_5_vl_7b_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft

lr 1e-5 cosine, warmup 0.05, no weight decay, clip 1.0, 1 epoch, global batch 128, cutoff 8192 tokens, bf16
compute (fp32 params and optimizer), images up to ~768x768. ~155k samples / 128 → 1210 steps for one epoch.

First run `r1ov preflight --config <this file> --topology v5p-64` (see launch/README.md).
"""

import ml_collections

from r1ov_jax.train.recipes import base_config


def get_config(size: str = "7b") -> ml_collections.ConfigDict:
    cfg = base_config()
    cfg.model.preset = f"qwen2_5_vl_{size}"
    cfg.model.dtype = "bfloat16"  # compute; params stay fp32 for the optimizer
    cfg.model.param_dtype = "float32"
    # "auto": the Pallas flash kernels on TPU/GPU (under shard_map on the mesh), XLA on CPU. On a v5p-64 the
    # flash kernels bring the unrolled step from 36.3 (XLA attention) to 24.5 GiB per chip (`r1ov preflight`).
    cfg.model.attn_impl = "auto"
    cfg.model.remat = True  # "full": keep only each block's input (the 8192-token rows need it)
    # one lax.scan per tower: compiles in minutes where the unrolled 7B step took ~30 (docs/DESIGN.md)
    cfg.model.scan_layers = True
    cfg.mesh.data, cfg.mesh.fsdp = 1, -1  # FSDP over every chip: fp32 params + Adam (~133 GB) sharded
    cfg.pipeline.max_pixels = 768 * 768
    cfg.pipeline.seq_len = 8192
    # The paper's global batch of 128 = 32 rows per step x 4 accumulated micro-steps: one 8192-token row per
    # chip on a v5p-64 (32 chips); `r1ov preflight`: 16.3 of the 95.74 GiB per chip (Pallas, scanned layers).
    cfg.pipeline.batch_size = 32  # global rows per micro-step; split over processes and the mesh's data axes
    cfg.pipeline.max_patches = (
        8192  # per row: two images at the 768x768 cap (3009 patches each) and more small ones
    )
    o = cfg.sft.optim
    o.lr, o.warmup_ratio, o.weight_decay, o.clip_norm = 1e-5, 0.05, 0.0, 1.0
    o.grad_accum = 4  # 4 x 32 rows = the paper's 128 per optimizer update
    t = cfg.sft.train
    t.steps, t.log_every, t.ckpt_every = 1210 * o.grad_accum, 40, 800  # micro-steps: 1210 updates
    t.out_dir = f"runs/qwen2_5_vl_{size}_sft"
    return cfg
