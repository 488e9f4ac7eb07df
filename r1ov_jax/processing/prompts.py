"""The one home of prompt text and the one prompt builder.

Every prompt a model sees — SFT examples, GRPO rollouts, evaluation, ``r1ov generate`` — is built here, so a
model is trained and scored on byte-identical prompts (a train/eval prompt mismatch is the silent bug VLM RL users
report most). A prompt is::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{<|vision_start|><|image_pad|>…<|vision_end|> per image}{question}[\\nChoices:\\nA. …][\\n{suffix}]<|im_end|>\\n
    <|im_start|>assistant\\n            (then the trace for SFT, or generation)

:class:`PromptFormat` holds the two choices a run makes (system prompt, format suffix); a run directory records it
(``r1ov_jax.runs``) so evaluation of a run uses the format it was trained with.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from r1ov_jax.processing.chat import DEFAULT_SYSTEM, tokenize_conversation
from r1ov_jax.processing.positions import VisionGeometry, get_rope_index, vision_inputs

if TYPE_CHECKING:
    from r1ov_jax.processing.tokenizer import Tokenizer

# The paper's instruction (R1-Onevision, via VLM-R1 / open-r1-multimodal): the format the rewards check.
FORMAT_SUFFIX = "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
SYSTEM_PROMPT = DEFAULT_SYSTEM  # the Qwen2.5-VL template's own default
# A question that already lists its options ("A. …", "(A) …", "A: …" at a line start) gets no second list.
_LISTS_OPTIONS = re.compile(r"(?m)^\s*\(?A[).:]")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """System prompt (None: no system turn at all) and the instruction appended to the question (None: none)."""

    system: str | None = SYSTEM_PROMPT
    suffix: str | None = FORMAT_SUFFIX

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptFormat:
        return cls(system=d.get("system", SYSTEM_PROMPT), suffix=d.get("suffix", FORMAT_SUFFIX))


def question_text(question: str, choices: Sequence[str] | None = None) -> str:
    """The question as shown to a model: the stem, then "Choices:" and lettered options for multiple choice
    (unless the stem already lists them)."""
    text = question.strip()
    if choices and not _LISTS_OPTIONS.search(text):
        text += "\nChoices:\n" + "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))
    return text


def user_text(question: str, choices: Sequence[str] | None, suffix: str | None) -> str:
    text = question_text(question, choices)
    return f"{text}\n{suffix}" if suffix else text


def prompt_messages(
    num_images: int,
    question: str,
    choices: Sequence[str] | None = None,
    *,
    fmt: PromptFormat = PromptFormat(),
    answer: str | None = None,
) -> list[dict]:
    """HF-format chat messages: [system], user (images first, then the text), [assistant ``answer``]."""
    content = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": user_text(question, choices, fmt.suffix)})
    messages = [{"role": "system", "content": fmt.system}] if fmt.system is not None else []
    messages.append({"role": "user", "content": content})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def tokenize_prompt(
    tokenizer: Tokenizer,
    question: str,
    choices: Sequence[str] | None = None,
    *,
    image_grid_thw: Any = None,
    merge_size: int = 2,
    fmt: PromptFormat = PromptFormat(),
    answer: str | None = None,
) -> dict[str, np.ndarray]:
    """``input_ids`` (+ ``loss_mask``) of one prompt; with ``answer`` the SFT example (loss on the answer), else
    the generation prompt ending in ``<|im_start|>assistant\\n``. One grid row per image, in order."""
    n = 0 if image_grid_thw is None else int(np.asarray(image_grid_thw).reshape(-1, 3).shape[0])
    messages = prompt_messages(n, question, choices, fmt=fmt, answer=answer)
    return tokenize_conversation(
        messages,
        tokenizer,
        image_grid_thw if n else None,
        merge_size=merge_size,
        add_generation_prompt=answer is None,
        default_system=None,  # the system turn (or its absence) is in `messages`
    )


def assemble_prompt_batch(
    examples: Sequence[dict],
    *,
    pad_id: int,
    image_token_id: int,
    max_prompt_len: int | None,
    max_patches: int | None,
    geometry: VisionGeometry,
) -> dict[str, Any]:
    """Left-padded prompt batch for sampling (GRPO rollouts, evaluation).

    Returns ``{"inputs": {input_ids int32[b, L], segment_ids int32[b, L] (1 valid, 0 pad), positions int32[3, b, L],
    pixel_values [b, P, patch_dim], vision}, "answers", "choices", "ids"}``. L = ``max_prompt_len`` or the longest
    prompt; P = ``max_patches`` (the per-prompt budget: static shapes) or the prompt with most patches (see
    ``positions.vision_inputs``); without any image and no ``max_patches`` both keys are absent.
    """
    if not examples:
        raise ValueError("assemble_prompt_batch needs at least one prompt")
    lengths = [len(ex["input_ids"]) for ex in examples]
    length = max(lengths) if max_prompt_len is None else int(max_prompt_len)
    if max(lengths) > length:
        raise ValueError(f"a prompt has {max(lengths)} tokens but max_prompt_len is {length}")
    b = len(examples)
    ids = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), np.int32)
    rows = []
    for i, ex in enumerate(examples):
        ids[i, length - lengths[i] :] = ex["input_ids"]
        mask[i, length - lengths[i] :] = 1
        rows.append(([ex["pixel_values"]], [ex["grid"]]) if len(ex["grid"]) else ([], []))
    grids = [g for _, gs in rows for g in gs]
    grid = np.concatenate(grids) if grids else None
    positions, _ = get_rope_index(
        ids, grid, mask, image_token_id=image_token_id, merge_size=geometry.merge_size
    )
    inputs = {"input_ids": ids, "segment_ids": mask, "positions": positions}
    if grids or max_patches is not None:
        inputs["pixel_values"], inputs["vision"] = vision_inputs(
            rows, patches_per_row=max_patches, geometry=geometry
        )
    return {
        "inputs": inputs,
        "answers": [ex["answer"] for ex in examples],
        "choices": [ex["choices"] for ex in examples],
        "ids": [ex["id"] for ex in examples],
    }
