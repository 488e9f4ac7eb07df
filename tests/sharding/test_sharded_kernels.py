"""Pallas attention on a multi-device mesh runs under ``shard_map`` (XLA cannot partition a kernel call) and
gives the unsharded XLA numbers: forward with images + left padding, SFT gradients, and KV-cache decode.

The kernels run in interpret mode on the 8 fake CPU devices; the TPU compile of the same sharded program is
in ``tests/kernels/test_aot_tpu.py``.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.sharding import activation_sharding, create_sharded, make_mesh, rules_for, shard_batch
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _model(impl):
    return Qwen25VL(tiny().replace(attn_impl=impl), rngs=nnx.Rngs(0))


def _inputs():
    pv, thw = hf_pixels([random_image(56, 56, seed=i) for i in range(4)])
    rows = [build_ids([1 + i, "img", 5, 6, 7], thw[i : i + 1]) for i in range(4)]
    rows += [[0, 0, 0] + [9 + i] * (len(rows[0]) - 3) for i in range(4)]  # text-only, left padded
    mask = np.array([[1] * len(r) if r[0] else [0, 0, 0] + [1] * (len(r) - 3) for r in rows])
    return np.array(rows), mask, pv, thw


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_pallas_forward_equals_unsharded_xla(shape):
    ids, mask, pv, thw = _inputs()
    ref = _model("xla")
    base = np.asarray(ref(ids, mask, pv, thw))
    mesh = make_mesh(*shape)
    model = create_sharded(lambda: _model("pallas"), mesh)
    inputs = shard_batch(model.prepare_inputs(ids, mask, pv, thw), mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        fwd = jax.jit(lambda g, s, x: nnx.merge(g, s).forward(**x), static_argnums=0)
        lowered = fwd.lower(*nnx.split(model), inputs)
        out = lowered.compile()(*nnx.split(model)[1:], inputs)
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    valid = mask.astype(bool)
    assert np.abs(np.asarray(out) - base)[valid].max() <= 2e-5


def test_sharded_pallas_gradients_equal_unsharded_xla():
    from r1ov_jax.train.sft import sft_loss

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200, size=(8, 16)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[4:, 10:] = 2  # packed rows: two segments
    batch = {
        "input_ids": ids,
        "segment_ids": seg,
        "loss_mask": np.ones_like(ids, bool),
        "positions": np.broadcast_to(np.arange(16, dtype=np.int32), (3, 8, 16)).copy(),
    }
    batch["positions"][:, 4:, 10:] -= 10

    def grads(model):
        return nnx.jit(lambda m, b: nnx.grad(lambda m: sft_loss(m, b)[0])(m))(model, batch)

    base = [np.asarray(x) for x in jax.tree.leaves(grads(_model("xla")))]
    mesh = make_mesh(2, 2, 2)
    model = create_sharded(lambda: _model("pallas"), mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        g = nnx.jit(lambda m, b: nnx.grad(lambda m: sft_loss(m, b)[0])(m))(model, shard_batch(batch, mesh))
    for x, y in zip(base, jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(y), x, atol=2e-5, rtol=1e-4)


def test_sharded_pallas_sampler_equals_unsharded_xla():
    from r1ov_jax.rollout.sampler import SamplingConfig, generate

    ids, mask, pv, thw = _inputs()
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0)
    ref = _model("xla")
    base = generate(ref, ref.prepare_inputs(ids, mask, pv, thw), 0, cfg)
    mesh = make_mesh(2, 2, 2)
    model = create_sharded(lambda: _model("pallas"), mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        out = generate(model, shard_batch(model.prepare_inputs(ids, mask, pv, thw), mesh), 0, cfg)
    np.testing.assert_array_equal(np.asarray(out.tokens), base.tokens)
    np.testing.assert_allclose(np.asarray(out.logprobs), base.logprobs, atol=1e-4)
