"""The 7B GRPO recipe (configs/qwen2_5_vl_7b_grpo.py) as LoRA on one v5e-8 / v6e-8 host.

    r1ov grpo --config configs/qwen2_5_vl_7b_lora_grpo.py --config.rl.init_from=runs/qwen2_5_vl_7b_lora_sft \
        --config.data.rl=/data/clevr_rl

The reference policy is the policy with its adapters switched off (no second weight set), the optimizer holds
only the adapters. Same G = 8 x 16 prompts = 128 completions per step as the paper; the update runs in 4
minibatches of 4 prompt groups (32 completions, 4 per chip) so its activations fit a 16 GiB chip, with μ = 1
each minibatch is one optimizer update on a quarter of the groups. LoRA lr 1e-5 (10x the full fine-tune's).
`r1ov preflight --topology v5e-8` figures: launch/README.md.
"""

from r1ov_configs.qwen2_5_vl_7b_grpo import get_config as recipe


def get_config(size: str = "7b"):
    cfg = recipe(size)
    lc = cfg.model.lora
    lc.rank, lc.alpha = 64, 128.0
    cfg.rl.grpo.num_minibatches = 4
    cfg.rl.optim.lr = 1e-5
    cfg.rl.train.out_dir = f"runs/qwen2_5_vl_{size}_lora_grpo"
    return cfg
