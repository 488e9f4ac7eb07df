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
