"""Device mesh (data, fsdp, tensor) from config, sharded model creation and placement, multi-host set-up."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1ov_jax.sharding.rules import logical_to_spec, rules_for
from r1ov_jax.errors import InvalidInputError

log = logging.getLogger(__name__)
AXES = ("data", "fsdp", "tensor")


def default_mesh_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int | None = None) -> tuple:
    """Resolves one -1 ("fill") entry; the product must equal the device count."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise InvalidInputError(
            f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise InvalidInputError(f"mesh: {n} devices are not divisible by the fixed axes product {known}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise InvalidInputError(
            f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {int(np.prod(sizes))} devices, have {n}"
        )
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices)  # ICI/NVLink-aware order
    except Exception:  # noqa: BLE001 - CPU fake devices and odd topologies: plain order is fine
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, AXES)


def mesh_from_config(mc: ml_collections.ConfigDict | None) -> Mesh:
    mc = mc or default_mesh_config()
    return make_mesh(mc.data, mc.fsdp, mc.tensor)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> nnx.State:
    """NamedSharding per parameter from its ``logical_axes`` metadata (a State mirroring ``nnx.Param``s)."""
    rules = rules_for(model.cfg, mesh, rules)
    state = nnx.state(model, nnx.Param)

    def one(var):
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            raise InvalidInputError(f"parameter of shape {var.shape} has no logical_axes metadata")
        return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, var.shape))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(make_model, mesh: Mesh, rules: dict | None = None):
    """Builds a model directly in sharded form: abstract init, then a jit whose outputs land on their devices,
    so no host or device ever holds a full unsharded copy."""
    abstract = nnx.eval_shape(make_model)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    shardings = nnx.to_pure_dict(param_shardings(abstract, mesh, rules))

    def init():
        return nnx.to_pure_dict(nnx.state(make_model(), nnx.Param))

    nnx.replace_by_pure_dict(params, jax.jit(init, out_shardings=shardings)())
    return nnx.merge(graphdef, params, rest)


def _put(value, sharding):
    """device_put that also works across processes (every process holds the same full value)."""
    if jax.process_count() > 1 and not sharding.is_fully_addressable:
        host = np.asarray(jax.device_get(value))
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.device_put(value, sharding)


