"""``model.scan_layers``: the blocks of both towers run as one ``lax.scan``; the numbers never change."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models import lora
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.models.qwen2_5_vl.config import VisionConfig
from r1ov_jax.layers.scan import runs_of
from r1ov_jax.models.qwen2_5_vl.vision import scan_kinds
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image
from r1ov_jax.train.sft import sft_loss


def _batch(model):
    pv, thw = hf_pixels([random_image(56, 84, seed=1), random_image(84, 56, seed=2)])
    ids = np.array([build_ids([1, 2, "img", 3, 4, "img", 5], thw)])
    inputs = model.prepare_inputs(ids, None, pv, thw)
    return {**inputs, "loss_mask": np.ones_like(ids, bool)}


def _loss_and_grads(model, wrt=nnx.Param):
    batch = _batch(model)
    grad_fn = nnx.value_and_grad(sft_loss, has_aux=True, argnums=nnx.DiffState(0, wrt))
    (loss, _), grads = nnx.jit(grad_fn)(model, batch)
    return float(loss), jax.tree.leaves(nnx.state(grads, wrt))


def _twins(remat="none", spec=None, fullatt=None):
    """The same weights unrolled and scanned (the tiny config has a full-attention vision block); ``fullatt``:
    a 4-block vision tower with those full-attention blocks instead."""
    cfg = tiny(remat=remat)
    if fullatt is not None:
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, depth=4, fullatt_block_indexes=fullatt))
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    if spec is not None:
        model = lora.apply_lora(model, spec, seed=1)
        # non-zero B so the adapters take part in the numbers
        for _, m in model.iter_modules():
            b = getattr(m, "kernel_lora_b", None)
            if b is not None:
                b[...] = 0.05 * jax.random.normal(jax.random.key(3), b[...].shape)
    scanned = nnx.clone(model).set_runtime(scan_layers=True)
    return model, scanned


def test_scan_kinds_follow_the_full_attention_pattern():
    v = VisionConfig()  # Qwen2.5-VL: blocks 7, 15, 23, 31 of 32
    assert scan_kinds(v) == (False,) * 7 + (True,)
    assert runs_of(scan_kinds(v)) == [(0, 7), (7, 1)]  # an inner scan of 7 window blocks, then one full block
    assert scan_kinds(dataclasses.replace(v, depth=4, fullatt_block_indexes=(1, 3))) == (False, True)
    assert scan_kinds(dataclasses.replace(v, depth=4, fullatt_block_indexes=(1,))) == (
        False,
        True,
        False,
        False,
    )
    assert scan_kinds(dataclasses.replace(v, depth=4, fullatt_block_indexes=())) == (False,)
    assert runs_of((False, True, False, False)) == [(0, 1), (1, 1), (2, 2)]


@pytest.mark.parametrize(
    ("remat", "fullatt"), [("none", None), ("full", None), ("full", (1, 3)), ("full", (2,)), ("none", (2,))]
)
def test_scanned_equals_unrolled(remat, fullatt):
    """Also with vision scans of two steps (a window block, a full one) and of one step (an inner scan of two
    window blocks, a full block, a window block)."""
    plain, scanned = _twins(remat, fullatt=fullatt)
    assert plain.cfg.vision.fullatt_block_indexes and not plain.cfg.scan_layers and scanned.cfg.scan_layers
    batch = _batch(plain)
    inputs = {k: v for k, v in batch.items() if k != "loss_mask"}
    np.testing.assert_allclose(
        np.asarray(scanned.forward(**inputs)), np.asarray(plain.forward(**inputs)), atol=1e-5, rtol=1e-5
    )
    (l0, g0), (l1, g1) = _loss_and_grads(plain), _loss_and_grads(scanned)
    assert l1 == pytest.approx(l0, abs=1e-5)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("qtype", [None, "int8"])
def test_scanned_lora(qtype):
    """Adapters (and QLoRA's quantized base) scan like the weights: same logits, same adapter gradients."""
    spec = lora.LoraSpec(
        rank=4, alpha=8.0, targets=lora.DECODER_TARGETS + lora.VISION_TARGETS, base_qtype=qtype
    )
    plain, scanned = _twins("full", spec)
    (l0, g0), (l1, g1) = (_loss_and_grads(m, nnx.LoRAParam) for m in (plain, scanned))
    assert l1 == pytest.approx(l0, abs=1e-5) and g0
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_blocks_of_different_structure_are_refused():
    spec = lora.LoraSpec(rank=4, targets=(r"language_model/layers/0/self_attn/q_proj",))
    _, scanned = _twins("none", spec)
    inputs = scanned.prepare_inputs(np.array([[5, 6, 7]]))
    with pytest.raises(ValueError, match="scan_layers=False"):
        scanned.forward(**inputs)


def test_sampler_and_decoder_cache_path_unchanged():
    from r1ov_jax.rollout.sampler import SamplingConfig, generate

    plain, scanned = _twins("full")
    inputs = plain.prepare_inputs(np.array([[5, 6, 7, 8]]))
    cfg = SamplingConfig(max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(
        generate(scanned, inputs, 0, cfg).tokens, generate(plain, inputs, 0, cfg).tokens
    )


def test_scanned_lora_in_bf16_keeps_the_compute_dtype():
    """fp32 adapters on a bf16 model would promote the residual stream: each block's output is cast back to the
    compute dtype (a scan's carry must keep its type), scanned and unrolled alike."""
    import jax.numpy as jnp

    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=lora.DECODER_TARGETS + lora.VISION_TARGETS)
    model = lora.apply_lora(Qwen25VL(tiny(dtype=jnp.bfloat16), rngs=nnx.Rngs(0)), spec, seed=1)
    scanned = nnx.clone(model).set_runtime(scan_layers=True)
    batch = _batch(model)
    inputs = {k: v for k, v in batch.items() if k != "loss_mask"}
    h0, h1 = (m.decoder_outputs(**inputs).hidden for m in (model, scanned))
    assert h0.dtype == h1.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(h1, np.float32), np.asarray(h0, np.float32), atol=2e-2, rtol=2e-2)
