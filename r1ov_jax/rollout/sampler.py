"""In-framework KV-cache sampler: batched multimodal prompts × G samples, one jit-compiled program.

prefill (vision tower and decoder once per prompt; the prompt's KV cache is then repeated for the G samples) and
the whole decode loop (``lax.while_loop``: no per-token Python dispatch) run in a single compiled function.
Sampling: greedy, or temperature with optional top-k and top-p (nucleus). Generation stops per sequence at an
EOS id or after ``max_new_tokens``.

Returned log-probs are those of the *policy* (softmax of the raw logits, temperature 1), which is what GRPO's
importance ratio and KL need, whatever temperature was used to draw the token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import KVCache, Qwen25VL, decode_positions, next_positions
from r1ov_jax.sharding.rules import constrain


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 → greedy
    top_k: int = 0  # 0 → off
    top_p: float = 1.0  # 1 → off
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0


@dataclasses.dataclass
class Samples:
    """Rows of one prompt are contiguous (row i*G + j = sample j of prompt i). NumPy in a single-process run; in
    a multi-process job the arrays are global ``jax.Array``s sharded over the batch rows (read this process's
    rows with ``sharding.host_local_rows``)."""

    tokens: np.ndarray | jax.Array  # int32 [B*G, max_new_tokens], pad_id after EOS
    logprobs: np.ndarray | jax.Array  # float32 [B*G, max_new_tokens], 0 after EOS
    lengths: np.ndarray | jax.Array  # int32 [B*G], generated tokens including the EOS
    prompt_index: np.ndarray  # int32 [B*G], row → prompt


def filter_logits(logits: jax.Array, *, top_k: int, top_p: float | jax.Array) -> jax.Array:
    """Masks logits ``[b, V]`` outside top-k and outside the smallest nucleus of mass >= top_p with -inf.

    ``top_p`` is one float or per-row values ``[b, 1]`` (rows at 1 keep everything)."""
    neg = jnp.finfo(logits.dtype).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if not isinstance(top_p, (int, float)) or top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token when the mass strictly before it is < top_p (the top token is always kept)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg)
    return logits


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """``argmax`` (first index of the maximum) as two plain reductions.

    XLA:CPU lowers ``jnp.argmax`` to a variadic (value, index) reduce that is not vectorized: ~70 us per decode
    step on ``[8, 4096]`` logits, a few percent of the whole step; max then min-index costs a few us.
    """
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(logits == top, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(idx, vocab - 1)  # all-NaN rows (no match) map to the last id instead of out of range


def choose_tokens(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    if cfg.temperature == 0.0:
        return greedy_tokens(logits)
    scaled = filter_logits(logits / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class RowParams:
    """Per-row sampling for batches whose rows come from different requests (``r1ov serve``).

    A row's draws depend only on its own (seed, stream) and the step, never on the batch it shares: the same
    request gives the same tokens whatever else is decoded beside it.
    """

    temperature: np.ndarray  # float32 [rows], 0 → greedy
    top_p: np.ndarray  # float32 [rows], 1 → off
    seed: np.ndarray  # uint32 [rows]
    stream: np.ndarray  # uint32 [rows], folded into the seed's key (the choice index of an n > 1 request)
    max_new_tokens: np.ndarray  # int32 [rows], at most the config's; 0 = a padding row (never decoded)

    @property
    def static_mode(self) -> tuple[bool, bool]:
        """(any row samples, any sampling row uses top-p): the paths the compiled loop needs."""
        sampling = self.temperature > 0
        return bool(sampling.any()), bool((sampling & (self.top_p < 1.0)).any())


def _choose_row_tokens(logits, keys, step, temperature, top_p, *, sample: bool, nucleus: bool) -> jax.Array:
    greedy = greedy_tokens(logits)
    if not sample:
        return greedy
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    if nucleus:
        scaled = filter_logits(scaled, top_k=0, top_p=top_p[:, None])
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
    drawn = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)


class _LoopState(NamedTuple):
    step: jax.Array  # int32 [], tokens generated so far
    logits: jax.Array  # float32 [rows, vocab], the next token's logits
    cache: KVCache
    key: jax.Array
    done: jax.Array  # bool [rows], EOS drawn or the row's token budget used
    lengths: jax.Array  # int32 [rows], tokens generated (including the EOS)
    tokens: jax.Array  # int32 [rows, max_new_tokens]
    logprobs: jax.Array  # float32 [rows, max_new_tokens]


def _generate(
    model: Qwen25VL,
    inputs: dict,
    key: jax.Array,
    *,
    cfg: SamplingConfig,
    num_samples: int,
    rows: dict | None = None,
    mode: tuple[bool, bool] = (False, False),
):
    """The compiled sampler. ``rows`` (``RowParams`` fields as arrays) switches from one ``cfg`` for all rows
    to per-row temperature / top-p / keys / budgets; ``mode`` is ``RowParams.static_mode``."""
    ids, segments, positions = inputs["input_ids"], inputs["segment_ids"], inputs["positions"]
    b, length = ids.shape
    n_rows = b * num_samples
    rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731
    # Prefill once per prompt, then give each of the G samples its own copy of the prompt's KV cache.
    logits, cache = model.prefill(
        ids, segments, positions, model.init_cache(b, length + cfg.max_new_tokens),
        inputs.get("pixel_values"), inputs.get("vision"),
    )  # fmt: skip
    cache = cache._replace(
        k=[rep(k) for k in cache.k], v=[rep(v) for v in cache.v], segments=rep(cache.segments)
    )
    start = rep(next_positions(positions, segments))
    eos = jnp.asarray(cfg.eos_ids if cfg.eos_ids else (-1,), jnp.int32)
    if rows is None:
        limit = jnp.full((n_rows,), cfg.max_new_tokens, jnp.int32)
    else:
        limit = jnp.minimum(rows["max_new_tokens"], cfg.max_new_tokens)
        row_keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(
            rows["seed"], rows["stream"]
        )

    def choose(logits, step, key):
        if rows is None:
            return choose_tokens(logits, key, cfg)
        sample, nucleus = mode
        return _choose_row_tokens(
            logits, row_keys, step, rows["temperature"], rows["top_p"], sample=sample, nucleus=nucleus
        )

    def cond(s: _LoopState):
        return (s.step < cfg.max_new_tokens) & ~jnp.all(s.done)

    def body(s: _LoopState) -> _LoopState:
        key, sub = jax.random.split(s.key)
        tok = choose(s.logits, s.step, sub)
        # log softmax at the chosen token only (no [rows, vocab] log-prob array per step)
        lp = jnp.take_along_axis(s.logits, tok[:, None], -1)[:, 0] - jax.nn.logsumexp(s.logits, axis=-1)
        tok = jnp.where(s.done, cfg.pad_id, tok)
        tokens = s.tokens.at[:, s.step].set(tok)
        logprobs = s.logprobs.at[:, s.step].set(jnp.where(s.done, 0.0, lp))
        lengths = s.lengths + (~s.done).astype(jnp.int32)
        done = s.done | jnp.isin(tok, eos) | (s.step + 1 >= limit)
        out, cache = model.decode(tok[:, None], decode_positions(start + s.step), s.cache)
        return _LoopState(s.step + 1, out[:, 0], cache, key, done, lengths, tokens, logprobs)

    init = _LoopState(
        step=jnp.zeros((), jnp.int32),
        logits=rep(logits),
        cache=cache,
        key=key,
        done=limit <= 0,
        lengths=jnp.zeros((n_rows,), jnp.int32),
        tokens=jnp.full((n_rows, cfg.max_new_tokens), cfg.pad_id, jnp.int32),
        logprobs=jnp.zeros((n_rows, cfg.max_new_tokens), jnp.float32),
    )
    final = jax.lax.while_loop(cond, body, init)
    # Samples stay on the devices of their prompt's rows (each process then decodes and scores its own prompts).
    return (
        constrain(final.tokens, ("batch", None)),
        constrain(final.logprobs, ("batch", None)),
        constrain(final.lengths, ("batch",)),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "num_samples", "mode"))
def _generate_jit(graphdef, state, inputs, key, rows=None, *, cfg, num_samples, mode=(False, False)):
    # jax.jit over (graphdef, state): ~3 ms less host time per call than nnx.jit's graph bookkeeping.
    model = nnx.merge(graphdef, state)
    return _generate(model, inputs, key, cfg=cfg, num_samples=num_samples, rows=rows, mode=mode)


def _run(model, inputs, key, cfg, num_samples, rows=None, mode=(False, False)) -> Samples:
    graphdef, state = nnx.split(model)
    out = _generate_jit(graphdef, state, inputs, key, rows, cfg=cfg, num_samples=num_samples, mode=mode)
    if all(x.is_fully_addressable for x in out):
        out = [np.asarray(x) for x in out]
    b = inputs["input_ids"].shape[0]
    return Samples(*out, np.repeat(np.arange(b, dtype=np.int32), num_samples))


def generate(
    model: Qwen25VL, inputs: dict, key: jax.Array | int, cfg: SamplingConfig, num_samples: int = 1
) -> Samples:
    """Samples ``num_samples`` completions per prompt.

    Args:
      model: the policy (used in place: no weight copy).
      inputs: ``model.prepare_inputs(...)`` of a left-padded prompt batch (the prompt must end where
        generation starts, e.g. after ``<|im_start|>assistant\\n``).
      key: PRNG key or int seed.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    return _run(model, inputs, key, cfg, num_samples)


