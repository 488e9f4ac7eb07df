"""Token log-probabilities from final hidden states without materializing ``[b, T, vocab]`` logits.

At Qwen2.5-VL's vocabulary (151,936) the full fp32 logits of one 8192-token row are 5 GiB, and the plain
``log_softmax``/cross-entropy path keeps several such buffers alive for the backward pass (logits, their
softmax, the logits' cotangent in bf16 and fp32). :func:`token_logprobs` computes, per token,

    logp[b, t] = logits[b, t, target[b, t]] - logsumexp(logits[b, t, :]),   logits = hidden @ W^T (or @ W)

one chunk of ``chunk_size`` sequence positions at a time, so only one ``[b, chunk, vocab]`` block exists at
any moment, forward or backward.

Wiring it in (``model.output_projection()`` returns ``(weight, vocab_major)``: the tied embedding
``[V, H]`` with ``vocab_major=True``, or the untied ``lm_head`` kernel ``[H, V]`` with ``vocab_major=False``;
pass the raw parameter, it is cast to ``dtype`` inside so its gradient comes back in the param dtype)::

    # sft_loss: mean CE over weighted tokens + token accuracy
    hidden = model.decoder_outputs(**{k: batch[k] for k in MODEL_KEYS if k in batch}).hidden[:, :-1]
    targets, weights = token_targets(batch)
    w, vocab_major = model.output_projection()
    logp, hit = token_logprobs(hidden, w, targets, vocab_major=vocab_major, dtype=model.cfg.dtype)
    n = jnp.maximum(weights.sum(), 1.0)
    loss = -(logp * weights).sum() / n
    acc = (hit * weights).sum() / n

    # grpo.completion_logprobs: replace the model.logits / log_softmax / take_along_axis lines by
    w, vocab_major = model.output_projection()
    logp, _ = token_logprobs(h[:, length - 1 : length - 1 + t], w, completions,
                             vocab_major=vocab_major, dtype=model.cfg.dtype)
    return logp

Design: ``jax.custom_vjp`` around two ``lax.scan`` loops over sequence chunks (not a ``jax.checkpoint``-ed
scan under plain autodiff). Both recompute each chunk's logits in the backward pass; the custom rule is
preferred because

* the residuals are exactly ``hidden, weight, targets`` (already alive in the caller) and the per-token
  logsumexp ``[b, T]`` fp32; the backward writes the logits' cotangent in closed form,
  ``g * (onehot(target) - exp(logits - lse))``, as one elementwise pass over the recomputed block, instead of
  differentiating max/exp/sum/log (autodiff of a remat'd body re-runs the reductions and keeps their
  intermediates, e.g. ``exp(logits - max)``, next to the logits);
* the weight gradient is accumulated across chunks in fp32 whatever the compute dtype (the scan carry of
  autodiff'd code would accumulate in the bf16 dtype of the cast weight);
* the accumulation can be laid out for the mesh: under a mesh (``activation_sharding`` installs it) the
  carry is ``[batch_shards, *weight.shape]`` with one slice per batch shard, so each chunk's update stays on
  its device and the weight gradient crosses the ``data``/``fsdp`` axes once, after the loop (as in the plain
  path). Autodiff of a scan (or one ``[V, H]`` carry) all-reduces a full-vocab fp32 block every chunk. The
  price is one fp32 ``[V / tensor, H]`` buffer per device instead of ``[V / tensor, H / fsdp]``;
* ``is_argmax`` (for token accuracy) falls out of the forward's max for free and carries no gradient.

Sharding: only static shapes and ``lax`` ops are used; the target logit is picked with an iota comparison and
a sum over the vocab (not a gather), so a vocab axis sharded over ``"tensor"`` needs only all-reduces of
``[b, chunk]`` values (and of the ``[b, chunk, H]`` hidden gradient, as in the plain path). The chunk axis is
the (unsharded) sequence axis; the batch axis keeps its sharding. The weight is cast to ``dtype`` on its own
shards (constrained to its logical axes) so FSDP all-gathers move bf16. Inside ``activation_sharding`` each
logits block is constrained like ``model.logits`` does (``("batch", "length", "act_vocab")``); outside it the
constraints are no-ops and GSPMD propagates from the inputs' shardings (correct, but then the weight
gradient is reduced once per chunk).

Numerics: the matmuls run in ``dtype`` (default ``hidden.dtype``) with fp32 accumulation
(``preferred_element_type``); lse, logp and the softmax are fp32. The logits' cotangent is cast to ``dtype``
for the two backward matmuls (as autodiff of the bf16 path does). ``targets`` must lie in ``[0, V)``; give
padding/masked positions any valid id (e.g. 0) and weight them out in the caller. Ties: ``is_argmax`` is
true when the target logit equals the maximum (``argmax == target`` would pick the first of tied indices).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from r1ov_jax.sharding.rules import DEFAULT_RULES, constrain

_F32 = jnp.float32


def token_logprobs(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    vocab_major: bool,
    chunk_size: int = 1024,
    dtype=None,
    unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Per-token ``log p(target)`` under the LM head, chunked over the sequence.

    Args:
      hidden: ``[b, T, H]`` final (normed) hidden states.
      weight: output projection, ``[V, H]`` if ``vocab_major`` (tied embeddings) else ``[H, V]`` (lm_head).
      targets: int ``[b, T]`` target token ids in ``[0, V)``.
      chunk_size: sequence positions per block; peak memory is ~``b * chunk_size * V`` fp32 values times a
        small constant. ``T`` need not be a multiple (padded internally); a chunk larger than ``T`` means one
        block.
      dtype: matmul compute dtype (e.g. ``jnp.bfloat16``); default ``hidden.dtype``.
      unroll: unroll the chunk loops (same values; XLA's cost model then counts every chunk, which preflight's
        FLOP count needs: it counts a loop body once).

    Returns:
      ``(logp, is_argmax)``: ``[b, T]`` float32 log-probabilities (differentiable w.r.t. ``hidden`` and
      ``weight``) and ``[b, T]`` bool, whether the target has the largest logit (no gradient).
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {hidden.shape} must be [b, T, H] and targets {targets.shape} [b, T]")
    h_axis = 1 if vocab_major else 0
    if weight.ndim != 2 or weight.shape[h_axis] != hidden.shape[-1]:
        layout = "[V, H]" if vocab_major else "[H, V]"
        raise ValueError(f"weight {weight.shape} must be {layout} for hidden size {hidden.shape[-1]}")
    dtype = jnp.dtype(hidden.dtype if dtype is None else dtype)
    chunk = max(1, min(int(chunk_size), hidden.shape[1]))
    return _token_logprobs(hidden, weight, targets.astype(jnp.int32), vocab_major, chunk, dtype, bool(unroll))


# --------------------------------------------------------------------------- implementation
def _logits(h, w_c, vocab_major, dtype):
    """``[b, c, V]`` fp32 logits of one chunk ``h [b, c, H]`` (``w_c``: the weight already in ``dtype``)."""
    spec = "bch,vh->bcv" if vocab_major else "bch,hv->bcv"
    out = jnp.einsum(spec, h.astype(dtype), w_c, preferred_element_type=_F32)
    return constrain(out, ("batch", "length", "act_vocab"))


def _onehot(targets, vocab):
    """Boolean ``[b, c, V]`` mask of the targets (an iota comparison: fuses, and is sharding-friendly)."""
    return jax.lax.broadcasted_iota(jnp.int32, (*targets.shape, vocab), 2) == targets[..., None]


def _to_chunks(x, chunk):
    """``[b, T, ...]`` → ``[n, b, chunk, ...]`` (zero-padded along T)."""
    b, t = x.shape[:2]
    n = -(-t // chunk)
    x = jnp.pad(x, [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _from_chunks(x, t):
    """Inverse of :func:`_to_chunks`: ``[n, b, chunk, ...]`` → ``[b, t, ...]``."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def _cast_weight(weight, vocab_major, dtype):
    """The weight in the compute dtype, kept in its parameter sharding: the cast happens on the local shard
    and any all-gather the matmul needs moves ``dtype`` (bf16) values, not fp32 ones."""
    return constrain(weight.astype(dtype), _weight_axes(vocab_major))


