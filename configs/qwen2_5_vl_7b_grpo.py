"""R1-Onevision GRPO recipe (arXiv 2503.10615) from the 7B SFT run, with format + accuracy rewards.

    r1ov grpo --config configs/qwen2_5_vl_7b_grpo.py --config.rl.init_from=runs/qwen2_5_vl_7b_sft \
        --config.data.rl=/data/clevr_rl

10k CLEVR-style prompts, 1 epoch: G = 8 completions per prompt, lr 1e-6, β = 0.04 (k3 KL to the SFT policy),
ε = 0.2, μ = 1 policy update per rollout batch, completions up to 256 tokens, temperature 1.0.

First run `r1ov preflight --config <this file> --topology v5p-64` (see launch/README.md).
"""

import ml_collections

from r1ov_jax.train.recipes import base_config


def get_config(size: str = "7b") -> ml_collections.ConfigDict:
    cfg = base_config()
    cfg.model.preset = f"qwen2_5_vl_{size}"
    cfg.model.dtype = "bfloat16"  # compute; params stay fp32 for the optimizer
    cfg.model.param_dtype = "float32"
    # "auto": the Pallas flash (prefill, log-probs, update) and decode kernels on TPU/GPU, under shard_map on the
    # mesh; XLA on CPU
    cfg.model.attn_impl = "auto"
    # Full remat: without it the update needs 251 GiB of temporaries per v5p chip (`r1ov preflight`); the
    # sampler decodes with remat off (nothing to save there).
    cfg.model.remat = True
    cfg.model.scan_layers = True  # one lax.scan per tower (not the KV-cache decode): minutes to compile
    # Prompts shard over data x fsdp, which must divide the 16 prompts of a step (a multi-host run refuses a batch
    # it cannot split; one host replicates it): on v5p-64 fsdp 16 x tensor 2. Params, policy/reference copies
    # and Adam are sharded over both axes. Other slices: launch/README.md.
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 2
    cfg.pipeline.max_pixels = 768 * 768
    cfg.pipeline.prompt_batch_size = 16  # prompts per step; x G = 128 completions
    # Static prompt shapes: one sampler / log-prob compile per run (None = longest in the batch recompiles
    # whenever the longest prompt or image changes). A 768x768 image is 3009 patches (752 merged tokens).
    cfg.pipeline.max_prompt_patches = 3072  # per prompt, a multiple of merge_size**2
    cfg.pipeline.max_prompt_len = 1024  # 768 image tokens + system prompt, question, choices and the suffix

    g = cfg.rl.grpo
    g.num_generations, g.beta, g.epsilon, g.num_iterations = 8, 0.04, 0.2, 1
    g.max_new_tokens, g.temperature = 256, 1.0
    g.preset = "grpo"  # the paper's recipe; "dapo" | "dr_grpo" | "gspo" switch the loss (docs/RL.md)
    cfg.rl.rewards = {"format": 1.0, "accuracy": 1.0}
    cfg.rl.optim.lr, cfg.rl.optim.warmup_ratio = 1e-6, 0.0
    t = cfg.rl.train
    t.steps, t.log_every, t.ckpt_every = 625, 1, 50  # 10k prompts / 16 per step
    t.out_dir = f"runs/qwen2_5_vl_{size}_grpo"
    return cfg
