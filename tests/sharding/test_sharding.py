"""Sharded == unsharded on 8 fake CPU devices; optimizer steps agree across meshes; checkpoints reshard;
corrupted checkpoints fail loudly."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.sharding import (
    activation_sharding,
    create_sharded,
    make_mesh,
    mesh_shape,
    rules_for,
    shard_batch,
    shard_model,
    shard_optimizer,
)
from r1ov_jax.train.checkpoint import Checkpointer, CheckpointError, train_state
from r1ov_jax.train.optim import default_optim_config, make_nnx_optimizer
from r1ov_jax.train.sft import train_step
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image

MESHES = [(8, 1, 1), (2, 4, 1), (1, 2, 4), (2, 2, 2)]
pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _inputs():
    pv, thw = hf_pixels([random_image(56, 56, seed=i) for i in range(8)])
    rows = [build_ids([1 + i, "img", 5, 6, 7], thw[i : i + 1]) for i in range(8)]
    return np.array(rows), pv, thw


def _model():
    return Qwen25VL(tiny(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_equals_unsharded(shape):
    ids, pv, thw = _inputs()
    ref_model = _model()
    base = np.asarray(ref_model(ids, None, pv, thw))
    mesh = make_mesh(*shape)
    model = create_sharded(_model, mesh)
    k = model.language_model.layers[0].mlp.gate_proj.kernel[...]
    assert len(k.sharding.device_set) == 8
    inputs = shard_batch(model.prepare_inputs(ids, None, pv, thw), mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        out = nnx.jit(lambda m, x: m.forward(**x))(model, inputs)
    assert np.abs(np.asarray(out) - base).max() <= 1e-5


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200, size=(8, 16)).astype(np.int32)
    return {
        "input_ids": ids,
        "segment_ids": np.ones_like(ids),
        "loss_mask": np.ones_like(ids, bool),
        "positions": np.broadcast_to(np.arange(16, dtype=np.int32), (3, 8, 16)).copy(),
    }


def _train(shape, steps=3):
    mesh = make_mesh(*shape)
    model = create_sharded(_model, mesh)
    cfg = default_optim_config()
    # eps 1e-3: Adam's first steps are ~lr*sign(g), so with eps=1e-8 a gradient entry of |g|~1e-9 turns
    # summation-order rounding (~1e-8 absolute, see test_gradients_agree) into O(lr) differences.
    cfg.lr, cfg.eps = 1e-2, 1e-3
    opt = shard_optimizer(make_nnx_optimizer(model, cfg, 10), model, mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        for _ in range(steps):
            train_step(model, opt, shard_batch(_batch(), mesh))
    return model, opt, mesh


def test_frozen_groups_shard_and_stay_put():
    # frozen groups have no gradient and no optimizer state; the sharded step must leave them in place
    mesh = make_mesh(2, 2, 2)
    model = create_sharded(_model, mesh)
    cfg = default_optim_config()
    cfg.lr, cfg.freeze, cfg.lr_mult = 1e-2, ("vision", "merger"), {"decoder": 0.5}
    opt = shard_optimizer(make_nnx_optimizer(model, cfg, 10), model, mesh)
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        train_step(model, opt, shard_batch(_batch(), mesh))
    after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed and all(k[0] != "visual" for k in changed), changed


def test_gradients_agree_across_meshes():
    from r1ov_jax.train.sft import sft_loss

    def grads(mesh):
        model = create_sharded(_model, mesh)
        with activation_sharding(mesh, rules_for(model.cfg, mesh)):
            g = nnx.jit(lambda m, b: nnx.grad(lambda m: sft_loss(m, b)[0])(m))(
                model, shard_batch(_batch(), mesh)
            )
        return [np.asarray(x) for x in jax.tree.leaves(g)]

    for x, y in zip(grads(make_mesh(8, 1, 1)), grads(make_mesh(2, 2, 2))):
        assert np.abs(x - y).max() <= 1e-6


def test_optimizer_steps_agree_across_meshes():
    a, _, _ = _train((8, 1, 1))
    b, _, _ = _train((2, 2, 2))
    pa = jax.tree.leaves(nnx.state(a, nnx.Param))
    pb = jax.tree.leaves(nnx.state(b, nnx.Param))
    assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(pa, pb)) <= 1e-5
    moved = max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(pa, jax.tree.leaves(nnx.state(_model(), nnx.Param)))
    )
    assert moved > 1e-3  # the steps really changed the params


def test_restore_onto_a_different_mesh(tmp_path):
    model, opt, _ = _train((2, 2, 2), steps=2)
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(2, train_state(model, opt, None), {"step": 2}, force=True)
    ckpt.close()
    target_mesh = make_mesh(8, 1, 1)
    fresh = create_sharded(lambda: Qwen25VL(tiny(), rngs=nnx.Rngs(5)), target_mesh)
    fresh_opt = shard_optimizer(make_nnx_optimizer(fresh, default_optim_config(), 10), fresh, target_mesh)
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    state, meta = ckpt.restore(None, train_state(fresh, fresh_opt, None))
    ckpt.close()
    nnx.update(fresh, state["params"])
    for x, y in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(fresh, nnx.Param))
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    leaf = fresh.language_model.layers[0].mlp.gate_proj.kernel[...]
    assert leaf.sharding.mesh.shape == target_mesh.shape and meta["step"] == 2


def test_corrupted_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    model = _model()
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, train_state(model, None, None), {"step": 1}, force=True)
    ckpt.close()
    # a model of another size: shapes differ → error naming the mismatch
    other = Qwen25VL(tiny(vocab_size=300), rngs=nnx.Rngs(0))
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(CheckpointError, match="does not match|cannot restore"):
        ckpt.restore(1, train_state(other, None, None))
    ckpt.close()
    # damage the stored arrays: restoring must fail, never silently give wrong weights
    for root, _, files in os.walk(tmp_path / "1"):
        for f in files:
            p = os.path.join(root, f)
            if os.path.getsize(p) > 1000:
                with open(p, "r+b") as fh:
                    fh.truncate(os.path.getsize(p) // 3)
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(CheckpointError):
        ckpt.restore(1, train_state(_model(), None, None))
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(CheckpointError, match="no step 7"):
        ckpt.restore(7, train_state(_model(), None, None))
    ckpt.close()


def test_mesh_shape_resolution_and_errors():
    assert mesh_shape(-1, 2, 2, num_devices=8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(-1, -1, 1, num_devices=8)
    with pytest.raises(ValueError, match="needs 12 devices"):
        mesh_shape(3, 2, 2, num_devices=8)


def test_batch_split_problem(caplog):
    """A batch the data x fsdp shards do not divide: replicated on one process (warning), refused on several
    (shard_batch / per_process would stop the run at its first batch); the trainers check before loading."""
    from r1ov_jax.errors import InvalidInputError
    from r1ov_jax.sharding import batch_split_problem
    from r1ov_jax.train.recipes import check_batch_split

    v5p64 = dict(data=1, fsdp=32, tensor=1)
    assert batch_split_problem("pipeline.prompt_batch_size", 32, v5p64, processes=8) is None
    assert batch_split_problem("pipeline.prompt_batch_size", 16, dict(data=1, fsdp=16, tensor=2), 8) is None
    fatal, msg = batch_split_problem("pipeline.prompt_batch_size", 16, v5p64, processes=8)
    assert fatal and "prompt_batch_size=16" in msg and "32 data x fsdp shards" in msg and "1x32x1" in msg
    fatal, msg = batch_split_problem("pipeline.prompt_batch_size", 16, v5p64, processes=1)
    assert not fatal and "replicated" in msg
    # divisible by the shards but not by the processes: per_process refuses it too
    assert batch_split_problem("pipeline.batch_size", 4, dict(data=2, fsdp=1, tensor=1), processes=8)[0]

    mesh = make_mesh(-1, 1, 1)  # 8 devices, one process: a warning, the run goes on
    with caplog.at_level("WARNING"):
        check_batch_split(mesh, "pipeline.batch_size", 4)
    assert "replicated and every chip computes all 4 rows" in caplog.text
    check_batch_split(None, "pipeline.batch_size", 3)  # no mesh: nothing to split
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "process_count", lambda: 2)
        with pytest.raises(InvalidInputError, match="on 2 processes"):
            check_batch_split(mesh, "pipeline.batch_size", 4)


def test_shard_model_in_place():
    mesh = make_mesh(2, 2, 2)
    model = shard_model(_model(), mesh)
    assert len(model.lm_head.kernel[...].sharding.device_set) == 8
    assert isinstance(ml_collections.ConfigDict(), ml_collections.ConfigDict)


def test_hf_import_streams_onto_the_mesh(tmp_path):
    from r1ov_jax import hf
    from r1ov_jax.testing.hf_reference import tiny_hf_model

    tiny_hf_model(seed=3).save_pretrained(tmp_path / "m")
    ids, pv, thw = _inputs()
    base = np.asarray(hf.from_pretrained(str(tmp_path / "m"))(ids, None, pv, thw))
    mesh = make_mesh(1, 4, 2)
    model = hf.from_pretrained(str(tmp_path / "m"), mesh=mesh)
    k = model.language_model.layers[0].mlp.up_proj.kernel[...]
    assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor") and len(k.sharding.device_set) == 8
    inputs = shard_batch(model.prepare_inputs(ids, None, pv, thw), mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        out = nnx.jit(lambda m, x: m.forward(**x))(model, inputs)
    assert np.abs(np.asarray(out) - base).max() <= 1e-5


def test_sampler_on_a_mesh_matches_single_device():
    from r1ov_jax.rollout.sampler import SamplingConfig, generate

    ids, pv, thw = _inputs()
    model = _model()
    model.lm_head.kernel.value = model.lm_head.kernel[...] * 60.0  # unambiguous greedy paths
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.0)
    ref = generate(model, model.prepare_inputs(ids, None, pv, thw), 0, cfg, num_samples=2)
    mesh = make_mesh(2, 2, 2)
    shard_model(model, mesh)
    with activation_sharding(mesh, rules_for(model.cfg, mesh)):
        out = generate(
            model, shard_batch(model.prepare_inputs(ids, None, pv, thw), mesh), 0, cfg, num_samples=2
        )
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
