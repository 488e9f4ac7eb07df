"""Pallas attention kernels of r1ov-jax, installed as ``r1ov_kernels`` (never as top-level ``kernels``).

``dispatch.attention`` is what ``r1ov_jax.layers.attention`` calls for impl "pallas" / "auto"; the kernels
live in ``flash_attention`` (+ ``flash_attention_gpu``), ``varlen_attention`` and ``decode_attention``, each
tested against its plain-jnp twin in ``reference``. Nothing is imported here, so the package costs nothing
until a kernel is used.
"""
