"""The 7B GRPO recipe (configs/qwen2_5_vl_7b_grpo.py) as LoRA on one v6e-8 host (8 chips, 32 GiB each).

    r1ov grpo --config configs/qwen2_5_vl_7b_lora_grpo.py --config.rl.init_from=runs/qwen2_5_vl_7b_lora_sft \
        --config.data.rl=/data/clevr_rl

The reference policy is the policy with its adapters switched off (no second weight set), the optimizer holds
only the adapters. Same G = 8 x 16 prompts = 128 completions per step as the paper; the update runs in 4
minibatches of 4 prompt groups (32 completions, 4 per chip); with μ = 1 each minibatch is one optimizer update
on a quarter of the groups. LoRA lr 1e-5 (10x the full fine-tune's).
`r1ov preflight --topology v6e-8` (full depth): peak 25.5 of 32 GiB per chip (the update); a v5e-8 does not fit
(the log-prob pass over 128 completions needs 21.6 GiB). Table: launch/README.md.
"""

from r1ov_configs.qwen2_5_vl_7b_grpo import get_config as recipe


def get_config(size: str = "7b"):
    cfg = recipe(size)
    lc = cfg.model.lora
    lc.rank, lc.alpha = 64, 128.0
    cfg.rl.grpo.num_minibatches = 4
    cfg.mesh.tensor = 1  # one host of 8 chips: fsdp 8 divides the 16 prompts (the pod recipe adds tensor 2)
    cfg.rl.optim.lr = 1e-5
    cfg.rl.train.out_dir = f"runs/qwen2_5_vl_{size}_lora_grpo"
    return cfg
