"""Qwen2.5-VL text decoder (Qwen2 blocks with M-RoPE) in Flax NNX, with a static-shape KV cache.

The KV cache is a :class:`KVCache` (a NamedTuple pytree, so it crosses jit boundaries and can be donated).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1ov_jax.layers.attention import attention, make_mask, resolve_impl
from r1ov_jax.layers.remat import remat
from r1ov_jax.layers.scan import scan_blocks
from r1ov_jax.layers.basic import Dense, Embed, GatedMLP, RMSNorm, apply_rope
from r1ov_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from r1ov_jax.sharding.rules import constrain


class KVCache(NamedTuple):
    """Static-shape KV cache of the decoder."""

    k: list  # per layer [b, kv_heads, S, head_dim]: head-major like transformers' cache, read in place
    v: list  # per layer, same shape
    segments: jax.Array  # int32 [b, S], 0 = empty or padding
    index: jax.Array  # int32 [], the next slot to write; slot number = causal position for attention


class DecoderOutput(NamedTuple):
    hidden: jax.Array  # final-normed hidden states [b, L, H] (what the logits are computed from)
    cache: KVCache | None  # the updated cache when one was passed
    # the embeddings, then each layer's output (not normed): transformers' hidden_states; () with scan_layers
    layer_outputs: tuple


def mrope_cos_sin(positions: jax.Array, cfg: Qwen25VLConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[b, L, head_dim]`` from M-RoPE positions ``[3, b, L]`` (T, H, W rows).

    Frequency chunk i of ``mrope_section`` takes its angle from row ``i % 3``; then ``cat(f, f)`` (NeoX halves).
    Computed in fp32 and cast to the activation dtype, as transformers does.
    """
    t = cfg.text
    hd = t.head_dim
    inv_freq = 1.0 / (t.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, b, L, hd/2]
    bounds = np.cumsum((0,) + tuple(t.mrope_section))
    f = jnp.concatenate(
        [freqs[i % 3, ..., bounds[i] : bounds[i + 1]] for i in range(len(t.mrope_section))], -1
    )
    emb = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _block_boundary(out, x):
    """A block's output pinned to the activation layout and kept in the residual stream's (compute) dtype: fp32
    LoRA adapters would otherwise promote it, and a scan carry must keep its type."""
    return constrain(out.astype(x.dtype), ("batch", "length", "act_embed"))


class TextAttention(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.nq, self.nkv, self.hd, self.impl = (
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
            cfg.attn_impl,
        )
        kw = dict(dtype=cfg.dtype, rngs=rngs)
        self.q_proj = Dense(t.hidden_size, self.nq * self.hd, axes=("embed", "q_heads"), use_bias=True, **kw)
        self.k_proj = Dense(
            t.hidden_size, self.nkv * self.hd, axes=("embed", "kv_heads"), use_bias=True, **kw
        )
        self.v_proj = Dense(
            t.hidden_size, self.nkv * self.hd, axes=("embed", "kv_heads"), use_bias=True, **kw
        )
        self.o_proj = Dense(self.nq * self.hd, t.hidden_size, axes=("q_heads", "embed"), use_bias=False, **kw)

    def __call__(self, x, cos, sin, segments, layer_cache=None, mask=None):
        """x ``[b, L, H]``; segments ``[b, L]``; layer_cache = (k, v, kv_segments, index) of this layer or None;
        mask: the step's visibility mask when precomputed (XLA path), shared by all layers."""
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.nq, self.hd)
        k = self.k_proj(x).reshape(b, length, self.nkv, self.hd)
        v = self.v_proj(x).reshape(b, length, self.nkv, self.hd)
        q = apply_rope(q, cos[:, :, None], sin[:, :, None])
        k = apply_rope(k, cos[:, :, None], sin[:, :, None])
        if layer_cache is None:
            out = attention(
                q,
                k,
                v,
                q_segment_ids=segments,
                kv_segment_ids=segments,
                causal=True,
                impl=self.impl,
                mask=mask,
            )
            new_cache = None
        else:
            # One buffer per layer, updated in place: a donated cache is never copied inside the decode loop
            # (a stacked [layers, ...] array would be sliced, i.e. copied, per layer and step on CPU).
            ck, cv, kv_segments, index = layer_cache
            heads = lambda x: x.transpose(0, 2, 1, 3).astype(ck.dtype)  # noqa: E731
            ck = jax.lax.dynamic_update_slice(ck, heads(k), (0, 0, index, 0))
            cv = jax.lax.dynamic_update_slice(cv, heads(v), (0, 0, index, 0))
            q_pos = jnp.broadcast_to(index + jnp.arange(length, dtype=jnp.int32), (b, length))
            out = attention(
                q,
                ck.astype(q.dtype),
                cv.astype(q.dtype),
                q_segment_ids=segments,
                kv_segment_ids=kv_segments,
                causal=True,
                q_positions=q_pos,
                impl=self.impl,
                mask=mask,
                kv_heads_major=True,
            )
            new_cache = (ck, cv)
        return self.o_proj(out.reshape(b, length, self.nq * self.hd)), new_cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.self_attn = TextAttention(cfg, rngs=rngs)
        self.mlp = GatedMLP(t.hidden_size, t.intermediate_size, use_bias=False, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments, layer_cache=None, mask=None):
        h, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, segments, layer_cache, mask)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), new_cache


