"""The optimizer's per-group options against a direct NumPy AdamW: learning-rate multipliers and freezing."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.train.optim import default_optim_config, make_optimizer, schedule


def _params(rng):
    # the groups by path, as in the model: visual.merger, other visual.*, everything else (decoder)
    return {
        "visual": {"blocks": rng.normal(size=(3, 2)), "merger": rng.normal(size=(4,))},
        "language_model": {"w": rng.normal(size=(2, 5))},
        "lm_head": rng.normal(size=(5,)),
    }


GROUP = {("visual", "blocks"): "vision", ("visual", "merger"): "merger"}


def _numpy_adamw(cfg, params, grads_seq, mult, frozen=()):
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
            if group in frozen:
                continue
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


@pytest.mark.parametrize(
    "mult, frozen",
    [({"vision": 4.0, "merger": 2.0}, ()), ({"decoder": 0.5}, ()), ({"vision": 3.0}, ("merger",))],
)
def test_lr_mult_and_freeze_match_numpy_adamw(mult, frozen):
    rng = np.random.default_rng(0)
    cfg = default_optim_config()
    cfg.lr, cfg.warmup_ratio, cfg.weight_decay, cfg.clip_norm = 1e-2, 0.0, 0.1, 0.0
    cfg.lr_mult, cfg.freeze = mult, frozen
    params = _params(rng)
    grads = [
        {k: (rng.normal(size=np.shape(v)) if not isinstance(v, dict)
             else {kk: rng.normal(size=np.shape(x)) for kk, x in v.items()}) for k, v in params.items()}
        for _ in range(3)
    ]  # fmt: skip
    ours = _run(cfg, params, grads)
    ref = _numpy_adamw(cfg, params, grads, mult, frozen)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
    start = {(k, kk): v for k, sub in params.items()
             for kk, v in (sub.items() if isinstance(sub, dict) else [("", sub)])}  # fmt: skip
    for k, group in GROUP.items():  # frozen groups did not move; scaled ones moved
        assert np.array_equal(ours[k], np.float32(start[k])) == (group in frozen)


@pytest.mark.parametrize("bad", [{"vison": 2.0}, {"vision": 0.0}, {"merger": -1.0}])
def test_bad_lr_mult_is_refused(bad):
    cfg = default_optim_config()
    cfg.lr_mult = bad
    with pytest.raises(InvalidInputError, match="lr_mult"):
        make_optimizer(cfg, 10)
