"""Paper SFT recipe on Qwen2.5-VL-7B-Instruct (hyperparameters: r1ov_jax/train/paper.py).

    r1ov sft --config configs/qwen2_5_vl_7b_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft --config.mesh.fsdp=8
"""

from r1ov_jax.train.paper import sft_config


def get_config():
    return sft_config("7b")
