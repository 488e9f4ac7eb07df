"""HF ⇄ r1ov-jax weights: ``from_pretrained`` (local folder) and ``save_pretrained`` (transformers-loadable)."""

from r1ov_jax.hf.io import from_pretrained, save_pretrained, weight_files

__all__ = ["from_pretrained", "save_pretrained", "weight_files"]
