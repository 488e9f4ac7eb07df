"""The one table mapping logical axis names (on every parameter and at block boundaries) to mesh axes.

Parallelism is a config change: the model names its axes ("embed", "mlp", "q_heads", ...), this table says
which mesh axis (``data``, ``fsdp``, ``tensor``) shards each. Mapping a name to None replicates it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

# logical name → mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_vocab": "tensor",
    "patches": None,
    # parameters: FSDP shards the model dimension, tensor parallelism the head / hidden dimensions
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "qkv": "tensor",
    "heads_merged": "tensor",
    "merged": "fsdp",
    "patch": None,
    "norm": None,
}

_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("r1ov_sharding", default=None)


def rules_for(cfg, mesh: Mesh, rules: dict | None = None) -> dict:
    """Rules adjusted to a model config: dimensions the tensor axis does not divide are replicated.

    With GQA the kv projections have ``num_key_value_heads * head_dim`` outputs; when the kv-head count is not
    a multiple of the tensor axis, sharding them would split heads, so they are replicated instead (each
    tensor shard keeps all kv heads, which is what GQA kernels expect anyway).
    """
    rules = dict(DEFAULT_RULES if rules is None else rules)
    tp = mesh.shape.get("tensor", 1)
    if tp > 1:
        t, v = cfg.text, cfg.vision
        if t.num_key_value_heads % tp:
            log.warning(
                "num_key_value_heads=%d not divisible by tensor=%d: replicating k/v projections",
                t.num_key_value_heads,
                tp,
            )
            rules["kv_heads"] = None
        if t.num_attention_heads % tp:
            raise ValueError(
                f"num_attention_heads={t.num_attention_heads} must be divisible by the tensor axis ({tp})"
            )
        if v.num_heads % tp:
            rules["qkv"] = rules["heads_merged"] = None
    return rules


def logical_to_spec(axes, rules: dict, mesh: Mesh | None = None, shape=None) -> PartitionSpec:
    """PartitionSpec for logical ``axes``; a dimension its mesh axes do not divide is replicated."""
    used, spec = set(), []
    for i, name in enumerate(axes):
        target = rules.get(name) if name is not None else None
        if isinstance(target, str):
            target = (target,)
        if target:
            target = tuple(a for a in target if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1))
            if mesh is not None and shape is not None and target:
                size = 1
                for a in target:
                    size *= mesh.shape[a]
                if shape[i] % size:
                    target = ()
            used.update(target)
        spec.append(None if not target else target[0] if len(target) == 1 else target)
    return PartitionSpec(*spec)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: dict):
    """Within this context, :func:`constrain` pins activations to ``rules`` on ``mesh``.

    The mesh is also installed with ``jax.set_mesh``: that makes it part of jit's trace-cache key, so a
    function traced under one mesh is never reused (with stale constraints) under another. Keep ``rules``
    fixed per mesh for the same reason.
    """
    token = _CONTEXT.set((mesh, rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _CONTEXT.reset(token)


def current() -> tuple[Mesh, dict] | None:
    """The ``(mesh, rules)`` of the enclosing :func:`activation_sharding`, or None outside it."""
    return _CONTEXT.get()


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`activation_sharding`."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(axes, rules, mesh, x.shape))
    )
