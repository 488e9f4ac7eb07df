"""Chat template vs the hub Jinja template rendered by transformers; pad expansion; loss-mask tokenization."""

import numpy as np
import pytest

from r1ov_jax.processing import expand_image_pads, render_chat, tokenize_conversation
from r1ov_jax.processing.chat import QWEN2_5_VL_CHAT_TEMPLATE

IMG = {"type": "image"}


def _text(t):
    return {"type": "text", "text": t}


CONVERSATIONS = {
    "one-image": [{"role": "user", "content": [IMG, _text("Describe this image.")]}],
    "system-multiturn": [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>2+2=4</think><answer>4</answer>"},
        {"role": "user", "content": [_text("And 3+3?")]},
        {"role": "assistant", "content": [_text("<think>6</think>"), _text("<answer>6</answer>")]},
    ],
    "image-forms": [
        {
            "role": "user",
            "content": [
                _text("Compare "),
                {"type": "image", "image": "a.png"},
                _text(" with "),
                {"image_url": {"url": "http://x/b.png"}},
                {"image": "c.png"},
                {"type": "audio", "audio": "ignored.wav"},
                _text("."),
            ],
        },
        {"role": "assistant", "content": "The first is brighter."},
    ],
    "videos": [
        {"role": "user", "content": [{"type": "video"}, IMG, {"video": "clip.mp4"}, _text("What happens?")]},
    ],
    "system-list-content": [
        {"role": "system", "content": [_text("Be brief.")]},
        {"role": "user", "content": [IMG, IMG, _text("Same?")]},
    ],
    "empty-and-odd-text": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": []},
        {"role": "user", "content": "braces {{ x }} {% if %} and\nnewlines\n\n and ünïcödé 😀"},
        {"role": "assistant", "content": " leading space\tand tab"},
    ],
}


@pytest.fixture(scope="module")
def hf_chat(hf_tokenizer, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("chat_tok")
    hf_tokenizer.save(d)
    return transformers.AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("vision_id", [False, True])
def test_render_matches_hub_template(hf_chat, name, gen, vision_id):
    messages = CONVERSATIONS[name]
    ref = hf_chat.apply_chat_template(
        messages,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=gen,
        add_vision_id=vision_id,
    )
    assert render_chat(messages, add_generation_prompt=gen, add_vision_id=vision_id) == ref


def test_render_documented_example():
    # QWEN2_5_VL.md §6, rendered by transformers for one image plus "Describe this image.".
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(CONVERSATIONS["one-image"], add_generation_prompt=True) == expected


def test_default_system_options():
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(msgs, default_system=None) == "<|im_start|>user\nhi<|im_end|>\n"
    assert render_chat(msgs, default_system="S").startswith(
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user"
    )
    # An explicit system message wins over the default.
    sys_first = [{"role": "system", "content": "X"}] + msgs
    assert render_chat(sys_first, default_system="S").count("system") == 1


def test_render_errors():
    with pytest.raises(ValueError, match="message 1 .*content must be a str or a list"):
        render_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}])
    with pytest.raises(ValueError, match="message 0: expected a dict with 'role' and 'content'"):
        render_chat([{"content": "no role"}])
    with pytest.raises(ValueError, match="message 0 \\(user\\) item 1: expected a dict"):
        render_chat([{"role": "user", "content": [IMG, "bare string"]}])
    with pytest.raises(ValueError, match="'text' must be a str"):
        render_chat([{"role": "user", "content": [{"type": "text", "text": 3}]}])
    with pytest.raises(ValueError, match="messages must be a list"):
        render_chat("just a string")


