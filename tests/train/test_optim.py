"""The optimizer's per-group options: learning-rate multipliers against a direct NumPy AdamW; frozen groups get no
gradient, no optimizer state and do not move, while the other groups take exactly the unfrozen run's update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image
from r1ov_jax.train.optim import (
    default_optim_config,
    make_nnx_optimizer,
    make_optimizer,
    param_group,
    schedule,
    trainable,
)
from r1ov_jax.train.sft import train_step


def _params(rng):
    # the groups by path, as in the model: visual.merger, other visual.*, everything else (decoder)
    return {
        "visual": {"blocks": rng.normal(size=(3, 2)), "merger": rng.normal(size=(4,))},
        "language_model": {"w": rng.normal(size=(2, 5))},
        "lm_head": rng.normal(size=(5,)),
    }


GROUP = {("visual", "blocks"): "vision", ("visual", "merger"): "merger"}


def _numpy_adamw(cfg, params, grads_seq, mult):
    """AdamW from its formula, one multiplier f per group on the step (lr_t * f, decay included)."""
    sched = schedule(cfg, len(grads_seq))
    flat = lambda tree: {
        (k, kk): v
        for k, sub in tree.items()
        for kk, v in (sub.items() if isinstance(sub, dict) else [("", sub)])
    }
    p = {k: np.array(v, np.float64) for k, v in flat(params).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        lr = float(sched(t - 1))
        for k, g in flat(grads).items():
            group = GROUP.get(k, "decoder")
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g
            v2[k] = cfg.b2 * v2[k] + (1 - cfg.b2) * g * g
            mh, vh = m[k] / (1 - cfg.b1**t), v2[k] / (1 - cfg.b2**t)
            p[k] = p[k] - mult.get(group, 1.0) * lr * (mh / (np.sqrt(vh) + cfg.eps) + cfg.weight_decay * p[k])
    return p


def _run(cfg, params, grads_seq):
    tx = make_optimizer(cfg, len(grads_seq))
    p = {k: (jnp.asarray(v) if not isinstance(v, dict) else {kk: jnp.asarray(x) for kk, x in v.items()})
         for k, v in params.items()}  # fmt: skip
    state = tx.init(p)
    for g in grads_seq:
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
    return {(k, kk): np.asarray(v) for k, sub in p.items()
            for kk, v in (sub.items() if isinstance(sub, dict) else [("", sub)])}  # fmt: skip


@pytest.mark.parametrize("mult", [{"vision": 4.0, "merger": 2.0}, {"decoder": 0.5}, {"vision": 3.0}])
def test_lr_mult_matches_numpy_adamw(mult):
    rng = np.random.default_rng(0)
    cfg = default_optim_config()
    cfg.lr, cfg.warmup_ratio, cfg.weight_decay, cfg.clip_norm = 1e-2, 0.0, 0.1, 0.0
    cfg.lr_mult = mult
    params = _params(rng)
    grads = [
        {k: (rng.normal(size=np.shape(v)) if not isinstance(v, dict)
             else {kk: rng.normal(size=np.shape(x)) for kk, x in v.items()}) for k, v in params.items()}
        for _ in range(3)
    ]  # fmt: skip
    ours = _run(cfg, params, grads)
    ref = _numpy_adamw(cfg, params, grads, mult)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=str(k))


def _image_batch(model):
    pv, thw = hf_pixels([random_image(56, 56, seed=i) for i in range(2)])
    ids = np.array([build_ids([1 + i, "img", 5, 6, 7, 8], thw[i : i + 1]) for i in range(2)])
    batch = model.prepare_inputs(ids, None, pv, thw)
    return batch | {"loss_mask": np.ones_like(batch["input_ids"], bool)}


def _group_params(model, group):
    return {
        k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if param_group(k) == group
    }


def test_frozen_groups_get_no_gradient_state_or_update():
    cfg = default_optim_config()
    cfg.lr, cfg.warmup_ratio, cfg.clip_norm = 1e-2, 0.0, 0.0  # no global clipping: AdamW is per-parameter
    runs = {}
    for freeze in ((), ("vision", "merger")):
        model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
        batch = _image_batch(model)
        cfg.freeze = freeze
        opt = make_nnx_optimizer(model, cfg, 10)
        n_state = sum(x.size for x in jax.tree.leaves(opt.opt_state) if x.ndim)  # less step counts
        n_trained = sum(x.size for x in jax.tree.leaves(nnx.state(model, trainable(model, freeze))))
        assert n_state == 2 * n_trained  # AdamW's mu and nu for what is trained, nothing for frozen groups
        before = {g: _group_params(model, g) for g in ("vision", "merger", "decoder")}
        aux = train_step(model, opt, batch)  # one step: after it the unfrozen run's tower differs
        runs[freeze] = before, {g: _group_params(model, g) for g in before}, aux
    before, after, aux = runs[("vision", "merger")]
    for g in ("vision", "merger"):
        assert before[g] and all(np.array_equal(before[g][k], after[g][k]) for k in before[g]), g
    # the decoder takes exactly the unfrozen run's update; the reported gradient norm excludes frozen groups
    free_after, free_aux = runs[()][1], runs[()][2]
    for k, v in after["decoder"].items():
        np.testing.assert_allclose(v, free_after["decoder"][k], rtol=1e-6, atol=1e-7, err_msg=str(k))
    assert not np.array_equal(after["decoder"][k], before["decoder"][k])
    assert float(aux["grad_norm"]) < float(free_aux["grad_norm"])
    np.testing.assert_allclose(float(aux["loss"]), float(free_aux["loss"]), rtol=1e-6)


def test_unknown_frozen_group_is_refused():
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    cfg = default_optim_config()
    cfg.freeze = ("vison",)
    with pytest.raises(InvalidInputError, match="optim.freeze"):
        make_nnx_optimizer(model, cfg, 10)


@pytest.mark.parametrize("bad", [{"vison": 2.0}, {"vision": 0.0}, {"merger": -1.0}])
def test_bad_lr_mult_is_refused(bad):
    cfg = default_optim_config()
    cfg.lr_mult = bad
    with pytest.raises(InvalidInputError, match="lr_mult"):
        make_optimizer(cfg, 10)
