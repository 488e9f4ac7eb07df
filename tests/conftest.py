import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 fake CPU devices so sharding tests can build (data, fsdp, tensor) meshes; unsharded code uses device 0.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402

# Parity tests compare fp32 numbers with transformers: no reduced-precision matmul passes.
jax.config.update("jax_default_matmul_precision", "highest")


import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """An HF folder of a tiny random model with tokenizer and preprocessor config, plus an image x.png beside it."""
    from r1ov_jax import hf
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL
    from r1ov_jax.processing import ImageProcessor
    from r1ov_jax.processing.tokenizer import make_test_tokenizer
    from r1ov_jax.runs import write_preprocessor_config
    from r1ov_jax.train.builders import default_model_config, model_config

    d = tmp_path_factory.mktemp("m")
    tok = make_test_tokenizer(d / "tok")
    model = Qwen25VL(model_config(default_model_config(), tok), rngs=nnx.Rngs(0))
    hf.save_pretrained(model, str(d / "hf"), tokenizer=tok)
    write_preprocessor_config(str(d / "hf"), ImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(d / "x.png")
    return d


# `pytest -n 2 --dist loadfile` hands whole files to the workers in collection order; the files that take minutes
# (deviceless TPU compiles, multi-process jobs, the mini demo) go first so the short ones fill in around them and
# neither worker runs alone at the end (longest-first scheduling; durations: `pytest --durations=30`).
LONGEST_FIRST = (
    "tests/test_preflight.py",
    "tests/test_preflight_paper.py",
    "tests/sharding/test_multihost.py",
    "tests/sharding/test_multihost_images.py",
    "tests/lora/test_lora_preflight.py",
    "tests/test_cli.py",
    "tests/train/test_chunked_head.py",
    "tests/lora/test_lora.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = str(config.rootpath)

    def key(item):
        path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: the order inside a file and among the rest is kept
