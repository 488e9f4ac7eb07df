"""Host-side preprocessing: images → pixel patches, chat template, tokenizers."""

from r1ov_jax.processing.image import ImageProcessor, smart_resize

__all__ = ["ImageProcessor", "smart_resize"]
