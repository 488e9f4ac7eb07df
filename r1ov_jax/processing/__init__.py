"""Host-side preprocessing: images → pixel patches, chat template, tokenizers."""

from r1ov_jax.processing.chat import expand_image_pads, render_chat, tokenize_conversation
from r1ov_jax.processing.image import ImageProcessor, smart_resize
from r1ov_jax.processing.tokenizer import Tokenizer, train_sentencepiece

__all__ = [
    "ImageProcessor",
    "Tokenizer",
    "expand_image_pads",
    "render_chat",
    "smart_resize",
    "tokenize_conversation",
    "train_sentencepiece",
]