def shard_model(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> nnx.Module:
    """Moves an existing model's params onto the mesh (in place)."""
    shardings = param_shardings(model, mesh, rules)
    state = nnx.state(model, nnx.Param)
    placed = jax.tree.map(
        lambda v, s: _put(v[...], s), state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    nnx.update(model, placed)
    return model


def shard_optimizer(optimizer: nnx.Optimizer, model: nnx.Module, mesh: Mesh) -> nnx.Optimizer:
    """Each optimizer leaf (Adam moments, ...) takes the sharding of the parameter whose path it ends with;
    scalars (counts, step) are replicated."""
    by_path = {
        tuple(str(k) for k in path): v[...].sharding
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding_for(path, value):
        keys = tuple(str(k) for k in path)
        for start in range(len(keys)):
            s = by_path.get(keys[start:])
            if s is not None and value.ndim:
                return s
        return replicated

    flat = [
        (path, _put(v[...], sharding_for(path, v[...])))
        for path, v in nnx.to_flat_state(nnx.state(optimizer))
    ]
    nnx.update(optimizer, nnx.from_flat_state(flat))
    return optimizer


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_axis] = ("data", "fsdp")
    return NamedSharding(mesh, PartitionSpec(*spec))


def host_local_rows(x) -> np.ndarray:
    """This process's rows (axis 0) of a batch-sharded global array, in global row order, as NumPy.

    A fully addressable array (one process) comes back whole. In a multi-process job these are exactly the rows
    this process fed through :func:`shard_batch` (the same sharding places both), so per-row host work such as
    decoding completions and scoring rewards stays with the process that holds the prompts' answers.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    by_start = {}
    for shard in x.addressable_shards:  # replicas over the other mesh axes repeat a row block: keep one
        by_start.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(by_start[k]) for k in sorted(by_start)])


def batch_split_problem(what: str, rows: int, mesh_axes: dict, processes: int = 1) -> tuple[bool, str] | None:
    """Why a global batch of ``rows`` does not split over the mesh's batch shards (data x fsdp), or None.

    Returns ``(fatal, message)``: with several processes `shard_batch` (and `per_process`) refuse such a batch,
    so it is fatal; on one process it is replicated, and every chip then runs the forward pass (vision tower
    included) over all of its rows. The trainers check at start-up, ``r1ov preflight`` for the target topology.
    """
    shards = int(mesh_axes["data"]) * int(mesh_axes["fsdp"])
    if rows % shards == 0 and rows % processes == 0:
        return None
    mesh = "x".join(str(mesh_axes[a]) for a in AXES)
    fix = (
        f"choose mesh.data x mesh.fsdp dividing {rows} (mesh.tensor takes the remaining chips; it must divide "
        f"the attention heads) or a batch that is a multiple of {shards}"
    )
    if processes > 1:
        return True, (
            f"{what}={rows} rows cannot be split over the {shards} data x fsdp shards of mesh {mesh} "
            f"(data x fsdp x tensor) on {processes} processes: the run would stop at its first batch; {fix}"
        )
    return False, (
        f"{what}={rows} rows do not divide over the {shards} data x fsdp shards of mesh {mesh}: the batch is "
        f"replicated and every chip computes all {rows} rows (vision tower included); {fix}"
    )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local batch → global arrays split over (data, fsdp) on the batch axis.

    Each process passes its own rows (per-process data sharding). Every array has the batch axis first (M-RoPE
    ``positions`` second), vision patches and geometry included: images travel with their row, so each device
    gets the vision work of its own rows. A batch the data axes do not divide must be the same on every process
    and is replicated.
    """
    shards = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(path, x):
        x = np.asarray(x)
        axis = 1 if jax.tree_util.keystr(path).endswith("['positions']") else 0
        if x.ndim > axis and (x.shape[axis] * jax.process_count()) % shards == 0:
            return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, axis), x)
        if jax.process_count() > 1:
            raise InvalidInputError(
                f"batch array {jax.tree_util.keystr(path)} of shape {x.shape}: {jax.process_count()} processes x "
                f"{x.shape[axis] if x.ndim > axis else 0} rows is not divisible by the {shards} data shards"
            )
        return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec()), x)

    return jax.tree_util.tree_map_with_path(put, batch)


def initialize_distributed() -> bool:
    """``jax.distributed.initialize`` from the environment; returns True when running multi-process.

    TPU pods and SLURM are auto-detected by JAX; elsewhere set ``R1OV_COORDINATOR_ADDRESS``,
    ``R1OV_NUM_PROCESSES`` and ``R1OV_PROCESS_ID``. A single process needs nothing.
    """
    addr = os.environ.get("R1OV_COORDINATOR_ADDRESS")
    if addr:
        try:
            n, pid = int(os.environ["R1OV_NUM_PROCESSES"]), int(os.environ["R1OV_PROCESS_ID"])
        except (KeyError, ValueError):
            raise InvalidInputError(
                "R1OV_COORDINATOR_ADDRESS is set: R1OV_NUM_PROCESSES and R1OV_PROCESS_ID must be integers too"
            ) from None
        if not jax.distributed.is_initialized():
            jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
        return True
    # SLURM with several tasks, GKE/xpk TPU slices, or launchers that ask for it (TPU VM pods: JAX reads the
    # worker list from the metadata server, which no variable here reveals).
    if (
        os.environ.get("SLURM_NTASKS", "1") != "1"
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or os.environ.get("R1OV_DISTRIBUTED") == "1"
    ):
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()
        return True
    return False
