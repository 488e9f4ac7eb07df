"""Tokenizer: both backends behave alike; saving reloads; sentencepiece training is deterministic."""

import json
import pickle

import pytest
import tokenizers

from r1ov_jax.processing import Tokenizer, train_sentencepiece
from r1ov_jax.processing.tokenizer import QWEN_SPECIAL_TOKENS, REASONING_TAGS, sentencepiece_to_hf

from .conftest import SP_CORPUS

TEXTS = [
    "Describe this image.",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>What is x?<|im_end|>\n",
    "<think>2 + 2 = 4</think>\n<answer>4</answer><|im_end|>",
    "  leading spaces, double  spaces,\ttabs\n\n\nand newlines  ",
    "unicode: wörld, 数学, emoji 😀, math ∑ x² ≤ π",
    "numbers 1234567890 and punctuation !?.,;:()[]{}<>",
    "",
]


@pytest.fixture(params=["hf", "sp"])
def tok(request, hf_tokenizer, sp_tokenizer):
    return hf_tokenizer if request.param == "hf" else sp_tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok):
    ids = {}
    for t in QWEN_SPECIAL_TOKENS + REASONING_TAGS:
        enc = tok.encode(t)
        assert len(enc) == 1 and enc[0] == tok.token_to_id(t), t
        ids[t] = enc[0]
    assert len(set(ids.values())) == len(ids)
    assert (tok.im_start_id, tok.im_end_id, tok.image_pad_id) == (
        ids["<|im_start|>"], ids["<|im_end|>"], ids["<|image_pad|>"])  # fmt: skip
    assert (tok.vision_start_id, tok.vision_end_id, tok.video_pad_id) == (
        ids["<|vision_start|>"], ids["<|vision_end|>"], ids["<|video_pad|>"])  # fmt: skip
    assert tok.eos_id == ids["<|im_end|>"] and tok.pad_id == ids["<|endoftext|>"]
    # Inside text, next to letters, they are still recognised.
    enc = tok.encode("ab<|image_pad|>cd<think>ef")
    assert enc.count(tok.image_pad_id) == 1 and enc.count(ids["<think>"]) == 1
    assert tok.token_to_id("<|not_a_token|>") is None


def test_skip_special_tokens(tok):
    text = "<|im_start|>assistant\n<think>a</think><answer>b</answer><|im_end|>"
    assert (
        tok.decode(tok.encode(text), skip_special_tokens=True)
        == "assistant\n<think>a</think><answer>b</answer>"
    )
    assert tok.special_ids >= {tok.im_start_id, tok.im_end_id, tok.image_pad_id}
    assert tok.token_to_id("<think>") not in tok.special_ids


def test_decode_errors(tok):
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(TypeError):
        tok.encode(["not", "a", "string"])


def test_save_reload(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.backend == tok.backend and again.vocab_size == tok.vocab_size
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
    assert (again.eos_id, again.pad_id) == (tok.eos_id, tok.pad_id)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"


def test_pickle(tok):
    again = pickle.loads(pickle.dumps(tok))
    assert again.backend == tok.backend and again.eos_id == tok.eos_id
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)


def test_transformers_loads_saved_folder(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf.decode(ids) == text
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id


def test_eos_from_config(hf_tokenizer, tmp_path):
    # A base-model style config (eos <|endoftext|>) is honoured, and survives a save.
    hf_tokenizer.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"content": "<|endoftext|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    base = Tokenizer.from_pretrained(tmp_path)
    assert base.eos_id == base.token_to_id("<|endoftext|>")
    base.save(tmp_path / "again")
    assert Tokenizer.from_pretrained(tmp_path / "again").eos_id == base.eos_id


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_sentencepiece_deterministic(tmp_path, model_type):
    a = train_sentencepiece(SP_CORPUS, tmp_path / "a", vocab_size=400, model_type=model_type)
    b = train_sentencepiece(iter(SP_CORPUS), tmp_path / "b", vocab_size=400, model_type=model_type)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.encode(SP_CORPUS[1]) == b.encode(SP_CORPUS[1])
    # Byte fallback: characters never seen in training still round-trip.
    assert a.decode(a.encode("unseen: Ωμέγα ✓")) == "unseen: Ωμέγα ✓"


def test_sentencepiece_learns_words(tmp_path):
    sp = train_sentencepiece(SP_CORPUS * 3, tmp_path / "w", vocab_size=420, model_type="bpe")
    text = "The chart shows sales rising"
    assert len(sp.encode(text)) < len(text) / 2  # merges, not one piece per character


def test_sentencepiece_json_conversion_matches(sp_tokenizer):
    hf = sentencepiece_to_hf(sp_tokenizer._sp_proto)
    for text in TEXTS + SP_CORPUS:
        assert hf.encode(text, add_special_tokens=False).ids == sp_tokenizer.encode(text), text
    # The converted tokenizer marks the same ids special.
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    assert special == set(sp_tokenizer.special_ids)


def test_from_pretrained_prefers_sentencepiece_model(sp_tokenizer, tmp_path):
    sp_tokenizer.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    assert Tokenizer.from_pretrained(tmp_path).backend == "sentencepiece"
    # Without our config marker the tokenizer.json (a faithful conversion) is used.
    (tmp_path / "tokenizer_config.json").unlink()
    converted = Tokenizer.from_pretrained(tmp_path)
    assert converted.backend == "hf"
    assert converted.encode(TEXTS[1]) == sp_tokenizer.encode(TEXTS[1])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        Tokenizer.from_sentencepiece(tmp_path / "bad.model")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_sentencepiece(["", "\n"], tmp_path / "x", vocab_size=400)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(["a"], tmp_path / "x", vocab_size=400, model_type="word")
    with pytest.raises(ValueError, match="exactly one"):
        Tokenizer()


def test_missing_special_token_error(tmp_path):
    bare = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0}, merges=[]))
    tok = Tokenizer(hf=bare)
    with pytest.raises(KeyError, match="has no '<\\|im_start\\|>' token"):
        _ = tok.im_start_id
