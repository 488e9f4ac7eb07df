"""Chunked LM-head log-probs (train/losses.py): values vs a float64 NumPy log-softmax, gradients vs autodiff of
the full-logits path, masking, bf16, sharding on a (2, 2, 2) CPU mesh, and the compiled memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1ov_jax.layers.basic import Embed
from r1ov_jax.sharding.rules import DEFAULT_RULES, activation_sharding
from r1ov_jax.train.losses import reference_token_logprobs, token_logprobs

B, T, H, V = 3, 37, 16, 101
TOL = 1e-5


def inputs(seed=0, b=B, t=T, h=H, v=V, vocab_major=True):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, h)).astype(np.float32)
    w = (rng.normal(size=(v, h)) * 0.5).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
    return hidden, (w if vocab_major else np.ascontiguousarray(w.T)), targets


def numpy_logprobs(hidden, w, targets, vocab_major):
    z = hidden.astype(np.float64) @ (w.T if vocab_major else w).astype(np.float64)
    m = z.max(-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    return np.take_along_axis(logp, targets[..., None], -1)[..., 0], z.argmax(-1) == targets


def masked_loss(fn, mask):
    def loss(hidden, w, targets):
        logp, _ = fn(hidden, w, targets)
        return -(logp * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    return loss


def chunked(vocab_major, chunk_size, dtype=None):
    return lambda h, w, y: token_logprobs(
        h, w, y, vocab_major=vocab_major, chunk_size=chunk_size, dtype=dtype
    )


def plain(vocab_major, dtype=None):
    return lambda h, w, y: reference_token_logprobs(h, w, y, vocab_major=vocab_major, dtype=dtype)


@pytest.mark.parametrize("vocab_major", [True, False])
@pytest.mark.parametrize("chunk_size", [8, 64])  # 37 = 4*8 + 5 (padded), 64 > T (one chunk)
def test_values_match_float64_log_softmax(vocab_major, chunk_size):
    hidden, w, targets = inputs(vocab_major=vocab_major)
    logp, hit = jax.jit(chunked(vocab_major, chunk_size))(hidden, w, targets)
    want, want_hit = numpy_logprobs(hidden, w, targets, vocab_major)
    assert logp.shape == (B, T) and logp.dtype == jnp.float32 and hit.dtype == jnp.bool_
    np.testing.assert_allclose(logp, want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(hit, want_hit)


def test_is_argmax_true_when_target_is_argmax():
    """Half the targets are the argmax, half are not."""
    hidden, w, _ = inputs()
    z = hidden.astype(np.float64) @ w.T.astype(np.float64)
    targets = z.argmax(-1).astype(np.int32)
    targets[:, ::2] = (targets[:, ::2] + 1) % V
    _, hit = token_logprobs(hidden, w, targets, vocab_major=True, chunk_size=8)
    np.testing.assert_array_equal(hit, z.argmax(-1) == targets)


@pytest.mark.parametrize("vocab_major", [True, False])
@pytest.mark.parametrize("chunk_size", [8, 64])
def test_masked_loss_gradients_match_full_logits(vocab_major, chunk_size):
    """Packed-rows style: token weights applied outside, some tokens masked, row 1 fully masked."""
    hidden, w, targets = inputs(seed=1, vocab_major=vocab_major)
    rng = np.random.default_rng(2)
    mask = (rng.random((B, T)) < 0.6).astype(np.float32)
    mask[1] = 0.0
    mask = jnp.asarray(mask)
    f = jax.jit(jax.value_and_grad(masked_loss(chunked(vocab_major, chunk_size), mask), (0, 1)))
    g = jax.jit(jax.value_and_grad(masked_loss(plain(vocab_major), mask), (0, 1)))
    (lf, (dhf, dwf)), (lg, (dhg, dwg)) = f(hidden, w, targets), g(hidden, w, targets)
    np.testing.assert_allclose(lf, lg, atol=TOL, rtol=0)
    np.testing.assert_allclose(dhf, dhg, atol=TOL, rtol=0)
    np.testing.assert_allclose(dwf, dwg, atol=TOL, rtol=0)
    assert dhf.dtype == hidden.dtype and dwf.dtype == w.dtype and dwf.shape == w.shape
    assert not np.any(np.asarray(dhf)[1])  # the fully masked row gets exactly zero gradient
    assert np.abs(dwf).max() > 1e-3


def test_bf16_compute_path():
    """bf16 matmuls, fp32 accumulation and softmax: logp within 1e-5 of float64 on the bf16-rounded inputs
    (only the inputs are rounded); gradients (logit cotangent rounded to bf16) within 1% of max |grad| of the
    fp32 gradient on the rounded inputs."""
    hidden, w, targets = inputs(seed=3)
    rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in (hidden, w)]
    logp, _ = token_logprobs(hidden, w, targets, vocab_major=True, chunk_size=8, dtype=jnp.bfloat16)
    want, _ = numpy_logprobs(*rounded, targets, True)
    np.testing.assert_allclose(logp, want, atol=TOL, rtol=0)

    mask = jnp.ones((B, T))
    f = jax.grad(masked_loss(chunked(True, 8, jnp.bfloat16), mask), (0, 1))
    g = jax.grad(masked_loss(plain(True), mask), (0, 1))
    for got, ref in zip(f(hidden, w, targets), g(*map(jnp.asarray, rounded), targets)):
        assert got.dtype == jnp.float32  # cotangents come back in the primal (param) dtype
        np.testing.assert_allclose(got, ref, atol=0.01 * float(np.abs(ref).max()), rtol=0)
    # bf16 hidden states (the model's compute dtype) → bf16 hidden gradient, fp32 weight gradient
    dh, dw = jax.grad(masked_loss(chunked(True, 8), mask), (0, 1))(
        jnp.asarray(hidden, jnp.bfloat16), w, targets
    )
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


class Head(nnx.Module):
    def __init__(self):
        self.embed = Embed(V, H, rngs=nnx.Rngs(0))


def test_composes_with_nnx_value_and_grad_and_remat():
    hidden, _, targets = inputs(seed=4)
    mask = jnp.ones((B, T))

    def loss(model, hidden, head):
        w = model.embed.embedding[...]
        return masked_loss(head, mask)(hidden, w, targets)

    @nnx.jit(static_argnames="use_chunked")
    def step(model, hidden, use_chunked):
        head = chunked(True, 8) if use_chunked else plain(True)
        fn = jax.checkpoint(lambda m, h: loss(m, h, head)) if use_chunked else lambda m, h: loss(m, h, head)
        return nnx.value_and_grad(fn, argnums=(0, 1))(model, hidden)

    model = Head()
    (lc, (gm_c, gh_c)), (lp, (gm_p, gh_p)) = step(model, hidden, True), step(model, hidden, False)
    np.testing.assert_allclose(lc, lp, atol=TOL, rtol=0)
    np.testing.assert_allclose(gh_c, gh_p, atol=TOL, rtol=0)
    np.testing.assert_allclose(gm_c.embed.embedding[...], gm_p.embed.embedding[...], atol=TOL, rtol=0)


@pytest.mark.parametrize("vocab_major", [True, False])
@pytest.mark.parametrize("logical_constraints", [False, True])
def test_sharded_equals_unsharded(vocab_major, logical_constraints):
    """Batch over (data, fsdp), the weight's vocab axis over tensor (and its hidden axis over fsdp)."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    b, v = 4, 104
    hidden, w, targets = inputs(seed=5, b=b, v=v, vocab_major=vocab_major)
    mask = jnp.asarray((np.random.default_rng(6).random((b, T)) < 0.7).astype(np.float32))

    def fn(hidden, w, targets, mask):
        logp, hit = token_logprobs(hidden, w, targets, vocab_major=vocab_major, chunk_size=8)
        loss = -(logp * mask).sum() / mask.sum()
        return loss, (logp, hit)

    vg = jax.jit(jax.value_and_grad(fn, (0, 1), has_aux=True))
    (l0, (lp0, hit0)), (dh0, dw0) = vg(hidden, w, targets, mask)

    batch = P(("data", "fsdp"))
    w_spec = P("tensor", "fsdp") if vocab_major else P("fsdp", "tensor")
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    args = (put(hidden, batch), put(w, w_spec), put(targets, batch), put(mask, batch))
    if logical_constraints:
        with activation_sharding(mesh, DEFAULT_RULES):
            (l1, (lp1, hit1)), (dh1, dw1) = vg(*args)
    else:
        (l1, (lp1, hit1)), (dh1, dw1) = vg(*args)
    assert dh1.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(l1, l0, atol=TOL, rtol=0)
    np.testing.assert_allclose(lp1, lp0, atol=TOL, rtol=0)
    np.testing.assert_array_equal(hit1, hit0)
    np.testing.assert_allclose(dh1, dh0, atol=TOL, rtol=0)
    np.testing.assert_allclose(dw1, dw0, atol=TOL, rtol=0)


