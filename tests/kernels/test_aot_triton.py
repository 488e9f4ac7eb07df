"""The Triton (GPU) kernels lowered for CUDA on this CPU host, no GPU needed.

``jax.export`` for ``platforms=["cuda"]`` runs the Pallas -> Triton lowering of every kernel (block shapes,
power-of-two tiles, unsupported ops, dynamic loop bounds) and embeds the Triton IR in a
``__gpu$xla.gpu.triton`` custom call. Triton's own compilation to PTX needs a GPU and is ``test_compiled.py``'s
job; numerics are the interpret-mode tests'. The kernels are forced to their compiled Triton flavour with
``backend="gpu", interpret=False`` (the default device here is a CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export
from r1ov_kernels.decode_attention import decode_attention
from r1ov_kernels.flash_attention import flash_attention

S = jax.ShapeDtypeStruct
TRITON = "__gpu$xla.gpu.triton"  # Pallas GPU's custom call; no export compatibility guarantee, hence allowed
GPU = {"backend": "gpu", "interpret": False}


def lower_cuda(fn, *specs) -> str:
    """StableHLO text of ``fn`` exported for CUDA."""
    exported = export.export(
        jax.jit(fn), platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)]
    )(*specs)
    return exported.mlir_module()


def assert_triton(module: str, n: int):
    found = module.count(f"stablehlo.custom_call @{TRITON}")
    assert found == n, f"expected {n} Triton kernels, found {found}"


def grad_of(fn, value=False):
    loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32))  # noqa: E731
    return (jax.value_and_grad if value else jax.grad)(loss, argnums=(0, 1, 2))


# d, causal, dtype: packed segment ids and GQA 2 throughout; d=80 is padded to 128 inside the wrapper.
FLASH = [
    (64, True, jnp.bfloat16),
    (80, True, jnp.bfloat16),
    (128, True, jnp.bfloat16),
    (80, False, jnp.float32),
]


@pytest.mark.parametrize("case", FLASH, ids=lambda c: f"d{c[0]}-causal{c[1]}-{c[2].__name__}")
def test_flash_forward_and_backward_lower(case):
    d, causal, dtype = case
    b, t, hq, hkv = 2, 200, 4, 2  # 200: ragged against the 64 tile, several blocks per sequence
    specs = (
        S((b, t, hq, d), dtype),
        S((b, t, hkv, d), dtype),
        S((b, t, hkv, d), dtype),
        S((b, t), jnp.int32),
    )

    def fn(q, k, v, seg):
        return flash_attention(q, k, v, seg, seg, causal=causal, **GPU)

    assert_triton(lower_cuda(fn, *specs), 1)
    assert_triton(lower_cuda(grad_of(fn), *specs), 3)  # fwd, dq, dk/dv


# layout, tq, d, S: head-major (the model's cache), token-major in place, token-major copied (d=80 -> 128)
DECODE = [
    ("heads_major", 1, 128, 1024),
    ("heads_major", 4, 80, 1000),
    ("token_major", 1, 128, 1024),
    ("token_major", 1, 80, 1000),
]


@pytest.mark.parametrize("case", DECODE, ids=lambda c: f"{c[0]}-tq{c[1]}-d{c[2]}-S{c[3]}")
def test_decode_lowers(case):
    layout, tq, d, s_len = case
    b, hq, hkv = 2, 8, 2
    heads_major = layout == "heads_major"
    kv = (b, hkv, s_len, d) if heads_major else (b, s_len, hkv, d)

    def fn(q, k, v, lengths):
        q_pos = lengths[:, None] - tq + jnp.arange(tq, dtype=jnp.int32)[None]
        return decode_attention(
            q, k, v, q_positions=q_pos, lengths=lengths, causal=True, kv_heads_major=heads_major, **GPU
        )

    specs = (S((b, tq, hq, d), jnp.bfloat16), S(kv, jnp.bfloat16), S(kv, jnp.bfloat16), S((b,), jnp.int32))
    assert_triton(lower_cuda(fn, *specs), 1)
    # The decode backward is plain XLA: the loss keeps the forward kernel, the gradients add none.
    assert_triton(lower_cuda(grad_of(fn, value=True), *specs), 1)
