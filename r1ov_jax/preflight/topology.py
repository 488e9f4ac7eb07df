"""TPU topologies by MaxText-style name (``v5p-64``, ``v5e-256``) and their devices on a host without a TPU."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

from r1ov_jax.errors import InvalidInputError, MissingInputError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: HBM per chip and peak dense bf16 FLOP/s per chip (Google Cloud TPU spec sheets:
    cloud.google.com/tpu/docs/v4, v5e, v5p, v6e), and how its topologies are named."""

    name: str
    device_kind: str  # what the deviceless device reports
    hbm_bytes: int
    peak_flops: float
    counts_cores: bool  # v4-N / v5p-N count TensorCores (2 per megacore chip); v5e-N / v6e-N count chips
    dims: int  # torus dimensions of the topology name
    chip_config: str


GENERATIONS = {
    "v4": Generation("v4", "TPU v4", 32 * GiB, 275e12, True, 3, "megacore"),
    "v5p": Generation("v5p", "TPU v5", int(95.74 * GiB), 459e12, True, 3, "megacore"),
    "v5e": Generation("v5e", "TPU v5 lite", 16 * GiB, 197e12, False, 2, "default"),
    "v6e": Generation("v6e", "TPU v6 lite", 32 * GiB, 918e12, False, 2, "default"),
}
# chips → torus shape (the shapes GKE / queued resources use for these slice sizes)
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # fmt: skip
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it, e.g. "v5p-64"
    generation: Generation
    chips: int
    topology_name: str  # get_topology_desc's, e.g. "v5p:2x4x4"
    chips_per_host_bounds: tuple[int, int, int]

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes

    @property
    def hosts(self) -> int:
        """Processes of a run on this slice (one per host of ``chips_per_host_bounds`` chips)."""
        return max(1, self.chips // math.prod(self.chips_per_host_bounds))


def parse_topology(name: str) -> Topology:
    """``v4-8`` … ``v5p-64`` (TensorCores), ``v5e-8`` … ``v6e-256`` (chips) → the deviceless topology."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise InvalidInputError(
            f"--topology {name!r}: expected <generation>-<size> with generation one of {sorted(GENERATIONS)}, "
            "e.g. v5p-64 (TensorCores, 32 chips), v5e-256 or v6e-64 (chips)"
        )
    gen = GENERATIONS[m.group(1)]
    size = int(m.group(2))
    chips = size // 2 if gen.counts_cores else size
    shapes = _SHAPES_3D if gen.dims == 3 else _SHAPES_2D
    if (gen.counts_cores and size % 2) or chips not in shapes:
        unit = "TensorCores" if gen.counts_cores else "chips"
        sizes = [c * 2 if gen.counts_cores else c for c in shapes]
        raise InvalidInputError(f"--topology {name}: {gen.name} slices come in {sizes} {unit}")
    bounds = (1, 1, 1) if chips == 1 else (2, 4, 1) if (chips == 8 and gen.dims == 2) else (2, 2, 1)
    return Topology(name, gen, chips, f"{gen.name}:{shapes[chips]}", bounds)


@functools.lru_cache(maxsize=None)
def topology_devices(topo: Topology) -> list:
    """The target's TPU devices, on this host, without a TPU (needs libtpu).

    Cached: meshes over two descriptions of one topology compare equal (same ids) but hold different device
    objects, so jit would reuse a trace whose sharding constraints name the other objects and refuse it."""
    import os

    # libtpu takes a process lock on load; a deviceless compile touches no chip, so several may run at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topo.topology_name, chip_config_name=topo.generation.chip_config,
            chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=1,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - no libtpu / wrong libtpu: one clear line
        raise MissingInputError(
            f"cannot build the {topo.name} topology without a TPU ({type(e).__name__}: {str(e)[:200]}); "
            "install libtpu with `pip install -e .[tpu]`"
        ) from None
    devices = list(desc.devices)
    if len(devices) != topo.chips:
        raise AssertionError(f"{topo.topology_name}: {len(devices)} devices, expected {topo.chips}")
    return devices
