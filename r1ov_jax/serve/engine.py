"""The model side of ``r1ov serve``: request → prompt example (checked against the limits), a batch of requests →
one ``generate_rows`` call on bucketed static shapes, sampled tokens → choices (stop sequences, finish reason).

Static shapes: the batch is padded to a row bucket (``Limits.batch_buckets``, by default powers of two up to
``max_batch``; padding rows get a zero token budget), the prompt length and the per-row patch budget are rounded
up to powers of two, and so is the batch's largest ``max_tokens``. The sampler therefore compiles once per
(rows, length, patches, tokens, sampling mode) bucket, never per request; ``/metrics`` lists the shapes
compiled so far.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence

import numpy as np

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.rollout.chat import chat_example, encode_examples
from r1ov_jax.rollout.sampler import RowParams, SamplingConfig, generate_rows
from r1ov_jax.serve.batcher import Job
from r1ov_jax.serve.metrics import Metrics
from r1ov_jax.serve.protocol import ApiError, ChatRequest, to_hf_messages

MIN_PROMPT_BUCKET, MIN_PATCH_BUCKET, MIN_TOKEN_BUCKET = 32, 32, 16


def bucket(n: int, lo: int, hi: int | None = None) -> int:
    """The smallest of lo·2^k and 1.5·lo·2^k that holds ``n``, capped at ``hi``: at most 1/3 padding, and
    O(log) distinct shapes."""
    b = lo
    while b < n and b * 3 // 2 < n:
        b *= 2
    b = b if b >= n else b * 3 // 2
    return b if hi is None else min(b, hi)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts (the CLI flags of the same names give the defaults)."""

    max_batch: int  # sampler rows per call (a request's n counts n)
    max_new_tokens: int  # cap on a request's max_tokens (and its default)
    max_prompt_tokens: int  # image tokens included
    max_image_bytes: int  # per image, decoded
    max_image_pixels: int  # per image, from its header (decompression bombs)
    max_queue: int  # requests waiting beyond the running batch; more get 503
    batch_window_s: float = 0.05  # a forming batch waits at most this long for requests being prepared
    batch_buckets: tuple[int, ...] = ()  # padded batch sizes (rows); () → powers of two up to max_batch

    def __post_init__(self):
        buckets = self.batch_buckets or tuple(2**k for k in range(self.max_batch.bit_length()))
        object.__setattr__(self, "batch_buckets", tuple(sorted({*buckets, self.max_batch})))

    def rows_bucket(self, rows: int) -> int:
        return next(b for b in self.batch_buckets if b >= rows)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int" and getattr(self, f.name) < 1:
                raise InvalidInputError(
                    f"--{f.name.replace('_', '-')} must be >= 1, got {getattr(self, f.name)}"
                )
        if not 0 <= self.batch_window_s <= 1:
            raise InvalidInputError(f"--batch-window-ms must be in 0..1000, got {self.batch_window_s * 1e3}")
        if not all(1 <= b <= self.max_batch for b in self.batch_buckets):
            raise InvalidInputError(
                f"--batch-buckets must lie in 1..{self.max_batch} (--max-batch), got {self.batch_buckets}"
            )


@dataclasses.dataclass
class Prepared:
    """A checked request, ready for the batcher."""

    example: dict  # ``encode_examples`` input
    prompt_tokens: int
    n: int
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int
    stops: list[str]


@dataclasses.dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" (EOS or a stop sequence) | "length"
    tokens: list[int]  # the completion's ids up to where the text ends (the EOS included)


