"""Paper SFT (R1-Onevision): Qwen2.5-VL-7B-Instruct, full fine-tune, lr 1e-5 cosine, warmup 0.05, 1 epoch,
global batch 128, cutoff 8192 tokens, bf16, images up to ~768x768.

    r1ov sft --config configs/qwen2_5_vl_7b_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft --config.sft.train.steps=1210
(steps = dataset examples / 128 for one epoch; ~155k samples → ~1210.)
"""

from r1ov_jax.train.recipes import base_config


def get_config():
    cfg = base_config()
    cfg.model.preset = "qwen2_5_vl_7b"
    cfg.model.hf_path = ""  # required: local HF folder of Qwen2.5-VL-7B-Instruct
    cfg.model.dtype = "bfloat16"
    cfg.model.param_dtype = "float32"
    cfg.model.attn_impl = "auto"
    cfg.model.remat = True
    cfg.pipeline.seq_len = 8192
    cfg.pipeline.batch_size = 128  # global batch; split over the mesh's data axes
    cfg.pipeline.max_pixels = 768 * 768
    cfg.pipeline.max_patches = 128 * 3072
    cfg.sft.optim.lr = 1e-5
    cfg.sft.optim.warmup_ratio = 0.05
    cfg.sft.optim.weight_decay = 0.0
    cfg.sft.optim.clip_norm = 1.0
    cfg.sft.train.steps = 1210
    cfg.sft.train.log_every = 10
    cfg.sft.train.ckpt_every = 200
    cfg.sft.train.out_dir = "runs/qwen2_5_vl_7b_sft"
    return cfg
