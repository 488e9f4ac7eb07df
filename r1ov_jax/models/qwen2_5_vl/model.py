"""Qwen2.5-VL for conditional generation: vision tower → image features scattered at ``<|image_pad|>`` →
text decoder → logits. Entry points:

* ``model(input_ids, attention_mask=..., pixel_values=..., image_grid_thw=...)`` takes exactly what the HF
  processor returns (NumPy or JAX), computes the host-side geometry and returns logits ``[b, L, vocab]``.
* ``model.prepare_inputs(...)`` (host, NumPy) + ``model.forward(**inputs)`` (jit-able) split the same work
  so training and sampling compile once per shape; ``model.decoder_outputs(**inputs)`` gives the hidden states.
* ``model.prefill(...)`` / ``model.decode(...)`` run against a static KV cache for the sampler.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1ov_jax.layers.basic import Dense
from r1ov_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from r1ov_jax.models.qwen2_5_vl.text import DecoderOutput, KVCache, TextModel, init_cache
from r1ov_jax.models.qwen2_5_vl.vision import VisionTower
from r1ov_jax.processing.positions import get_rope_index, split_images_by_row, vision_inputs
from r1ov_jax.sharding.rules import constrain


class Qwen25VL(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.visual = VisionTower(cfg, rngs=rngs)
        self.language_model = TextModel(cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Dense(
                cfg.text.hidden_size,
                cfg.text.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=cfg.dtype,
                rngs=rngs,
            )

    def set_runtime(self, **options) -> "Qwen25VL":
        """Changes runtime options of the config (``remat``, ``scan_layers``, ``attn_impl`` is fixed per layer)
        on the model and both towers, in place; the weights are untouched."""
        cfg = self.cfg.replace(**options)
        self.cfg = self.language_model.cfg = self.visual.cfg = cfg
        return self

    # ------------------------------------------------------------------ host-side preparation
    def prepare_inputs(
        self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, position_ids=None
    ) -> dict:
        """NumPy arrays for :meth:`forward` from processor outputs (value-dependent work happens here)."""
        cfg = self.cfg
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        mask = np.ones_like(ids, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
        mask = mask.reshape(ids.shape)
        if (ids == cfg.video_token_id).any():
            raise ValueError(
                f"input_ids contain <|video_pad|> (id {cfg.video_token_id}): videos are not supported"
            )
        n_pads = int((ids == cfg.image_token_id).sum())
        n_feats = 0
        if image_grid_thw is not None:
            grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
            n_feats = int(grid.prod(-1).sum()) // cfg.vision.spatial_merge_size**2
        if n_pads != n_feats:
            raise ValueError(
                f"input_ids hold {n_pads} <|image_pad|> tokens (id {cfg.image_token_id}) but the "
                f"images give {n_feats} features (image_grid_thw.prod() / merge**2)"
            )
        if (pixel_values is None) != (image_grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        if position_ids is None:
            position_ids, _ = get_rope_index(
                ids,
                image_grid_thw,
                mask,
                image_token_id=cfg.image_token_id,
                merge_size=cfg.vision.spatial_merge_size,
            )
        inputs = {
            "input_ids": ids.astype(np.int32),
            "segment_ids": mask,
            "positions": np.asarray(position_ids, np.int32),
        }
        if pixel_values is not None:
            pv = np.asarray(pixel_values, np.float32)
            if pv.shape != (int(grid.prod(-1).sum()), cfg.vision.patch_dim):
                raise ValueError(
                    f"pixel_values has shape {pv.shape}, expected "
                    f"({int(grid.prod(-1).sum())}, {cfg.vision.patch_dim}) for image_grid_thw"
                )
            rows = split_images_by_row(ids, grid, pv, image_token_id=cfg.image_token_id)
            inputs["pixel_values"], inputs["vision"] = vision_inputs(
                rows, patches_per_row=None, geometry=cfg.vision.geometry()
            )
        return inputs

    # ------------------------------------------------------------------ jit-able core
    def embed(self, input_ids, pixel_values=None, vision=None):
        """Token embeddings with image features scattered at ``<|image_pad|>`` positions.

        ``pixel_values [B, P, patch_dim]`` holds each row's own images (``positions.vision_inputs``): row b's k-th
        merged feature fills row b's k-th ``<|image_pad|>``. Nothing crosses rows, so with the batch sharded over
        the data axes every device runs the vision tower on its own rows only.
        """
        x = self.language_model.embed_tokens(input_ids)
        if pixel_values is None:
            return x
        feats = self.visual(pixel_values, vision).astype(x.dtype)  # [B, P / merge**2, H]
        is_img = input_ids == self.cfg.image_token_id
        idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, feats.shape[1] - 1)
        scattered = jnp.take_along_axis(feats, idx[..., None], axis=1)
        return jnp.where(is_img[..., None], scattered, x)

    def decoder(self, inputs_embeds, positions, segment_ids, cache: KVCache | None = None) -> DecoderOutput:
        """The text decoder over embeddings (e.g. :meth:`embed` of a prompt joined with completion tokens)."""
        return self.language_model(inputs_embeds, positions, segment_ids, cache)

    def output_projection(self) -> tuple[jax.Array, bool]:
        """(weight, vocab_major) of the LM head: the tied embedding ``[vocab, H]`` (vocab_major) or the untied
        ``lm_head`` kernel ``[H, vocab]``; for losses that never materialize full logits."""
        if self.cfg.tie_word_embeddings:
            return self.language_model.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, hidden):
        if self.cfg.tie_word_embeddings:
            out = self.language_model.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return constrain(out, ("batch", "length", "act_vocab") if out.ndim == 3 else ("batch", "act_vocab"))

    def decoder_outputs(
        self, input_ids, segment_ids, positions, pixel_values=None, vision=None
    ) -> DecoderOutput:
        """Final hidden states and every layer's output from prepared inputs (see :meth:`prepare_inputs`)."""
        return self.decoder(self.embed(input_ids, pixel_values, vision), positions, segment_ids)

    def forward(self, input_ids, segment_ids, positions, pixel_values=None, vision=None) -> jax.Array:
        """Logits ``[b, L, vocab]`` (float32) from prepared inputs (see :meth:`prepare_inputs`)."""
        hidden = self.decoder_outputs(input_ids, segment_ids, positions, pixel_values, vision).hidden
        return self.logits(hidden).astype(jnp.float32)

    def __call__(
        self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, position_ids=None
    ) -> jax.Array:
        """Logits from processor outputs; compiled once per input shape (host-side geometry, then a cached jit)."""
        inputs = self.prepare_inputs(input_ids, attention_mask, pixel_values, image_grid_thw, position_ids)
        graphdef, state = nnx.split(self)
        return _forward_jit(graphdef, state, inputs)

    # ------------------------------------------------------------------ KV-cache generation
    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return init_cache(self.cfg, batch, max_len, dtype)

    def prefill(self, input_ids, segment_ids, positions, cache: KVCache, pixel_values=None, vision=None):
        """Runs the prompt through the decoder writing the cache from slot ``cache.index`` on.

        Returns (logits of the last position ``[b, vocab]``, new cache).
        """
        out = self.decoder(self.embed(input_ids, pixel_values, vision), positions, segment_ids, cache)
        return self.logits(out.hidden[:, -1]).astype(jnp.float32), out.cache

    def decode(self, tokens, positions, cache: KVCache):
        """One step: tokens ``[b, t]`` at M-RoPE ``positions [3, b, t]`` → logits ``[b, t, vocab]``, cache."""
        segments = jnp.ones(tokens.shape, jnp.int32)
        out = self.decoder(self.embed(tokens), positions, segments, cache)
        return self.logits(out.hidden).astype(jnp.float32), out.cache


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(graphdef, state, inputs):
    # jax.jit over (graphdef, state) caches one executable per input shape for the documented model(...) call
    return nnx.merge(graphdef, state).forward(**inputs)


def next_positions(positions, segment_ids):
    """First M-RoPE position ``[b]`` after a prompt: ``max(valid positions) + 1`` (transformers' rope delta rule).

    Every generated token then uses the same value on all three rows, counting up by one per token, which
    equals transformers' ``cumsum(attention_mask) - 1 + rope_deltas`` for left-padded batches too.
    """
    valid = (segment_ids != 0)[None]
    return (jnp.max(jnp.where(valid, positions, -1), axis=(0, 2)) + 1).astype(jnp.int32)


def decode_positions(next_pos, num_tokens: int = 1):
    """M-RoPE positions ``[3, b, t]`` for ``num_tokens`` new tokens starting at ``next_pos [b]``."""
    pos = next_pos[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(pos[None], (3,) + pos.shape).astype(jnp.int32)
