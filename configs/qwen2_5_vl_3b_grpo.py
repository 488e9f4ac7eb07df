"""Paper GRPO recipe from the 3B SFT run (hyperparameters: r1ov_jax/train/paper.py).

    r1ov grpo --config configs/qwen2_5_vl_3b_grpo.py --config.rl.init_from=runs/qwen2_5_vl_3b_sft \
        --config.data.rl=/data/clevr_rl --config.mesh.fsdp=8
"""

from r1ov_jax.train.paper import grpo_config


def get_config():
    return grpo_config("3b")