def generate_rows(model: Qwen25VL, inputs: dict, params: RowParams, cfg: SamplingConfig) -> Samples:
    """One completion per prompt row with that row's own sampling (``RowParams``); ``cfg`` gives the static
    token budget (the compiled shape), EOS and pad ids; its temperature / top-k / top-p are not used.

    Rows with ``max_new_tokens == 0`` are padding: they cost their share of the fixed batch shape, nothing
    more, and come back with length 0.
    """
    rows = {
        "temperature": np.asarray(params.temperature, np.float32),
        "top_p": np.asarray(params.top_p, np.float32),
        "seed": np.asarray(params.seed, np.uint32),
        "stream": np.asarray(params.stream, np.uint32),
        "max_new_tokens": np.asarray(params.max_new_tokens, np.int32),
    }
    b = inputs["input_ids"].shape[0]
    bad = [k for k, v in rows.items() if v.shape != (b,)]
    if bad:
        raise ValueError(f"RowParams fields {bad} must have shape ({b},), one value per prompt row")
    return _run(model, inputs, jax.random.key(0), cfg, 1, rows, params.static_mode)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads prompts to one length: (ids ``[b, L]``, attention_mask ``[b, L]``)."""
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, length - len(s) :], mask[i, length - len(s) :] = s, 1
    return ids, mask
