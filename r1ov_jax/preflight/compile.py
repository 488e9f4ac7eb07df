"""One deviceless compile of a phase and what XLA says about it: bytes per chip, FLOPs, step time, or "does not
fit"; the target (topology, mesh, abstract model) the stages share."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import jax
import ml_collections

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.preflight.shapes import ParamCounts, abstract_model, model_config_for_target, param_counts
from r1ov_jax.preflight.topology import GiB, Topology, topology_devices


@dataclasses.dataclass
class PhaseReport:
    name: str
    fits: bool
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    code: int = 0
    resident_outside: int = 0  # bytes of the step's other state that stay on the chip during this phase
    required: int = 0  # what the compiler said it needed when it did not fit
    flops_per_chip: float = 0.0
    model_flops: float = 0.0  # global
    est_step_seconds: float | None = None
    compile_seconds: float = 0.0
    note: str = ""

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    @property
    def total(self) -> int:
        if self.required:
            return self.required + self.resident_outside
        own = self.arguments + self.outputs - self.aliased + self.temporaries + self.code
        return own + self.resident_outside


_OOM = re.compile(r"RESOURCE_EXHAUSTED|exceeds available HBM|[Oo]ut of memory|Ran out of memory", re.S)


def bytes_in(text: str, *labels: str) -> int:
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
             "MIB": 1 << 20, "G": GiB, "GB": GiB, "GIB": GiB, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}  # fmt: skip
    for label in labels:
        m = re.search(label + r"\s*([0-9.]+)\s*([KMGT]?i?B?)(?![A-Za-z])", text, re.I)
        if m:
            return int(float(m.group(1)) * units.get(m.group(2).upper(), 1))
    return 0


def _seconds(value) -> float | None:
    """XLA's ``optimal_seconds``; None when absent or not positive (the cost model gives negative values for
    some programs, e.g. replicated tiny batches)."""
    return float(value) if value is not None and value > 0 else None


def compile_phase(
    name: str, lower_fn, *, default_device=None, compiler_options=None
) -> tuple[PhaseReport, object | None]:
    """Lowers and compiles; an out-of-HBM compile becomes a not-fitting report (other errors propagate)."""
    t0 = time.perf_counter()
    ctx = jax.default_device(default_device) if default_device is not None else contextlib.nullcontext()
    try:
        with ctx:
            compiled = lower_fn().compile(compiler_options=compiler_options)
    except NotImplementedError as e:
        if "cannot be automatically partitioned" not in str(e):
            raise
        raise InvalidInputError(
            f"{name}: a Pallas kernel was called outside shard_map on a multi-chip mesh (XLA cannot partition "
            "it); the model's attention wraps its kernels only inside sharding.activation_sharding — this is a "
            "bug, please report it; --config.model.attn_impl=xla avoids the kernels"
        ) from None
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; anything else is re-raised
        text = str(e)
        if not _OOM.search(text):
            raise
        required = bytes_in(
            text, r"required for [^(]*\(", r"[Uu]sed", r"requires", r"[Rr]equired", r"allocate"
        )
        first = next((ln.strip() for ln in text.splitlines() if _OOM.search(ln)), text.splitlines()[0])
        return PhaseReport(name, False, required=required, compile_seconds=time.perf_counter() - t0,
                           note=first[:300]), None  # fmt: skip
    ma = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else (ca or {})
    rep = PhaseReport(
        name, True, arguments=ma.argument_size_in_bytes, outputs=ma.output_size_in_bytes,
        aliased=ma.alias_size_in_bytes, temporaries=ma.temp_size_in_bytes, code=ma.generated_code_size_in_bytes,
        flops_per_chip=float(ca.get("flops", 0.0)), est_step_seconds=_seconds(ca.get("optimal_seconds")),
        compile_seconds=time.perf_counter() - t0,
    )  # fmt: skip
    return rep, compiled


@dataclasses.dataclass
class Target:
    """Everything the stages share: topology, mesh, resolved model config, abstract model."""

    topo: Topology
    mesh: object
    mcfg: object
    rules: dict
    model: object
    counts: ParamCounts
    default_device: object  # set while lowering Pallas kernels (Mosaic asks it for the chip generation)
    loop_flops: bool = True  # compile again to count every loop iteration (count_flops)

    def ctx(self):
        from r1ov_jax.sharding import activation_sharding

        return activation_sharding(self.mesh, self.rules)


def make_target(cfg: ml_collections.ConfigDict, topo: Topology, devices=None) -> Target:
    from r1ov_jax.sharding import make_mesh, rules_for

    devices = topology_devices(topo) if devices is None else devices
    mc = cfg.get("mesh") or ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    try:
        mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices=devices)
    except InvalidInputError as e:
        raise InvalidInputError(
            f"{e} on {topo.name}: make one mesh axis -1 (fill), e.g. --config.mesh.data=-1"
        ) from None
    from r1ov_jax.train.builders import lora_spec

    mcfg = model_config_for_target(cfg.model)
    model = abstract_model(mcfg, mesh, lora_spec(cfg.model))
    default = devices[0] if mcfg.attn_impl == "pallas" else None
    return Target(topo, mesh, mcfg, rules_for(mcfg, mesh), model, param_counts(model), default)
