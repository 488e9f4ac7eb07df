"""The 7B SFT recipe (configs/qwen2_5_vl_7b_sft.py) as LoRA on one v5e-8 / v6e-8 host (8 chips, 16 / 32 GiB each).

    r1ov sft --config configs/qwen2_5_vl_7b_lora_sft.py --config.model.hf_path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train=/data/r1ov_sft
    # QLoRA (NF4 base kernels): --config.model.lora.base_qtype=nf4

Rank-64 adapters (alpha 128) on every decoder attention and MLP projection, the base frozen: Adam state exists
only for the ~161M adapter parameters. The paper's global batch of 128 = 8 rows (one per chip) x 16 accumulated
micro-steps. LoRA lr 1e-4 (10x the full fine-tune's, the usual LoRA ratio).

`r1ov preflight` (full depth, launch/README.md): **v6e-8** as shipped (8192-token rows): 20.0 of 32 GiB per chip.
**v5e-8** needs shorter rows, `--config.pipeline.seq_len=4096 --config.pipeline.max_patches=4096`: 15.7 of
16.0 GiB (8192-token rows need 16.05 GiB of temporaries alone).
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