class Engine:
    def __init__(self, loaded, limits: Limits, metrics: Metrics, *, default_system: str | None):
        self.model, self.tokenizer, self.image_processor = (
            loaded.model,
            loaded.tokenizer,
            loaded.image_processor,
        )
        self.limits, self.metrics, self.default_system = limits, metrics, default_system
        self.context = int(self.model.cfg.text.max_position_embeddings)
        self.eos_id, self.pad_id = self.tokenizer.eos_id, self.tokenizer.pad_id

    # ------------------------------------------------------------------ request threads
    def prepare(self, req: ChatRequest) -> Prepared:
        lim = self.limits
        if req.n > lim.max_batch:
            raise ApiError(
                400, f"n={req.n} exceeds this server's --max-batch {lim.max_batch}", "n_too_large", param="n"
            )
        messages, images = to_hf_messages(
            req, self.default_system, max_bytes=lim.max_image_bytes, max_pixels=lim.max_image_pixels
        )
        try:
            example = chat_example(self.model, self.tokenizer, self.image_processor, messages, images)
        except InvalidInputError as e:  # pixel data that fails a full decode, an elongated image, ...
            raise ApiError(400, str(e), "invalid_image") from None
        except ValueError as e:
            raise ApiError(400, f"messages: {e}", "invalid_request", param="messages") from None
        prompt = len(example["input_ids"])
        if prompt > lim.max_prompt_tokens:
            raise ApiError(
                400, f"the prompt has {prompt} tokens (images included); this server takes at most "
                f"{lim.max_prompt_tokens} (--max-prompt-tokens)", "context_length_exceeded", param="messages",
            )  # fmt: skip
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > lim.max_new_tokens:
            raise ApiError(
                400, f"max_tokens={asked} exceeds this server's limit of {lim.max_new_tokens} (--max-new-tokens)",
                "max_tokens_too_large", param="max_tokens",
            )  # fmt: skip
        max_new = asked if asked is not None else min(lim.max_new_tokens, self.context - prompt)
        if max_new < 1 or prompt + max_new > self.context:
            raise ApiError(
                400, f"the prompt ({prompt} tokens) plus max_tokens ({max_new}) exceeds the model's context of "
                f"{self.context} tokens", "context_length_exceeded", param="max_tokens",
            )  # fmt: skip
        seed = secrets.randbits(32) if req.seed is None else req.seed % 2**32
        return Prepared(example, prompt, req.n, req.temperature, req.top_p, seed, max_new, req.stops)

    # ------------------------------------------------------------------ batching thread
    def run_batch(self, jobs: Sequence[Job]) -> list[list[tuple[list[int], bool]]]:
        """One sampler call for all rows of ``jobs``; per job, per choice: (token ids, ended with EOS)."""
        rows = [(job.payload, c) for job in jobs for c in range(job.payload.n)]
        used = len(rows)
        padded = self.limits.rows_bucket(used)
        rows += [(rows[0][0], -1)] * (padded - used)  # padding rows: copies, zero budget
        examples = [p.example for p, _ in rows]
        length = bucket(
            max(len(ex["input_ids"]) for ex in examples), MIN_PROMPT_BUCKET, self.limits.max_prompt_tokens
        )
        patches = max((len(ex["pixel_values"]) for ex in examples if "pixel_values" in ex), default=0)
        patch_budget = bucket(patches, MIN_PATCH_BUCKET) if patches else None
        inputs = encode_examples(
            self.model, self.tokenizer, examples, max_prompt_len=length, max_patches=patch_budget
        )
        params = RowParams(
            temperature=np.array([p.temperature for p, _ in rows], np.float32),
            top_p=np.array([p.top_p for p, _ in rows], np.float32),
            seed=np.array([p.seed for p, _ in rows], np.uint32),
            stream=np.array([max(c, 0) for _, c in rows], np.uint32),
            max_new_tokens=np.array([p.max_new_tokens if c >= 0 else 0 for p, c in rows], np.int32),
        )
        budget = bucket(int(params.max_new_tokens.max()), MIN_TOKEN_BUCKET, self.limits.max_new_tokens)
        cfg = SamplingConfig(max_new_tokens=budget, eos_ids=(self.eos_id,), pad_id=self.pad_id)
        started = time.perf_counter()
        out = generate_rows(self.model, inputs, params, cfg)
        shape = (padded, length, patch_budget or 0, budget, *params.static_mode)
        waits = [started - job.enqueued for job in jobs]
        self.metrics.batch(used, len(jobs), shape, waits, time.perf_counter() - started)
        results, r = [], 0
        for job in jobs:
            choices = []
            for _ in range(job.payload.n):
                ids = out.tokens[r, : out.lengths[r]].tolist()
                choices.append((ids, bool(ids) and ids[-1] == self.eos_id))
                r += 1
            results.append(choices)
        return results

    # ------------------------------------------------------------------ responses
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def finish(self, prepared: Prepared, sampled: list[tuple[list[int], bool]]) -> list[Choice]:
        """Texts with stop sequences applied (the text ends before the first stop, which is not included)."""
        choices = []
        for ids, eos in sampled:
            text, cut = self._decode(ids), None
            if prepared.stops and any(s in text for s in prepared.stops):
                for k in range(1, len(ids) + 1):  # the fewest tokens whose text holds a stop sequence
                    prefix = self._decode(ids[:k])
                    hits = [i for i in (prefix.find(s) for s in prepared.stops) if i >= 0]
                    if hits:
                        text, cut = prefix[: min(hits)], k
                        break
            if cut is not None:
                choices.append(Choice(text, "stop", ids[:cut]))
            else:
                choices.append(Choice(text, "stop" if eos else "length", ids))
        return choices

    def stream_pieces(self, choice: Choice) -> list[str]:
        """``choice.text`` split at token boundaries (as tokens would have arrived); the pieces join to it.

        A prefix whose bytes end mid-character decodes to U+FFFD: it is held back until the character completes.
        """
        pieces, sent = [], 0
        for k in range(1, len(choice.tokens) + 1):
            prefix = self._decode(choice.tokens[:k])
            if len(prefix) > sent and not prefix.endswith("\ufffd") and choice.text.startswith(prefix):
                pieces.append(prefix[sent:])
                sent = len(prefix)
        if sent < len(choice.text):
            pieces.append(choice.text[sent:])
        return pieces
