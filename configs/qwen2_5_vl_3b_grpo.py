"""The 7B GRPO recipe (configs/qwen2_5_vl_7b_grpo.py) on Qwen2.5-VL-3B: the paper trained the 7B; the 3B keeps
its hyperparameters.
"""

from r1ov_configs.qwen2_5_vl_7b_grpo import get_config as recipe


def get_config():
    return recipe("3b")
