"""One tokenizer interface over HF `tokenizer.json` (tokenizers library) and sentencepiece models.

Real Qwen checkpoints ship tokenizer.json; tiny from-scratch models use a sentencepiece model trained here
on generated text. Both know the Qwen special tokens by name, so the chat template and processor code are
shared. In both backends special tokens written in the text (`<|im_start|>`, `<|image_pad|>`, ...) encode to
single ids, and `encode` never adds BOS/EOS.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from r1ov_jax.errors import InvalidInputError, MissingInputError

# The Qwen control tokens the model code relies on (ids differ per tokenizer; look them up by name).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# R1-style reasoning tags: single tokens in our tiny tokenizers but NOT special (decode keeps them).
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
DEFAULT_EOS = "<|im_end|>"  # Qwen instruct models stop on <|im_end|>
DEFAULT_PAD = "<|endoftext|>"
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_BACKEND_KEY = (
    "r1ov_backend"  # written to tokenizer_config.json so a saved sentencepiece tokenizer reloads as one
)
_SP_MODEL_FILE = "tokenizer.model"
_SP_SPACE = "\u2581"  # sentencepiece's visible space "▁"


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores tokens as strings or as AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Tokenizer with the same interface for both backends. Build it with `from_pretrained`,
    `from_sentencepiece`, `train_sentencepiece` or `make_test_tokenizer`."""

    def __init__(
        self,
        *,
        hf: tokenizers.Tokenizer | None = None,
        sp_model_proto: bytes | None = None,
        config: dict[str, Any] | None = None,
    ):
        if (hf is None) == (sp_model_proto is None):
            raise InvalidInputError(
                "pass exactly one of hf= (tokenizers.Tokenizer) or sp_model_proto= (bytes)"
            )
        self.config = dict(config or {})
        self.eos_token = _token_text(self.config.get("eos_token")) or DEFAULT_EOS
        self.pad_token = _token_text(self.config.get("pad_token")) or DEFAULT_PAD
        self._hf = hf
        self._sp_proto = sp_model_proto
        if hf is not None:
            self.backend = "hf"
            self._special_ids = {i for i, tok in hf.get_added_tokens_decoder().items() if tok.special}
        else:
            self.backend = "sentencepiece"
            self._sp = spm.SentencePieceProcessor(model_proto=sp_model_proto)
            n = self._sp.get_piece_size()
            self._special_ids = {i for i in range(n) if self._sp.is_control(i) or self._sp.is_unknown(i)}
            self._special_ids |= {i for t in QWEN_SPECIAL_TOKENS if (i := self.token_to_id(t)) is not None}

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a folder: tokenizer.json (+ tokenizer_config.json), or a sentencepiece tokenizer.model.

        A folder written by `save` from a sentencepiece tokenizer holds both; its tokenizer_config.json says
        to reload the sentencepiece model (the exact original) rather than the converted tokenizer.json.
        """
        path = Path(path)
        if not path.is_dir():
            raise MissingInputError(f"tokenizer folder {path} does not exist")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        sp_file, json_file = path / _SP_MODEL_FILE, path / "tokenizer.json"
        if config.get(_BACKEND_KEY) == "sentencepiece" and sp_file.exists():
            return cls(sp_model_proto=sp_file.read_bytes(), config=config)
        if json_file.exists():
            try:
                hf = tokenizers.Tokenizer.from_file(str(json_file))
            except Exception as e:
                raise InvalidInputError(f"{json_file}: not a valid tokenizers JSON file ({e})") from e
            return cls(hf=hf, config=config)
        if sp_file.exists():
            return cls(sp_model_proto=sp_file.read_bytes(), config=config)
        raise MissingInputError(f"{path} has neither tokenizer.json nor {_SP_MODEL_FILE}")

    @classmethod
    def from_sentencepiece(
        cls, model_path: str | os.PathLike, config: dict[str, Any] | None = None
    ) -> Tokenizer:
        """Load a sentencepiece `.model` file."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MissingInputError(f"sentencepiece model {model_path} does not exist")
        proto = model_path.read_bytes()
        try:
            spm.SentencePieceProcessor(model_proto=proto)
        except Exception as e:
            raise InvalidInputError(f"{model_path}: not a valid sentencepiece model ({e})") from e
        return cls(sp_model_proto=proto, config=config)

    # ---- core interface -----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become single ids; no BOS/EOS added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text)}")
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; skip_special_tokens drops control tokens (<|im_end|>, ...), never <think> etc."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInputError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """Id of a single token string, or None when the vocabulary lacks it."""
        if self._hf is not None:
            return self._hf.token_to_id(token)
        i = self._sp.piece_to_id(token)
        # sentencepiece answers unk_id for unknown pieces.
        return None if self._sp.is_unknown(i) and token != self._sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise InvalidInputError(f"token id {i} out of range [0, {self.vocab_size})")
        return self._hf.id_to_token(i) if self._hf is not None else self._sp.id_to_piece(i)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding may be padded beyond this)."""
        if self._hf is not None:
            return self._hf.get_vocab_size(with_added_tokens=True)
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids dropped by decode(skip_special_tokens=True)."""
        return frozenset(self._special_ids)

    def _required_id(self, token: str) -> int:
        i = self.token_to_id(token)
        if i is None:
            raise KeyError(f"{self.backend} tokenizer has no {token!r} token (vocab size {self.vocab_size})")
        return i

    @property
    def im_start_id(self) -> int:
        return self._required_id("<|im_start|>")

    @property
    def im_end_id(self) -> int:
        return self._required_id("<|im_end|>")

    @property
    def vision_start_id(self) -> int:
        return self._required_id("<|vision_start|>")

    @property
    def vision_end_id(self) -> int:
        return self._required_id("<|vision_end|>")

    @property
    def image_pad_id(self) -> int:
        return self._required_id("<|image_pad|>")

    @property
    def video_pad_id(self) -> int:
        return self._required_id("<|video_pad|>")

    @property
    def eos_id(self) -> int:
        return self._required_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        return self._required_id(self.pad_token)

    # ---- saving -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a folder that `from_pretrained` and transformers' AutoTokenizer both load.

        HF backend: tokenizer.json + tokenizer_config.json. Sentencepiece backend: also tokenizer.model (what
        `from_pretrained` reloads); its tokenizer.json is a conversion for transformers (for sentencepiece
        models with identity normalization and no dummy prefix, as `train_sentencepiece` makes them).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in self.config.items() if k != _BACKEND_KEY}
        config.update(eos_token=self.eos_token, pad_token=self.pad_token)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.setdefault("bos_token", None)
        config.setdefault("clean_up_tokenization_spaces", False)
        if self._hf is not None:
            self._hf.save(str(path / "tokenizer.json"))
        else:
            (path / _SP_MODEL_FILE).write_bytes(self._sp_proto)
            sentencepiece_to_hf(self._sp_proto).save(str(path / "tokenizer.json"))
            config[_BACKEND_KEY] = "sentencepiece"
            config.setdefault("unk_token", self._sp.id_to_piece(self._sp.unk_id()))
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # Picklable (data-loader workers receive it by pickle): store the serialized model, rebuild on load.
    def __getstate__(self) -> dict[str, Any]:
        hf_json = self._hf.to_str() if self._hf is not None else None
        return {"config": self.config, "hf_json": hf_json, "sp_model_proto": self._sp_proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        hf = tokenizers.Tokenizer.from_str(state["hf_json"]) if state["hf_json"] is not None else None
        self.__init__(hf=hf, sp_model_proto=state["sp_model_proto"], config=state["config"])

    def __repr__(self) -> str:
        return f"Tokenizer(backend={self.backend!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"


# ---- sentencepiece training and conversion ----------------------------------------------------------------
def train_sentencepiece(
    texts: Iterable[str],
    out_prefix: str | os.PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    extra_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Train a small sentencepiece model on `texts`, write it to `{out_prefix}.model` and load it.

    The Qwen special tokens, the reasoning tags and "\\n" are user-defined symbols (always single tokens);
    byte fallback is on, so any text round-trips. Text is kept verbatim (identity normalization, no dummy
    prefix, whitespace kept) so that encoding pieces separately concatenates like encoding the whole.
    Deterministic: one thread, no sentence sampling, and the file does not record its path, so equal inputs
    give byte-identical models. Each input line is one training sentence.
    `vocab_size` must leave room for 256 byte pieces, the symbols and the characters seen (>= ~300);
    small corpora may give fewer pieces than asked (the limit is soft).
    """
    if model_type not in ("bpe", "unigram"):
        raise InvalidInputError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    symbols = list(dict.fromkeys([*QWEN_SPECIAL_TOKENS, *REASONING_TAGS, "\n", *extra_symbols]))
    lines = [line for text in texts for line in text.split("\n") if line]
    if not lines:
        raise InvalidInputError("train_sentencepiece got no non-empty text")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            user_defined_symbols=symbols,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,
            num_threads=1,
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise InvalidInputError(f"sentencepiece training failed for vocab_size={vocab_size}: {e}") from e
    path = Path(f"{out_prefix}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return Tokenizer.from_sentencepiece(path)


def _bpe_merges(vocab: dict[str, int], mergeable: set[str]) -> list[tuple[str, str]]:
    """Merges for a sentencepiece BPE vocabulary, ranked by the merged piece's id (its merge order), as in
    transformers' `generate_merges`."""
    merges = []
    for piece in mergeable:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((vocab[piece], vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


def sentencepiece_to_hf(model_proto: bytes) -> tokenizers.Tokenizer:
    """Convert a sentencepiece model (as made by `train_sentencepiece`) to a `tokenizers.Tokenizer`
    that encodes to the same ids. Needs protobuf (it reads the model's trainer and normalizer specs)."""
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_proto)
    norm = m.normalizer_spec
    if norm.name != "identity" or norm.add_dummy_prefix or norm.remove_extra_whitespaces:
        raise InvalidInputError(
            "only sentencepiece models with identity normalization, no dummy prefix and kept whitespace "
            f"convert to tokenizer.json (got {norm.name!r}, add_dummy_prefix={norm.add_dummy_prefix}, "
            f"remove_extra_whitespaces={norm.remove_extra_whitespaces})"
        )
    normal, unknown, control, user_defined = 1, 2, 3, 4  # ModelProto.SentencePiece.Type
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    unk_id = m.trainer_spec.unk_id
    if m.trainer_spec.model_type == 1:  # UNIGRAM
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk_id, byte_fallback=True)
    elif m.trainer_spec.model_type == 2:  # BPE
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        mergeable = {p for p, _, t in pieces if t == normal}
        model = models.BPE(
            vocab,
            _bpe_merges(vocab, mergeable),
            unk_token=pieces[unk_id][0],
            byte_fallback=True,
            fuse_unk=True,
        )
    else:
        raise InvalidInputError(
            f"unsupported sentencepiece model_type {m.trainer_spec.model_type} (need unigram or bpe)"
        )
    tok = tokenizers.Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", _SP_SPACE)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(_SP_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    added = [
        AddedToken(p, special=(t != user_defined or p in QWEN_SPECIAL_TOKENS), normalized=False)
        for p, _, t in pieces
        if t in (unknown, control, user_defined)
    ]
    tok.add_tokens(added)  # already in the vocab: this only makes them match before the model
    return tok