def _weight_axes(vocab_major):
    return ("vocab", "embed") if vocab_major else ("embed", "vocab")


def _batch_shards(b):
    """How many shards the batch axis has under the current mesh (``jax.set_mesh``, which
    :func:`~r1ov_jax.sharding.rules.activation_sharding` installs): the mesh axes the ``"batch"`` rule maps to.
    1 outside a mesh, or when they do not divide ``b``."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = DEFAULT_RULES["batch"]
    n = math.prod(mesh.shape.get(a, 1) for a in ((axes,) if isinstance(axes, str) else axes))
    return n if b % n == 0 else 1


def _forward(hidden, weight, targets, vocab_major, chunk, dtype, unroll):
    vocab = weight.shape[0 if vocab_major else 1]
    w_c = _cast_weight(weight, vocab_major, dtype)

    def body(_, xs):
        h, y = xs
        z = _logits(h, w_c, vocab_major, dtype)
        m = jnp.max(z, axis=-1)
        lse = m + jnp.log(jnp.sum(jnp.exp(z - m[..., None]), axis=-1))
        zt = jnp.sum(jnp.where(_onehot(y, vocab), z, 0.0), axis=-1)
        return None, (zt - lse, zt >= m, lse)

    _, out = jax.lax.scan(body, None, (_to_chunks(hidden, chunk), _to_chunks(targets, chunk)), unroll=unroll)
    t = hidden.shape[1]
    return tuple(_from_chunks(o, t) for o in out)  # logp, is_argmax, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _token_logprobs(hidden, weight, targets, vocab_major, chunk, dtype, unroll):
    logp, hit, _ = _forward(hidden, weight, targets, vocab_major, chunk, dtype, unroll)
    return logp, hit


def _fwd(hidden, weight, targets, vocab_major, chunk, dtype, unroll):
    logp, hit, lse = _forward(hidden, weight, targets, vocab_major, chunk, dtype, unroll)
    return (logp, hit), (hidden, weight, targets, lse)


def _bwd(vocab_major, chunk, dtype, unroll, res, cts):
    hidden, weight, targets, lse = res
    g = cts[0].astype(_F32)  # cts[1] is the (float0) cotangent of is_argmax
    vocab = weight.shape[0 if vocab_major else 1]
    w_c = _cast_weight(weight, vocab_major, dtype)
    # The weight gradient is a sum over all tokens, i.e. across the batch shards. Accumulating it per batch
    # shard ([n, *weight.shape], one slice per device group) keeps every chunk's update local; the cross-shard
    # reduction then happens once, after the loop, instead of once per chunk.
    b = hidden.shape[0]
    n = _batch_shards(b)
    w_axes = _weight_axes(vocab_major)
    acc_axes = ("batch", *w_axes)

    def body(dw, xs):
        h, y, lse_c, g_c = xs
        z = _logits(h, w_c, vocab_major, dtype)
        # d logp / d z = onehot(target) - softmax(z), scaled by the incoming cotangent
        dz = g_c[..., None] * (_onehot(y, vocab).astype(_F32) - jnp.exp(z - lse_c[..., None]))
        dz = dz.astype(dtype)
        dz_n, h_n = (x.reshape(n, b // n, *x.shape[1:]) for x in (dz, h.astype(dtype)))
        if vocab_major:  # z = h @ W^T, W [V, H]
            dh = jnp.einsum("bcv,vh->bch", dz, w_c, preferred_element_type=_F32)
            dw = dw + jnp.einsum("nbcv,nbch->nvh", dz_n, h_n, preferred_element_type=_F32)
        else:  # z = h @ W, W [H, V]
            dh = jnp.einsum("bcv,hv->bch", dz, w_c, preferred_element_type=_F32)
            dw = dw + jnp.einsum("nbch,nbcv->nhv", h_n, dz_n, preferred_element_type=_F32)
        return constrain(dw, acc_axes), dh.astype(hidden.dtype)

    xs = tuple(_to_chunks(x, chunk) for x in (hidden, targets, lse, g))
    dw0 = constrain(jnp.zeros((n, *weight.shape), _F32), acc_axes)
    dw, dh = jax.lax.scan(body, dw0, xs, unroll=unroll)
    dw = constrain(dw.sum(0), w_axes)
    return _from_chunks(dh, hidden.shape[1]), dw.astype(weight.dtype), None


_token_logprobs.defvjp(_fwd, _bwd)


def reference_token_logprobs(hidden, weight, targets, *, vocab_major: bool, dtype=None):
    """The plain full-logits computation (materializes ``[b, T, V]``): the baseline for tests/benchmarks."""
    dtype = jnp.dtype(hidden.dtype if dtype is None else dtype)
    spec = "bth,vh->btv" if vocab_major else "bth,hv->btv"
    z = jnp.einsum(spec, hidden.astype(dtype), weight.astype(dtype), preferred_element_type=_F32)
    logp = jax.nn.log_softmax(z, axis=-1)
    zt = jnp.take_along_axis(z, targets[..., None], -1)[..., 0]
    return jnp.take_along_axis(logp, targets[..., None], -1)[..., 0], zt >= z.max(-1)
