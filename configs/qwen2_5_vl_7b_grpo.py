"""Paper GRPO (R1-Onevision): from the SFT model, 10k CLEVR-style prompts, 1 epoch, G=8, lr 1e-6, β=0.04 (k3 KL
to the SFT policy), ε=0.2, μ=1, max completion 256, temperature 1.0, rewards = format + accuracy.

    r1ov grpo --config configs/qwen2_5_vl_7b_grpo.py --config.rl.init_from=runs/qwen2_5_vl_7b_sft \
        --config.data.rl=/data/clevr_rl
"""

from r1ov_jax.train.recipes import base_config


def get_config():
    cfg = base_config()
    cfg.model.preset = "qwen2_5_vl_7b"
    cfg.model.dtype = "bfloat16"
    cfg.model.attn_impl = "auto"
    cfg.model.remat = True
    cfg.pipeline.max_pixels = 768 * 768
    cfg.pipeline.prompt_batch_size = 16  # prompts per step; x G = 128 completions
    cfg.rl.init_from = ""  # required: the SFT run directory
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
    cfg.rl.train.out_dir = "runs/qwen2_5_vl_7b_grpo"
    return cfg
