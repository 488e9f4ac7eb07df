"""Qwen2.5-VL vision tower in Flax NNX (transformers' ``Qwen2_5_VisionTransformerPretrainedModel``).

Patches (N rows of C*T*P*P pixels, merge-block-major as the processor emits them) → linear patch embedding
(the Conv3d with stride = kernel) → window permutation → blocks (window attention, full attention on
``fullatt_block_indexes``) with 2D RoPE → RMSNorm + 2x2 patch merger → inverse permutation.

The index arrays (window permutation, segment ids, rope coordinates) come from
``r1ov_jax.processing.positions.vision_geometry`` and are plain inputs, so the tower jit-compiles once per
patch count. Attention segments are expressed as segment ids (no dense mask, no Python loop over windows).
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from r1ov_jax.layers.attention import attention
from r1ov_jax.layers.remat import remat
from r1ov_jax.layers.scan import scan_blocks
from r1ov_jax.layers.basic import Dense, GatedMLP, RMSNorm, apply_rope
from r1ov_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from r1ov_jax.sharding.rules import constrain

VISION_NORM_EPS = 1e-6  # hard-coded in transformers, not read from the config


def _block_boundary(out, x):
    """A block's output pinned to the activation layout, in the residual stream's dtype (see text.py)."""
    return constrain(out.astype(x.dtype), ("batch", "patches", "act_embed"))


class VisionAttention(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, full: bool, rngs: nnx.Rngs):
        v = cfg.vision
        self.num_heads, self.impl = v.num_heads, cfg.attn_impl
        # Window blocks: every segment is one window, so the kernels' grid spans only the blocks it can reach.
        self.max_seqlen = None if full else v.geometry().window_patches
        # Rows [0:D] are q, [D:2D] k, [2D:3D] v, each head-major (transformers' qkv layout).
        self.qkv = Dense(
            v.hidden_size, 3 * v.hidden_size, axes=("embed", "qkv"), use_bias=True, dtype=cfg.dtype, rngs=rngs
        )
        self.proj = Dense(
            v.hidden_size,
            v.hidden_size,
            axes=("heads_merged", "embed"),
            use_bias=True,
            dtype=cfg.dtype,
            rngs=rngs,
        )

    def __call__(self, x, cos, sin, segments):
        """x ``[B, P, d]`` (one row of patches per batch row), cos/sin ``[B, P, head_dim]``, segments ``[B, P]``."""
        b, n, d = x.shape
        q, k, val = jnp.moveaxis(self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads), 2, 0)
        # Vision RoPE runs in fp32 whatever the compute dtype (as transformers does).
        q = apply_rope(q.astype(jnp.float32), cos[:, :, None], sin[:, :, None]).astype(x.dtype)
        k = apply_rope(k.astype(jnp.float32), cos[:, :, None], sin[:, :, None]).astype(x.dtype)
        out = attention(
            q, k, val, q_segment_ids=segments, kv_segment_ids=segments, causal=False, impl=self.impl,
            max_seqlen=self.max_seqlen,
        )  # fmt: skip
        return self.proj(out.reshape(b, n, d))


class VisionBlock(nnx.Module):
    """One vision block; ``full``: attention over each whole image, else within windows (a static attribute)."""

    def __init__(self, cfg: Qwen25VLConfig, *, full: bool, rngs: nnx.Rngs):
        d = cfg.vision.hidden_size
        self.full = full
        self.norm1 = RMSNorm(d, VISION_NORM_EPS)
        self.norm2 = RMSNorm(d, VISION_NORM_EPS)
        self.attn = VisionAttention(cfg, full=full, rngs=rngs)
        # SwiGLU with biases (Qwen2.5-VL; Qwen2-VL used fc1/fc2 + quick_gelu)
        self.mlp = GatedMLP(d, cfg.vision.intermediate_size, use_bias=True, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        merged = v.hidden_size * v.spatial_merge_size**2
        self.ln_q = RMSNorm(v.hidden_size, VISION_NORM_EPS)
        self.mlp0 = Dense(merged, merged, axes=("merged", "mlp"), use_bias=True, dtype=cfg.dtype, rngs=rngs)
        self.mlp2 = Dense(
            merged, v.out_hidden_size, axes=("mlp", "embed"), use_bias=True, dtype=cfg.dtype, rngs=rngs
        )
        self.merged = merged

    def __call__(self, x):
        # Four consecutive patches are one 2x2 block (the processor's patch order guarantees it).
        x = self.ln_q(x).reshape(x.shape[0], -1, self.merged)
        return self.mlp2(jax.nn.gelu(self.mlp0(x), approximate=False))  # exact erf GELU, as nn.GELU()


def scan_kinds(v) -> tuple[bool, ...]:
    """Per block of one scan step, whether it attends fully: the shortest period of the full-attention pattern
    that divides the depth (Qwen2.5-VL's blocks 7, 15, 23, 31 of 32: seven window blocks then one full one, an
    inner scan of 7 and a block), so window and full blocks keep their own static attention."""
    full = set(v.fullatt_block_indexes)
    period = next(
        p for p in range(1, v.depth + 1)
        if v.depth % p == 0 and all((i in full) == (i % p in full) for i in range(v.depth))
    )  # fmt: skip
    return tuple(j in full for j in range(period))


class VisionTower(nnx.Module):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        # Conv3d(kernel = stride) == a matmul over flattened (C, T, P, P) patches.
        self.patch_embed = Dense(
            v.patch_dim, v.hidden_size, axes=("patch", "embed"), use_bias=False, dtype=cfg.dtype, rngs=rngs
        )
        full = set(v.fullatt_block_indexes)
        self.blocks = nnx.List([VisionBlock(cfg, full=i in full, rngs=rngs) for i in range(v.depth)])
        self.merger = PatchMerger(cfg, rngs=rngs)

    def rope(self, rope_positions):
        """cos/sin ``[..., head_dim]`` from (h, w) coordinates ``[..., 2]``: [f_h, f_w, f_h, f_w] (not the text rule)."""
        half = self.cfg.vision.head_dim // 2
        inv_freq = 1.0 / (self.cfg.vision.rope_theta ** (np.arange(0, half, 2, dtype=np.float32) / half))
        f = rope_positions.astype(jnp.float32)[..., None] * inv_freq  # [..., 2, hd/4]
        emb = jnp.concatenate([f[..., 0, :], f[..., 1, :]], axis=-1)
        emb = jnp.concatenate([emb, emb], axis=-1)
        return jnp.cos(emb), jnp.sin(emb)

    def __call__(self, pixel_values, geometry: dict) -> jax.Array:
        """Image features ``[N / merge**2, out_hidden]`` (see :meth:`with_block_outputs`)."""
        return self.with_block_outputs(pixel_values, geometry)[0]

    def with_block_outputs(self, pixel_values, geometry: dict) -> tuple[jax.Array, list]:
        """Image features and the output of every block.

        Args:
          pixel_values: ``[B, P, C*T*P*P]``, one row of patches per batch row (``positions.vision_inputs``), or the
            image processor's ``[N, C*T*P*P]`` for a single row.
          geometry: the matching ``vision_geometry`` arrays (window_index, reverse_index, rope_positions,
            window_segments, full_segments), with the same leading row axis.

        Returns:
          (``[B, P / merge**2, out_hidden]`` merged features per row, in raster order per image, images in token
          order; the list of block outputs, window-permuted as transformers records them, empty with
          ``scan_layers``). Without a row axis in the inputs, none in the outputs.
        """
        single = pixel_values.ndim == 2
        if single:
            pixel_values, geometry = pixel_values[None], {k: g[None] for k, g in geometry.items()}
        v = self.cfg.vision
        unit = v.spatial_merge_size**2
        x = self.patch_embed(pixel_values.astype(self.cfg.dtype))
        b, n, d = x.shape
        x = jnp.take_along_axis(
            x.reshape(b, n // unit, unit, d), geometry["window_index"][:, :, None, None], axis=1
        )
        x = constrain(x.reshape(b, n, d), ("batch", "patches", "act_embed"))
        cos, sin = self.rope(geometry["rope_positions"])
        hidden = []
        segments = lambda block: geometry["full_segments" if block.full else "window_segments"]
        if self.cfg.scan_layers:  # one loop; a step runs one period of the window / full pattern

            def step(block, h, _):
                return _block_boundary(block(h, cos, sin, segments(block)), h)

            x = scan_blocks(
                list(self.blocks), step, x, remat=self.cfg.remat, unroll=self.cfg.scan_unroll[1],
                kinds=scan_kinds(v), inner_unroll=self.cfg.scan_unroll[2],
            )  # fmt: skip
        else:
            for block in self.blocks:
                x = _block_boundary(
                    remat(type(block).__call__, self.cfg.remat)(block, x, cos, sin, segments(block)), x
                )
                hidden.append(x)
        merged = jnp.take_along_axis(self.merger(x), geometry["reverse_index"][:, :, None], axis=1)
        if single:
            return merged[0], [h[0] for h in hidden]
        return merged, hidden
