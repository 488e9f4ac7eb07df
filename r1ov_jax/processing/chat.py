"""Qwen2.5-VL chat template in Python, <|image_pad|> expansion, and tokenization with an assistant loss mask.

`render_chat` reproduces the hub `chat_template.json` (QWEN2_5_VL.md §6, kept below as
QWEN2_5_VL_CHAT_TEMPLATE for HF export and the parity test). `tokenize_conversation` renders the same text as
(piece, is_target) segments and tokenizes them one by one, so the loss mask is exact by construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from r1ov_jax.processing.tokenizer import Tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
DEFAULT_SYSTEM = "You are a helpful assistant."

# Verbatim hub template (Qwen/Qwen2.5-VL-7B-Instruct chat_template.json). Not used for rendering here; it is
# what an HF export writes and what the parity test renders with jinja2.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _content_text(content: Any, where: str, counts: dict[str, int], add_vision_id: bool) -> str:
    """Rendered content of one message: a string, or a list of image / video / text items (HF format)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where}: content must be a str or a list of items, got {type(content).__name__}")
    out = []
    for j, item in enumerate(content):
        if not isinstance(item, dict):
            raise ValueError(
                f"{where} item {j}: expected a dict like {{'type': 'text', 'text': ...}}, got {item!r}"
            )
        # Same precedence as the template: image, then video, then text; unknown items render nothing.
        if item.get("type") == "image" or "image" in item or "image_url" in item:
            counts["image"] += 1
            prefix = f"Picture {counts['image']}: " if add_vision_id else ""
            out.append(f"{prefix}{VISION_START}{IMAGE_PAD}{VISION_END}")
        elif item.get("type") == "video" or "video" in item:
            counts["video"] += 1
            prefix = f"Video {counts['video']}: " if add_vision_id else ""
            out.append(f"{prefix}{VISION_START}{VIDEO_PAD}{VISION_END}")
        elif "text" in item:
            if not isinstance(item["text"], str):
                raise ValueError(f"{where} item {j}: 'text' must be a str, got {type(item['text']).__name__}")
            out.append(item["text"])
    return "".join(out)


