"""Prompt → answer: chat template, image processing, left padding and the KV-cache sampler in one call.

Used by ``r1ov generate``, evaluation and the demo (training batches come from ``r1ov_jax.data.pipeline``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r1ov_jax.processing import ImageProcessor
from r1ov_jax.processing.chat import tokenize_conversation
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.rollout.sampler import SamplingConfig, generate, left_pad


def prompt_messages(num_images: int, text: str, system: str | None = None) -> list[dict]:
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    msgs = [{"role": "user", "content": content}]
    return ([{"role": "system", "content": system}] if system else []) + msgs


def encode_prompts(
    model,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    prompts: Sequence[tuple[Sequence[bytes], str]],
    system: str | None = None,
) -> dict:
    """``model.prepare_inputs`` of left-padded chat prompts ending in ``<|im_start|>assistant\\n``."""
    seqs, pixels, grids = [], [], []
    for images, text in prompts:
        grid = None
        if images:
            out = image_processor(list(images))
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
            grid = out["image_grid_thw"]
        tok = tokenize_conversation(
            prompt_messages(len(images), text, system),
            tokenizer,
            grid,
            merge_size=image_processor.merge_size,
            add_generation_prompt=True,
        )
        seqs.append(tok["input_ids"].tolist())
    ids, mask = left_pad(seqs, tokenizer.pad_id)
    pv = np.concatenate(pixels) if pixels else None
    thw = np.concatenate(grids) if grids else None
    return model.prepare_inputs(ids, mask, pv, thw)


def answer_prompts(
    model,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    prompts: Sequence[tuple[Sequence[bytes], str]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    system: str | None = None,
) -> list[str]:
    """Decoded completions (special tokens removed), one per prompt; greedy when temperature is 0."""
    inputs = encode_prompts(model, tokenizer, image_processor, prompts, system)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    out = generate(model, inputs, seed, cfg)
    return [
        tokenizer.decode(t[:n].tolist(), skip_special_tokens=True) for t, n in zip(out.tokens, out.lengths)
    ]
