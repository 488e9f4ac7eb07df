"""A random-init model of the CPU demo's size (``configs/tiny_cpu.py``'s model block), saved as an HF folder.

Shared by the serve tests and ``benchmarks/bench_serve.py``: same architecture, image processor bounds and a
small byte-level test tokenizer, so a server or sampler can be exercised without training anything first.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from PIL import Image


def write_demo_hf_dir(out_dir: str, *, seed: int = 0, weight_scale: float = 1.0) -> str:
    """Writes ``out_dir/hf`` (weights, tokenizer, preprocessor config) and ``out_dir/x.png``; returns the HF path.

    ``weight_scale`` multiplies every matrix (not norms or biases): at init scale the model repeats one token
    whatever the prompt; at ~6 its greedy output depends on the prompt and image, which tests need.
    """
    from r1ov_configs.tiny_cpu import get_config

    from r1ov_jax import hf
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL
    from r1ov_jax.processing import ImageProcessor
    from r1ov_jax.processing.tokenizer import make_test_tokenizer
    from r1ov_jax.runs import write_preprocessor_config
    from r1ov_jax.train.builders import model_config

    cfg = get_config()
    tok = make_test_tokenizer(os.path.join(out_dir, "tok"))
    model = Qwen25VL(model_config(cfg.model, tok), rngs=nnx.Rngs(seed))
    if weight_scale != 1.0:
        params = nnx.state(model, nnx.Param)
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, x: x if x.ndim < 2 or "norm" in jax.tree_util.keystr(path) else x * weight_scale,
            params,
        )
        nnx.update(model, scaled)
    hf_dir = os.path.join(out_dir, "hf")
    hf.save_pretrained(model, hf_dir, tokenizer=tok)
    p = cfg.pipeline
    write_preprocessor_config(hf_dir, ImageProcessor(min_pixels=p.min_pixels, max_pixels=p.max_pixels))
    pixels = np.random.default_rng(seed).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(out_dir, "x.png"))
    return hf_dir
