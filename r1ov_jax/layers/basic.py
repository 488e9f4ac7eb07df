"""Small NNX building blocks whose parameters carry logical axis names.

Each parameter is an ``nnx.Param`` with metadata ``logical_axes`` (e.g. ``("embed", "mlp")``);
``r1ov_jax.sharding`` maps those names to mesh axes through one rules table. Compute happens in ``dtype``
(params are cast at use), so fp32 params with a bf16 compute path need no second copy of the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes


def param(rngs: nnx.Rngs | None, init, shape, axes: tuple[str | None, ...], dtype=jnp.float32) -> nnx.Param:
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    value = init(rngs.params(), shape, dtype) if rngs is not None else jnp.zeros(shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """``y = x @ kernel (+ bias)``; kernel ``[in, out]`` (torch Linear weights are transposed on import)."""

    def __init__(
        self,
        din: int,
        dout: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = param(rngs, nnx.initializers.normal(0.02), (din, dout), axes, param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dout,), axes[1:], param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # flax's promote_dtype (looked up at call time) is what qwix intercepts to leave a QLoRA kernel quantized
        x, kernel = dtypes.promote_dtype((x, self.kernel[...]), dtype=self.dtype)
        y = jnp.dot(x, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class GatedMLP(nnx.Module):
    """SwiGLU ``down(silu(gate(x)) * up(x))``: the MLP of both Qwen2.5-VL towers (the vision one has biases)."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool, dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.gate_proj = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(hidden, dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Embed(nnx.Module):
    def __init__(
        self, num: int, features: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.embedding = param(
            rngs, nnx.initializers.normal(0.02), (num, features), ("vocab", "embed"), param_dtype
        )
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection ``x @ embedding.T``."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


class RMSNorm(nnx.Module):
    """transformers' Qwen2 RMSNorm: normalize in fp32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """NeoX-style half rotation (not interleaved pairs), as transformers' ``rotate_half``."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    return x * cos + rotate_half(x) * sin