def _segments(
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool,
    default_system: str | None,
    add_vision_id: bool,
) -> Iterator[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) pieces; their concatenation is `render_chat`'s output.

    Targets are each assistant turn's content and its closing <|im_end|>; the `<|im_start|>assistant\\n`
    header and the newline after <|im_end|> are not (the model never has to produce them).
    """
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ValueError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    counts = {"image": 0, "video": 0}
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: expected a dict with 'role' and 'content', got {message!r}")
        role = message["role"]
        if i == 0 and role != "system" and default_system is not None:
            yield f"{IM_START}system\n{default_system}{IM_END}\n", False
        content = _content_text(message["content"], f"{where} ({role})", counts, add_vision_id)
        if role == "assistant":
            yield f"{IM_START}{role}\n", False
            yield content, True
            yield IM_END, True
            yield "\n", False
        else:
            yield f"{IM_START}{role}\n{content}{IM_END}\n", False
    if add_generation_prompt:
        yield f"{IM_START}assistant\n", False


def render_chat(
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM,
    add_vision_id: bool = False,
) -> str:
    """Render a conversation exactly like Qwen2.5-VL's chat template.

    Args:
        messages: HF-format messages: {"role": "system" | "user" | "assistant", "content": str | list of
            {"type": "image"} / {"type": "video"} / {"type": "text", "text": str} items}.
        add_generation_prompt: append `<|im_start|>assistant\\n` for generation.
        default_system: system prompt inserted when the first message is not a system message
            (the template's fixed "You are a helpful assistant."); None inserts nothing (not in the template).
        add_vision_id: prefix "Picture k: " / "Video k: " before each image / video (template option).
    Returns:
        The prompt text with one `<|image_pad|>` per image (see `expand_image_pads`).
    """
    return "".join(
        text for text, _ in _segments(messages, add_generation_prompt, default_system, add_vision_id)
    )


def _tokens_per_image(image_grid_thw: Any, merge_size: int) -> list[int]:
    grid = np.asarray(image_grid_thw, dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [n_images, 3], got {grid.shape}")
    sizes = grid.prod(axis=1)
    bad = [i for i, s in enumerate(sizes) if s <= 0 or s % (merge_size * merge_size)]
    if bad:
        raise ValueError(
            f"image_grid_thw rows {bad} give t*h*w not divisible by merge_size**2={merge_size**2}: "
            f"{grid[bad].tolist()}"
        )
    return (sizes // (merge_size * merge_size)).tolist()


def expand_image_pads(text: str, image_grid_thw: Any, merge_size: int = 2) -> str:
    """Replace the k-th `<|image_pad|>` with t*h*w // merge_size**2 copies, for image_grid_thw[k] = (t, h, w).

    Raises ValueError when the number of `<|image_pad|>` in `text` differs from the number of grid rows.
    """
    counts = _tokens_per_image(image_grid_thw, merge_size)
    parts = text.split(IMAGE_PAD)
    if len(parts) - 1 != len(counts):
        raise ValueError(
            f"text has {len(parts) - 1} {IMAGE_PAD} tokens but image_grid_thw has {len(counts)} images; "
            "pass one grid row per image placeholder"
        )
    out = [parts[0]]
    for n, part in zip(counts, parts[1:]):
        out.append(IMAGE_PAD * n)
        out.append(part)
    return "".join(out)


def tokenize_conversation(
    messages: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    image_grid_thw: Any = None,
    merge_size: int = 2,
    add_generation_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM,
) -> dict[str, np.ndarray]:
    """Tokenize a conversation for training: ids of `render_chat(messages)` with image pads expanded, and a
    mask that is True exactly on assistant content tokens and their closing <|im_end|>.

    Each rendered piece is tokenized separately, then image pads are expanded on ids. Pieces meet at special
    tokens, where tokenizers split anyway, or right after the `<|im_start|>assistant\n` header, where
    generation starts at inference; the ids equal those of the whole text unless an assistant turn begins
    with whitespace containing a newline (whole-text byte-level BPE would merge it with the header's newline).
    Args:
        image_grid_thw: [n_images, 3] grids from ImageProcessor, in the order images appear; required when the
            conversation has images.
    Returns:
        dict(input_ids=int32[L], loss_mask=bool[L]).
    """
    segments = list(_segments(messages, add_generation_prompt, default_system, add_vision_id=False))
    n_images = sum(text.count(IMAGE_PAD) for text, _ in segments)
    if any(VIDEO_PAD in text for text, _ in segments):
        raise ValueError("conversation has video items; only images are supported for tokenization")
    if image_grid_thw is None:
        if n_images:
            raise ValueError(f"conversation has {n_images} images but image_grid_thw is None")
        counts = []
    else:
        counts = _tokens_per_image(image_grid_thw, merge_size)
        if len(counts) != n_images:
            raise ValueError(f"conversation has {n_images} images but image_grid_thw has {len(counts)} rows")
    pad_id = tokenizer.image_pad_id if n_images else None
    ids: list[int] = []
    mask: list[bool] = []
    image = 0
    for text, target in segments:
        for token in tokenizer.encode(text):
            if token == pad_id:  # one pad per image after rendering; expand it in place
                ids.extend([token] * counts[image])
                mask.extend([target] * counts[image])
                image += 1
            else:
                ids.append(token)
                mask.append(target)
    if image != n_images:
        raise ValueError(
            f"tokenizer produced {image} {IMAGE_PAD} ids for {n_images} images; is it a single token?"
        )
    return {"input_ids": np.asarray(ids, dtype=np.int32), "loss_mask": np.asarray(mask, dtype=np.bool_)}
