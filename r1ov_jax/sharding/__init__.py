"""Sharding: (data, fsdp, tensor) meshes, the logical-axis rules table, sharded creation and multi-host set-up."""

from r1ov_jax.sharding.mesh import (
    batch_sharding,
    batch_split_problem,
    create_sharded,
    host_local_rows,
    default_mesh_config,
    initialize_distributed,
    make_mesh,
    mesh_from_config,
    mesh_shape,
    param_shardings,
    shard_batch,
    shard_model,
    shard_optimizer,
)
from r1ov_jax.sharding.rules import DEFAULT_RULES, activation_sharding, constrain, logical_to_spec, rules_for

__all__ = [
    "DEFAULT_RULES",
    "activation_sharding",
    "batch_sharding",
    "batch_split_problem",
    "constrain",
    "create_sharded",
    "host_local_rows",
    "default_mesh_config",
    "initialize_distributed",
    "logical_to_spec",
    "make_mesh",
    "mesh_from_config",
    "mesh_shape",
    "param_shardings",
    "rules_for",
    "shard_batch",
    "shard_model",
    "shard_optimizer",
]
