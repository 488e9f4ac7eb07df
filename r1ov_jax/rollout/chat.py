"""Prompt → answer: image processing, the one prompt builder (``processing.prompts``) and the KV-cache sampler.

Used by ``r1ov generate``, evaluation, the demo and ``r1ov serve``; training batches come from
``r1ov_jax.data.pipeline``, which builds its prompts with the same ``tokenize_prompt`` / ``assemble_prompt_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

from r1ov_jax.processing import ImageProcessor
from r1ov_jax.processing.chat import tokenize_conversation
from r1ov_jax.processing.prompts import PromptFormat, assemble_prompt_batch, tokenize_prompt
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.rollout.sampler import SamplingConfig, generate

# A prompt: (encoded images, question) or (encoded images, question, choices).
Prompt = tuple

RAW = PromptFormat(suffix=None)  # the default system turn and the user's text as given


def _with_images(image_processor: ImageProcessor, images: Sequence) -> dict:
    """The image part of a prompt example (``assemble_prompt_batch`` layout): pixels and one grid row each."""
    if not images:
        return {"grid": ()}
    out = image_processor(list(images))
    return {"pixel_values": out["pixel_values"], "grid": out["image_grid_thw"]}


def prompt_example(
    model, tokenizer: Tokenizer, image_processor: ImageProcessor, prompt: Prompt, fmt=RAW
) -> dict:
    """One (images, question[, choices]) prompt as an example for :func:`encode_examples`."""
    images, question, choices = (*prompt, None)[:3]
    ex = {"id": "", "answer": None, "choices": None, **_with_images(image_processor, images)}
    grid = ex["grid"] if len(ex["grid"]) else None
    tok = tokenize_prompt(
        tokenizer,
        question,
        choices,
        image_grid_thw=grid,
        merge_size=model.cfg.vision.spatial_merge_size,
        fmt=fmt,
    )
    ex["input_ids"] = tok["input_ids"]
    return ex


def chat_example(
    model, tokenizer: Tokenizer, image_processor: ImageProcessor, messages: Sequence[dict], images: Sequence
) -> dict:
    """A whole conversation (HF-format ``messages``: image items as ``{"type": "image"}``, ``images`` their
    encoded bytes in order; the system turn, if any, already in ``messages``) as a generation prompt example.

    Rendered by the same template as :func:`prompt_example`: a [system, user(images, text)] conversation gives
    the ids ``tokenize_prompt`` gives for that question.
    """
    ex = {"id": "", "answer": None, "choices": None, **_with_images(image_processor, images)}
    tok = tokenize_conversation(
        messages, tokenizer, ex["grid"] if len(ex["grid"]) else None,
        merge_size=model.cfg.vision.spatial_merge_size, add_generation_prompt=True, default_system=None,
    )  # fmt: skip
    ex["input_ids"] = tok["input_ids"]
    return ex


def encode_examples(
    model,
    tokenizer: Tokenizer,
    examples: Sequence[dict],
    *,
    max_prompt_len: int | None = None,
    max_patches: int | None = None,
) -> dict:
    """Model inputs (``model.prepare_inputs`` layout) of left-padded prompts ending in ``<|im_start|>assistant\\n``.

    ``max_prompt_len`` / ``max_patches`` fix the padded shapes (static shapes: one compile per bucket); None
    pads to the longest prompt / the prompt with most patches."""
    batch = assemble_prompt_batch(
        examples, pad_id=tokenizer.pad_id, image_token_id=model.cfg.image_token_id, max_prompt_len=max_prompt_len,
        max_patches=max_patches, geometry=model.cfg.vision.geometry(),
    )  # fmt: skip
    return batch["inputs"]


def encode_prompts(
    model,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    prompts: Sequence[Prompt],
    fmt: PromptFormat = RAW,
) -> dict:
    """Model inputs of left-padded (images, question[, choices]) prompts (see :func:`encode_examples`)."""
    examples = [prompt_example(model, tokenizer, image_processor, p, fmt) for p in prompts]
    return encode_examples(model, tokenizer, examples)


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
