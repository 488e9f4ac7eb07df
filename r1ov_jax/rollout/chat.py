"""Prompt → answer: image processing, the one prompt builder (``processing.prompts``) and the KV-cache sampler.

Used by ``r1ov generate``, evaluation and the demo; training batches come from ``r1ov_jax.data.pipeline``, which
builds its prompts with the same ``tokenize_prompt`` / ``assemble_prompt_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

from r1ov_jax.processing import ImageProcessor
from r1ov_jax.processing.prompts import PromptFormat, assemble_prompt_batch, tokenize_prompt
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.rollout.sampler import SamplingConfig, generate

# A prompt: (encoded images, question) or (encoded images, question, choices).
Prompt = tuple

RAW = PromptFormat(suffix=None)  # the default system turn and the user's text as given


def encode_prompts(
    model,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    prompts: Sequence[Prompt],
    fmt: PromptFormat = RAW,
) -> dict:
    """Model inputs (``model.prepare_inputs`` layout) of left-padded prompts ending in ``<|im_start|>assistant\\n``."""
    vc = model.cfg.vision
    examples = []
    for i, prompt in enumerate(prompts):
        images, question, choices = (*prompt, None)[:3]
        ex = {"id": str(i), "answer": None, "choices": None}
        grid = None
        if images:
            out = image_processor(list(images))
            grid = out["image_grid_thw"]
            ex.update(pixel_values=out["pixel_values"], grid=grid)
        else:
            ex.update(grid=())
        tok = tokenize_prompt(
            tokenizer, question, choices, image_grid_thw=grid, merge_size=vc.spatial_merge_size, fmt=fmt
        )
        ex["input_ids"] = tok["input_ids"]
        examples.append(ex)
    batch = assemble_prompt_batch(
        examples, pad_id=tokenizer.pad_id, image_token_id=model.cfg.image_token_id, max_prompt_len=None,
        max_patches=None, geometry=vc.geometry(),
    )  # fmt: skip
    return batch["inputs"]


def answer_prompts(
    model,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    fmt: PromptFormat = RAW,
) -> list[str]:
    """Decoded completions (special tokens removed), one per prompt; greedy when temperature is 0."""
    inputs = encode_prompts(model, tokenizer, image_processor, prompts, fmt)
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
