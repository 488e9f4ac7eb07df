"""r1ov-jax: R1-Onevision in JAX."""

__version__ = "0.1.0"