# ---- test helper ------------------------------------------------------------------------------------------
_TEST_CORPUS = (
    "You are a helpful assistant.",
    "Describe this image. The chart shows sales rising from 10 to 42 units between 2019 and 2023.",
    "A triangle ABC has sides 3, 4 and 5; what is its area? The area is 6.",
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.",
    "The table lists three rows: apples 4, pears 7, plums 12.\nThe answer is (B).",
    "Let's think step by step: 2 + 2 = 4, so x = 4.\n\nTherefore the answer is 4.",
    "The circuit has a 5 V source and two 10 ohm resistors in series; the current is 0.25 A.",
    "Hello world! How many objects are there in the scene? There are 3 red cubes and 2 spheres.",
)


def make_test_tokenizer(tmp_dir: str | os.PathLike, vocab_size: int = 400) -> Tokenizer:
    """A tiny Qwen-style HF tokenizer for tests: byte-level BPE with Qwen's normalizer and pre-tokenizer,
    trained on a few sentences, with the Qwen special tokens (special) and reasoning tags (not special) added.
    Writes tokenizer.json + tokenizer_config.json into `tmp_dir` and loads them back. Deterministic."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(list(_TEST_CORPUS) * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TAGS])
    out = Tokenizer(hf=tok, config={"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768})
    out.save(tmp_dir)
    return Tokenizer.from_pretrained(tmp_dir)