def test_expand_image_pads():
    text = "a<|image_pad|>b<|image_pad|>c"
    out = expand_image_pads(text, np.array([[1, 4, 6], [1, 2, 2]]))
    assert out == "a" + "<|image_pad|>" * 6 + "b" + "<|image_pad|>" + "c"
    assert expand_image_pads("no images", np.zeros((0, 3), np.int64)) == "no images"
    assert expand_image_pads("<|image_pad|>", [[2, 4, 6]], merge_size=2) == "<|image_pad|>" * 12
    with pytest.raises(
        ValueError, match="text has 2 <\\|image_pad\\|> tokens but image_grid_thw has 1 images"
    ):
        expand_image_pads(text, [[1, 4, 6]])
    with pytest.raises(ValueError, match="text has 1 .* has 2 images"):
        expand_image_pads("<|image_pad|>", [[1, 2, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match="not divisible by merge_size"):
        expand_image_pads("<|image_pad|>", [[1, 3, 2]])
    with pytest.raises(ValueError, match="shape \\[n_images, 3\\]"):
        expand_image_pads("<|image_pad|>", [1, 4, 6])


def _grids(messages):
    n = render_chat(messages).count("<|image_pad|>")
    return np.array([[1, 2 * (k + 1), 4] for k in range(n)], np.int64) if n else None


def _assistant_char_spans(text):
    """Character spans of each assistant turn's content + <|im_end|>, found in the rendered text."""
    spans, head, end = [], "<|im_start|>assistant\n", "<|im_end|>"
    start = text.find(head)
    while start != -1:
        c0 = start + len(head)
        c1 = text.index(end, c0) + len(end)
        spans.append((c0, c1))
        start = text.find(head, c1)
    return spans


TRAIN_CONVERSATIONS = [k for k in CONVERSATIONS if k != "videos"] + ["no-images"]
CONVERSATIONS["no-images"] = [
    {"role": "user", "content": "Solve x+1=3."},
    {"role": "assistant", "content": "<think>x = 3 - 1 = 2</think><answer>2</answer>"},
    {"role": "user", "content": "Thanks! Now x+2=3?"},
    {"role": "assistant", "content": "x is 1."},
]


@pytest.mark.parametrize("name", TRAIN_CONVERSATIONS)
def test_tokenize_conversation_hf(hf_tokenizer, name):
    messages = CONVERSATIONS[name]
    grids = _grids(messages)
    out = tokenize_conversation(messages, hf_tokenizer, image_grid_thw=grids)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape
    # 1. Piecewise tokenization equals tokenizing the whole rendered, expanded text.
    text = render_chat(messages)
    full = expand_image_pads(text, grids) if grids is not None else text
    assert ids.tolist() == hf_tokenizer.encode(full)
    # 2. The mask is exactly the tokens inside assistant content + <|im_end|> spans (via tokenizer offsets).
    enc = hf_tokenizer._hf.encode(full, add_special_tokens=False)
    spans = _assistant_char_spans(full)
    expected = [any(a <= s and e <= b for a, b in spans) for s, e in enc.offsets]
    np.testing.assert_array_equal(mask, expected)
    # 3. Decoding the masked tokens gives the assistant turns.
    assert hf_tokenizer.decode(ids[mask]) == "".join(full[a:b] for a, b in spans)
    if grids is not None:
        assert (ids == hf_tokenizer.image_pad_id).sum() == grids.prod(axis=1).sum() // 4


def test_mask_excludes_header_and_turn_newline(hf_tokenizer):
    messages = CONVERSATIONS["no-images"][:2]
    out = tokenize_conversation(messages, hf_tokenizer)
    ids, mask = out["input_ids"].tolist(), out["loss_mask"].tolist()
    im_start, im_end = hf_tokenizer.im_start_id, hf_tokenizer.im_end_id
    # Last tokens: ... <|im_end|> (target) "\n" (not a target).
    assert ids[-2] == im_end and mask[-2] and not mask[-1]
    assistant_start = len(ids) - 1 - ids[::-1].index(im_start)
    header = hf_tokenizer.encode("<|im_start|>assistant\n")
    assert ids[assistant_start : assistant_start + len(header)] == header
    assert not any(mask[: assistant_start + len(header)])
    assert all(mask[assistant_start + len(header) : -1])


def test_generation_prompt(hf_tokenizer):
    messages = CONVERSATIONS["one-image"]
    out = tokenize_conversation(
        messages, hf_tokenizer, image_grid_thw=[[1, 4, 6]], add_generation_prompt=True
    )
    header = hf_tokenizer.encode("<|im_start|>assistant\n")
    assert out["input_ids"][-len(header) :].tolist() == header
    assert not out["loss_mask"].any()
    assert (out["input_ids"] == hf_tokenizer.image_pad_id).sum() == 6


def test_tokenize_conversation_sentencepiece(sp_tokenizer):
    messages = (
        CONVERSATIONS["system-multiturn"]
        + CONVERSATIONS["one-image"]
        + [{"role": "assistant", "content": "<think>bars</think><answer>plums</answer>"}]
    )
    grids = [[1, 4, 4]]
    out = tokenize_conversation(messages, sp_tokenizer, image_grid_thw=grids)
    full = expand_image_pads(render_chat(messages), grids)
    assert sp_tokenizer.decode(out["input_ids"]) == full
    assert out["input_ids"].tolist() == sp_tokenizer.encode(full)
    spans = _assistant_char_spans(full)
    assert sp_tokenizer.decode(out["input_ids"][out["loss_mask"]]) == "".join(full[a:b] for a, b in spans)


def test_assistant_content_starting_with_newlines(hf_tokenizer):
    # Pieces are cut where generation starts ("<|im_start|>assistant\n" | content). If the content begins
    # with newlines, whole-text pre-tokenization joins them with the header's "\n" into one pre-token, so a
    # tokenizer with newline merges (Qwen's) would give other ids there. The piecewise ids keep the
    # generation boundary, decode to the same text, and leave the header unmasked.
    pre = [p for p, _ in hf_tokenizer._hf.pre_tokenizer.pre_tokenize_str("assistant\n\n\nhello")]
    assert pre == ["assistant", "\u010a\u010a\u010a", "hello"]  # byte-level "\n" is "Ċ"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nhello"}]
    out = tokenize_conversation(messages, hf_tokenizer)
    assert hf_tokenizer.decode(out["input_ids"]) == render_chat(messages)
    assert hf_tokenizer.decode(out["input_ids"][out["loss_mask"]]) == "\n\nhello<|im_end|>"
    header = hf_tokenizer.encode("<|im_start|>assistant\n")
    first = len(out["input_ids"]) - 2 - len(hf_tokenizer.encode("\n\nhello"))
    assert out["input_ids"][first - len(header) : first].tolist() == header


def test_tokenize_errors(hf_tokenizer):
    messages = CONVERSATIONS["one-image"]
    with pytest.raises(ValueError, match="has 1 images but image_grid_thw is None"):
        tokenize_conversation(messages, hf_tokenizer)
    with pytest.raises(ValueError, match="has 1 images but image_grid_thw has 2 rows"):
        tokenize_conversation(messages, hf_tokenizer, image_grid_thw=[[1, 2, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match="not divisible"):
        tokenize_conversation(messages, hf_tokenizer, image_grid_thw=[[1, 3, 3]])
    video = [{"role": "user", "content": [{"type": "video"}, _text("What happens?")]}]
    with pytest.raises(ValueError, match="video items"):
        tokenize_conversation(video, hf_tokenizer)
