"""Shared builders and comparison helpers for the kernel tests (interpret mode on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# fp32: kernels and references both accumulate in fp32 with full-precision matmuls.
FP32_TOL = 1e-5
# bf16: the kernel rounds unnormalised probabilities to bf16 before P @ V, the reference normalised ones, and
# gradients go through bf16 dS; both stay within ~3 bf16 ulps of values that are O(1).
BF16_TOL = 2e-2


def normal(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)


def qkv(rng, b, tq, tk, hq, hkv, d, dtype=jnp.float32):
    return (
        normal(rng, (b, tq, hq, d), dtype),
        normal(rng, (b, tk, hkv, d), dtype),
        normal(rng, (b, tk, hkv, d), dtype),
    )


def segments(rng, b, t, kind):
    """int32 [b, t] segment ids of a given layout (None for "none")."""
    if kind == "none":
        return None
    rows = []
    for i in range(b):
        if kind == "left_pad":
            n_pad = int(rng.integers(0, t // 2 + 1))
            row = [0] * n_pad + [1] * (t - n_pad)
        elif kind == "packed":  # several segments, then trailing padding
            row, sid = [], 1
            while len(row) < t - 3:
                row += [sid] * int(rng.integers(1, max(2, t // 3)))
                sid += 1
            row = (row[: t - 3] + [0] * 3)[:t]
        else:
            raise ValueError(kind)
        rows.append(row)
    if kind == "packed" and b > 1:
        rows[-1] = [0] * t  # one fully padded sequence: zero output, zero gradient
    return jnp.asarray(np.array(rows), jnp.int32)


def value_and_grads(fn, q, k, v, cot):
    """Output and (dq, dk, dv) of ``sum(fn(q, k, v) * cot)``, in one jit."""

    def loss(q, k, v):
        o = fn(q, k, v)
        return jnp.sum(o.astype(jnp.float32) * cot), o

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def assert_close(actual, expected, tol, what=""):
    np.testing.assert_allclose(
        np.asarray(actual, np.float32), np.asarray(expected, np.float32), atol=tol, rtol=tol, err_msg=what
    )


def check_against_reference(kernel, reference, q, k, v, tol, rng):
    """Kernel and reference agree on outputs and on all three gradients."""
    cot = normal(rng, q.shape)
    out, grads = value_and_grads(kernel, q, k, v, cot)
    ref_out, ref_grads = value_and_grads(reference, q, k, v, cot)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, ref_out, tol, "output")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == rg.dtype and g.shape == rg.shape
        assert_close(g, rg, tol, name)
    return out, grads
