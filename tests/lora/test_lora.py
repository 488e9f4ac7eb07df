"""LoRA / QLoRA through qwix: zero-B exactness, adapters-only training, merge, reference view, QLoRA error."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.models import lora
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.train import sft
from r1ov_jax.train.loop import default_train_config
from r1ov_jax.train.optim import default_optim_config, make_nnx_optimizer

ALL_TARGETS = lora.DECODER_TARGETS + lora.VISION_TARGETS
# ||Δlogits|| / ||logits|| of QLoRA vs LoRA on the fp32 base, tiny random model, default (decoder) targets:
# measured 0.0032 (int8, per-channel absmax) and 0.060 (nf4, 64-row tiles) — about 3x / 2x margin (docs/LORA.md)
QLORA_TOL = {"int8": 0.01, "nf4": 0.12}


@pytest.fixture(scope="module")
def base():
    return Qwen25VL(tiny(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def image_inputs(base):
    cfg = base.cfg
    ids = np.array(
        [[1, 2, 3, cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id, 5]]
    )
    grid = np.array([[1, 4, 4]])
    pixels = np.random.default_rng(0).normal(size=(16, cfg.vision.patch_dim)).astype(np.float32)
    return base.prepare_inputs(ids, None, pixels, grid)


def randomize_b(model, seed=1, scale=0.2):
    for i, (m, _, b) in enumerate(lora.adapter_pairs(model).values()):
        m.kernel_lora_b.set_value(scale * jax.random.normal(jax.random.key(seed + i), b.shape, b.dtype))


def test_zero_b_logits_equal_base_exactly(base, image_inputs):
    model = lora.apply_lora(base, lora.LoraSpec(rank=4, targets=ALL_TARGETS))
    pairs = lora.adapter_pairs(model)
    assert len(pairs) == 2 * 7 + 2 * 5 + 2  # decoder (7/layer), vision blocks (5/block), merger (2)
    assert all(not np.asarray(b).any() for _, _, b in pairs.values())
    with (
        jax.disable_jit()
    ):  # op by op: y + x·A·0 is y bit for bit (a fused jit may round the sum differently)
        a, b = base.forward(**image_inputs), model.forward(**image_inputs)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jit_diff = float(jnp.abs(jax.jit(lambda: model.forward(**image_inputs))() - a).max())
    assert jit_diff < 1e-5, jit_diff


def test_adapter_shapes_axes_and_dead_target(base):
    model = lora.apply_lora(base, lora.LoraSpec(rank=3))
    q = model.language_model.layers[0].self_attn.q_proj
    assert q.kernel_lora_a.shape == (64, 3) and q.kernel_lora_b.shape == (3, 64)
    assert q.kernel_lora_a.get_metadata()["logical_axes"] == ("embed", None)
    assert q.kernel_lora_b.get_metadata()["logical_axes"] == (None, "q_heads")
    assert not hasattr(model.visual.blocks[0].attn.qkv, "kernel_lora_a")  # decoder-only default
    with pytest.raises(InvalidInputError, match="matches no linear layer"):
        lora.apply_lora(base, lora.LoraSpec(rank=2, targets=("language_model/nothing",)))
    with pytest.raises(InvalidInputError, match="base_qtype"):
        lora.LoraSpec(rank=2, base_qtype="int3")
    # qwix's LoRA dropout would stay on while sampling and in the reference pass (docs/LORA.md)
    with pytest.raises(InvalidInputError, match="only 0.0 is supported"):
        lora.LoraSpec.from_config({"rank": 8, "dropout": 0.05})


def train_cfg(steps, lr=3e-3):
    c = ml_collections.ConfigDict()
    c.optim = default_optim_config()
    c.optim.lr, c.optim.warmup_ratio = lr, 0.0
    c.train = default_train_config()
    c.train.steps, c.train.log_every, c.train.ckpt_every = steps, 5, 100
    return c


def sft_batch(seed=0, b=2, length=24):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 200, size=(b, length)).astype(np.int32)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (3, b, length)).copy()
    loss = np.zeros_like(ids, bool)
    loss[:, 8:] = True
    return {"input_ids": ids, "segment_ids": np.ones_like(ids), "positions": pos, "loss_mask": loss}


def flat(state):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


@pytest.mark.parametrize("qtype", [None, "int8", "nf4"])
def test_training_touches_only_adapters_and_loss_falls(base, qtype, tmp_path):
    model = lora.apply_lora(base, lora.LoraSpec(rank=8, alpha=16.0, base_qtype=qtype))
    frozen_before = flat(nnx.state(model, nnx.Not(nnx.LoRAParam)))
    batch = sft_batch()
    first = float(sft.eval_step(model, batch)["loss"])
    optimizer = make_nnx_optimizer(model, train_cfg(1).optim, 40)
    adapters = flat(lora.adapter_state(model))
    # optimizer state (Adam mu/nu) exists for the adapters only
    mu = flat(nnx.state(optimizer)["opt_state"][1][0].mu)
    assert len(mu) == len(adapters) == 2 * 7 * 2 and all("lora" in k for k in mu)
    # gradients only for adapters
    _, grads = nnx.value_and_grad(sft.sft_loss, has_aux=True, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        model, batch
    )
    assert set(flat(grads)) == set(adapters)
    out = sft.run_sft(model, iter([batch] * 40), train_cfg(40), out_dir=str(tmp_path), progress=False)
    # the tiny model's untied, unadapted LM head (std 0.02) bounds how sharp its logits get: the loss falls by
    # ~1.2 nats while the arg-max becomes right on nearly every target
    assert out["loss"] < first - 0.8 and out["token_acc"] > 0.9, (first, out)
    frozen_after = flat(nnx.state(model, nnx.Not(nnx.LoRAParam)))
    assert frozen_before.keys() == frozen_after.keys()
    for k, v in frozen_before.items():
        assert v.dtype == frozen_after[k].dtype and np.array_equal(v, frozen_after[k]), k  # bit-identical
    changed = flat(lora.adapter_state(model))
    assert any(not np.array_equal(adapters[k], changed[k]) for k in adapters)


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_qlora_forward_within_measured_tolerance(base, image_inputs, qtype):
    """QLoRA (default decoder targets quantized) vs the same adapters on the fp32 base."""
    ref = lora.apply_lora(base, lora.LoraSpec(rank=4))
    q = lora.apply_lora(base, lora.LoraSpec(rank=4, base_qtype=qtype))
    kernel = q.language_model.layers[0].mlp.up_proj.kernel
    assert not isinstance(kernel, nnx.Param)  # qwix replaced it by the quantized weight
    for m in (ref, q):
        randomize_b(m)
    a, b = np.asarray(ref.forward(**image_inputs)), np.asarray(q.forward(**image_inputs))
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print(f"QLoRA {qtype}: ||Δlogits|| / ||logits|| = {rel:.4f}, max |Δ| = {np.abs(a - b).max():.4f}")
    assert 0 < rel < QLORA_TOL[qtype], rel


@pytest.mark.parametrize("qtype", [None, "nf4"])
def test_merged_equals_adapted_model(base, image_inputs, qtype):
    model = lora.apply_lora(base, lora.LoraSpec(rank=4, targets=ALL_TARGETS, base_qtype=qtype))
    randomize_b(model)
    merged = lora.merged(model)
    assert not lora.is_lora(merged) and not list(nnx.to_flat_state(nnx.state(merged, nnx.LoRAParam)))
    a, b = model.forward(**image_inputs), merged.forward(**image_inputs)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    plain = lora.base_model(model)
    if qtype is None:
        for k, v in flat(nnx.state(base, nnx.Param)).items():
            np.testing.assert_array_equal(v, flat(nnx.state(plain, nnx.Param))[k])


def test_adapters_off_is_the_base_with_no_second_weight_set(base, image_inputs):
    from r1ov_jax.train.grpo import completion_logprobs, reference_logprobs, token_kl

    model = lora.apply_lora(base, lora.LoraSpec(rank=4))
    ref = lora.AdaptersOff(model)
    # the view owns nothing: every leaf of its state is the policy's own array object
    ref_leaves = jax.tree.leaves(nnx.state(ref))
    policy_ids = {id(x) for x in jax.tree.leaves(nnx.state(model))}
    assert ref_leaves and all(id(x) in policy_ids for x in ref_leaves)
    prompt = {k: image_inputs[k] for k in ("input_ids", "segment_ids", "positions", "pixel_values", "vision")}
    comps = jnp.array([[5, 6, 7], [8, 9, 10]], jnp.int32)
    mask = jnp.ones(comps.shape, bool)
    # step 0 (B = 0): the reference equals the policy, KL = 0
    logp = nnx.jit(completion_logprobs, static_argnames="group")(model, prompt, comps, mask, group=2)
    ref_logp = reference_logprobs(ref, prompt, comps, mask, group=2)
    np.testing.assert_allclose(np.asarray(ref_logp), np.asarray(logp), atol=1e-6)
    assert float(jnp.abs(token_kl(logp, ref_logp, "k3")).max()) < 1e-10
    # after the adapters move, the reference still is the base model
    randomize_b(model)
    moved = nnx.jit(completion_logprobs, static_argnames="group")(model, prompt, comps, mask, group=2)
    base_logp = nnx.jit(completion_logprobs, static_argnames="group")(base, prompt, comps, mask, group=2)
    ref_logp = reference_logprobs(ref, prompt, comps, mask, group=2)
    assert float(jnp.abs(moved - base_logp).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(ref_logp), np.asarray(base_logp), atol=1e-5)
