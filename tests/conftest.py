import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare fp32 numbers with transformers: no reduced-precision matmul passes.
jax.config.update("jax_default_matmul_precision", "highest")
