"""The 7B paper SFT config compiled deviceless for a v5p-64 (needs libtpu, no TPU).

Its own file so that, under ``pytest --dist loadfile``, it runs on one worker while test_preflight.py runs on
the other (together they are ~15 min of compiling on 2 cores)."""

import importlib.util

import jax

import pytest

from r1ov_jax import preflight
from r1ov_jax.config_utils import load_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (.[tpu])")


@pytest.mark.slow
def test_paper_7b_sft_fits_v5p64(tmp_path):
    """configs/qwen2_5_vl_7b_sft.py as shipped fits a v5p-64 (scanned layers: ~2 min to compile on 2 cores,
    memory only; the FLOP count's two extra compiles are left to `r1ov preflight`)."""
    cfg = load_config("configs/qwen2_5_vl_7b_sft.py")
    assert cfg.model.scan_layers
    report = preflight.run(cfg, "v5p-64", "sft", loop_flops=False)
    s = report["stages"]["sft"]
    assert s["fits"], preflight.format_report(report)
    assert s["bytes_per_chip"]["total"] < report["hbm_bytes_per_chip"]
    assert s["flops_ratio"] is None and "not counted" in s["note"]  # memory only: no partial FLOP figure
    assert cfg.pipeline.batch_size * cfg.sft.optim.grad_accum == 128  # the paper's global batch
    assert jax.device_count() >= 1  # compiled without touching a TPU