def temp_bytes(head, b, t, h, v):
    spec = lambda *s, d=jnp.float32: jax.ShapeDtypeStruct(s, d)  # noqa: E731
    vg = jax.jit(jax.value_and_grad(lambda hh, w, y: -head(hh, w, y)[0].mean(), (0, 1)))
    compiled = vg.lower(spec(b, t, h), spec(v, h), spec(b, t, d=jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_temp_memory_far_below_full_logits():
    b, t, h, v = 2, 2048, 256, 32768
    full = temp_bytes(plain(True), b, t, h, v)
    ours = temp_bytes(chunked(True, 256), b, t, h, v)
    logits = b * t * v * 4
    assert full >= logits  # the plain path holds at least the fp32 logits
    assert ours < 0.25 * full, (ours, full)


def test_weight_gradient_reduced_once_under_mesh():
    """Inside activation_sharding no weight-sized collective runs in a loop body: each chunk's weight-gradient
    update stays on its batch shard and is reduced across shards once, after the loop."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    b, v = 4, 104
    hidden, w, targets = inputs(seed=7, b=b, v=v)
    loss = lambda h, w, y: -token_logprobs(h, w, y, vocab_major=True, chunk_size=8)[0].mean()  # noqa: E731
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    args = (
        jax.device_put(hidden, batch),
        jax.device_put(w, NamedSharding(mesh, P("tensor", "fsdp"))),
        jax.device_put(targets, batch),
    )
    with activation_sharding(mesh, DEFAULT_RULES):
        hlo = jax.jit(jax.grad(loss, 1)).lower(*args).compile().as_text()
    comp, in_loop = None, []
    for line in hlo.splitlines():
        if line and not line[0].isspace() and ("{" in line):
            comp = line.split()[0]
        elif any(f" {op}(" in line or f" {op}-start(" in line for op in ("all-reduce", "reduce-scatter")):
            if comp != "ENTRY":
                in_loop.append(line.strip().split(" = ")[1][:60])
    weight_sized = [x for x in in_loop if f"{v // 2},{H}" in x or f"{v},{H}" in x]
    assert in_loop and not weight_sized, in_loop


def test_unrolled_chunks_same_values_and_all_counted():
    """``unroll=True`` (preflight's FLOP count) gives the same loss and gradients, and XLA's cost model then
    counts every chunk (a loop body is counted once)."""
    hidden, w, targets = inputs(seed=3)
    mask = jnp.ones((B, T), jnp.float32)

    def step(unroll):
        fn = lambda h, w, y: token_logprobs(h, w, y, vocab_major=True, chunk_size=8, unroll=unroll)  # noqa: E731
        return jax.jit(jax.value_and_grad(masked_loss(fn, mask), (0, 1)))

    (l0, g0), (l1, g1) = step(False)(hidden, w, targets), step(True)(hidden, w, targets)
    np.testing.assert_allclose(l1, l0, atol=1e-6, rtol=0)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)

    def flops(unroll):
        ca = step(unroll).lower(hidden, w, targets).compile().cost_analysis()
        return (ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"]

    matmuls = 4 * 2 * B * T * H * V  # forward logits; backward: logits again, d hidden, d weight
    assert flops(True) >= 0.9 * matmuls > 2 * flops(False)  # 37 positions = 5 chunks of 8