class TextModel(nnx.Module):
    """Embedding table, decoder layers and final norm (transformers' ``model.language_model``)."""

    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        self.embed_tokens = Embed(t.vocab_size, t.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(t.num_hidden_layers)])
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)

    def __call__(self, inputs_embeds, positions, segments, cache: KVCache | None = None) -> DecoderOutput:
        """Decoder stack.

        Args:
          inputs_embeds: ``[b, L, H]``; positions: M-RoPE ``[3, b, L]``; segments: ``int32 [b, L]`` (0 = pad).
          cache: a :class:`KVCache` written from ``cache.index`` on, or None for a plain causal forward.

        Returns:
          :class:`DecoderOutput` (unused fields cost nothing under jit).
        """
        cos, sin = mrope_cos_sin(positions, self.cfg, inputs_embeds.dtype)
        x = inputs_embeds
        hidden = [x]
        if cache is not None:
            length = x.shape[1]
            kv_segments = jax.lax.dynamic_update_slice(
                cache.segments, segments.astype(jnp.int32), (0, cache.index)
            )
            new_k, new_v = [], []
        mask = None
        if resolve_impl(self.cfg.attn_impl) == "xla":  # one mask for all layers (same ids and positions)
            b = x.shape[0]
            if cache is None:
                mask = make_mask(segments, segments, causal=True)
            else:
                q_pos = jnp.broadcast_to(cache.index + jnp.arange(length, dtype=jnp.int32), (b, length))
                mask = make_mask(segments, kv_segments, causal=True, q_positions=q_pos)
        if cache is None and self.cfg.scan_layers:  # one compiled block body (layer outputs not recorded)

            def block(layer, h, _):
                return _block_boundary(layer(h, cos, sin, segments, None, mask)[0], h)

            x = scan_blocks(list(self.layers), block, x, remat=self.cfg.remat, unroll=self.cfg.scan_unroll[0])
            return DecoderOutput(self.norm(x), None, ())
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i], kv_segments, cache.index)
            # remat only pays off for a backward pass; with a KV cache (prefill/decode, inside the sampler's
            # while_loop, where nnx.remat cannot trace) the block runs as is
            call = remat(type(layer).__call__, self.cfg.remat if cache is None else "none")
            out, lc = call(layer, x, cos, sin, segments, layer_cache, mask)
            x = _block_boundary(out, x)
            hidden.append(x)
            if lc is not None:
                new_k.append(lc[0])
                new_v.append(lc[1])
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(new_k, new_v, kv_segments, cache.index + length)
        return DecoderOutput(x, new_cache, tuple(hidden))


def init_cache(cfg: Qwen25VLConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty static-shape KV cache for ``batch`` sequences of up to ``max_len`` tokens."""
    t = cfg.text
    dtype = cfg.dtype if dtype is None else dtype
    shape = (batch, t.num_key_value_heads, max_len, t.head_dim)
    return KVCache(
        k=[jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)],
        v=[jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)],
        segments=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )
