"""The 7B SFT recipe (configs/qwen2_5_vl_7b_sft.py) as LoRA on one v5e-8 / v6e-8 host (8 chips, 16 / 32 GiB each).

    r1ov sft --config configs/qwen2_5_vl_7b_lora_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft
    # QLoRA (NF4 base kernels): --config.model.lora.base_qtype=nf4

Rank-64 adapters (alpha 128) on every decoder attention and MLP projection, the base frozen: Adam state exists
only for the ~161M adapter parameters, so the fp32 base (33 GB) sharded over 8 chips plus one 8192-token row per
chip fits a 16 GiB v5e chip. The paper's global batch of 128 = 8 rows x 16 accumulated micro-steps. LoRA lr 1e-4
(10x the full fine-tune's, the usual LoRA ratio). `r1ov preflight --topology v5e-8` figures: launch/README.md.
"""

from r1ov_configs.qwen2_5_vl_7b_sft import get_config as recipe


def get_config(size: str = "7b"):
    cfg = recipe(size)
    lc = cfg.model.lora
    lc.rank, lc.alpha = 64, 128.0
    cfg.pipeline.batch_size = 8  # one row per chip
    o = cfg.sft.optim
    o.lr, o.grad_accum = 1e-4, 16  # 16 x 8 rows = the paper's 128 per update
    t = cfg.sft.train
    t.steps, t.ckpt_every = 1210 * o.grad_accum, 1600
    t.out_dir = f"runs/qwen2_5_vl_{size}_lora_sft"
    return cfg
