"""The default tiny CPU config: `r1ov demo` (synthesis → SFT → GRPO → eval → HF export) in minutes on 2 cores.

Also usable per stage: `r1ov sft --config configs/tiny_cpu.py --config.data.train=DIR --config.tokenizer.path=...`.
"""

from r1ov_jax.demo import default_demo_config


def get_config():
    return default_demo_config()
