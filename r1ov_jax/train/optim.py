"""Optimizer: optax AdamW, linear warmup + cosine decay, global-norm clipping, gradient accumulation, and per
parameter group (vision tower, merger, decoder) freezing or learning-rate multipliers — all from config."""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx
from r1ov_jax.errors import InvalidInputError

GROUPS = ("vision", "merger", "decoder")


def param_group(path: tuple) -> str:
    """Which freezable group a parameter path belongs to."""
    names = [str(p) for p in path]
    if names[:2] == ["visual", "merger"]:
        return "merger"
    if names[:1] == ["visual"]:
        return "vision"
    return "decoder"  # language model, embeddings and lm_head


def default_optim_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            lr=1e-5,
            warmup_ratio=0.05,
            min_lr_ratio=0.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            clip_norm=1.0,
            grad_accum=1,
            freeze=(),
            lr_mult={},  # group -> factor on the learning rate (and so on AdamW's decoupled weight decay)
        )
    )


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=max(warmup, 0),
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def updates(cfg: ml_collections.ConfigDict, steps: int) -> int:
    """Optimizer updates in ``steps`` training steps (one per ``grad_accum`` micro-steps)."""
    return max(steps // max(cfg.grad_accum, 1), 1)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """AdamW chain; ``total_steps`` counts training (micro-)steps. With ``grad_accum = k`` the inner optimizer
    updates every k steps, so its schedule spans ``total_steps // k`` updates. ``cfg.freeze`` is applied by
    :func:`trainable` (frozen parameters are never handed to this transform), not here."""
    mult = {str(k): float(v) for k, v in dict(cfg.get("lr_mult") or {}).items()}
    unknown = set(mult) - set(GROUPS)
    if unknown or any(v <= 0 for v in mult.values()):
        raise InvalidInputError(
            f"optim.lr_mult needs groups from {GROUPS} and factors > 0, got {dict(cfg.get('lr_mult'))}"
        )
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        optax.adamw(
            schedule(cfg, updates(cfg, total_steps)),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        ),
    )
    scaled = {g: f for g, f in mult.items() if f != 1.0}
    if scaled:  # an AdamW update is lr-proportional: scaling it is the group's lr (and decay) times f
        per_group = {g: optax.scale(f) for g, f in scaled.items()} | {"rest": optax.identity()}
        tx = optax.chain(tx, optax.multi_transform(per_group, lambda params: _labels(params, scaled)))
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
    return tx


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _group_of(path) -> str:
    """``param_group`` of a JAX / NNX tree path (its keys as names)."""
    return param_group(tuple(_key_name(k) for k in path))


def _labels(params, scaled: dict):
    """Per leaf: its group's name where the group has an lr multiplier, else "rest"."""

    def label(path, _):
        group = _group_of(path)
        return group if group in scaled else "rest"

    return jax.tree_util.tree_map_with_path(label, params)


def trainable(model: nnx.Module, freeze=()):
    """What training updates and differentiates: the adapters of a LoRA model, else every parameter, less the
    parameters of the ``freeze`` groups. Frozen groups get no gradient at all (no backward pass through a frozen
    tower) and no optimizer state."""
    from r1ov_jax.models import lora

    frozen = set(freeze)
    if frozen - set(GROUPS):
        raise InvalidInputError(
            f"optim.freeze has unknown groups {sorted(frozen - set(GROUPS))}; choose from {GROUPS}"
        )
    base = lora.trainable(model)
    if not frozen:
        return base
    return nnx.All(base, lambda path, _: _group_of(path) not in frozen)


def make_nnx_optimizer(model: nnx.Module, cfg: ml_collections.ConfigDict, total_steps: int) -> nnx.Optimizer:
    """Optimizer state for :func:`trainable` only (LoRA base weights and frozen groups get none). The trainers
    differentiate the same filter, so the gradients match the state."""
    return nnx.Optimizer(model, make_optimizer(cfg, total_steps), wrt=trainable(model, cfg.freeze))
