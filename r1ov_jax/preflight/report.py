"""The preflight report: per-stage JSON, the printed table, the one-line OOM advice, and the CLI entry."""

from __future__ import annotations

import dataclasses
import json
import sys

import ml_collections

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.preflight.compile import PhaseReport, make_target
from r1ov_jax.preflight.stages import preflight_grpo, preflight_sft
from r1ov_jax.preflight.topology import GiB, Topology, parse_topology
from r1ov_jax.sharding import batch_split_problem


def stage_summary(phases: list[PhaseReport], topo: Topology) -> dict:
    """JSON entry of a stage (GRPO: the peak phase's bytes, FLOPs and times summed over the phases)."""
    peak = max(phases, key=lambda r: r.total)
    fits = all(r.fits for r in phases) and peak.total <= topo.hbm_bytes
    # a phase without a FLOP count (--memory-only) leaves the stage without one
    flops = sum(r.flops_per_chip for r in phases) if all(r.flops_per_chip for r in phases) else 0.0
    model_flops = sum(r.model_flops for r in phases)
    est = None if any(r.est_step_seconds is None for r in phases) else sum(r.est_step_seconds for r in phases)
    return {
        "fits": fits,
        "bytes_per_chip": {
            "arguments": peak.arguments,
            "outputs": peak.outputs,
            "temporaries": peak.temporaries,
            "total": peak.total,
        },  # fmt: skip
        "flops_per_chip": flops,
        "model_flops": model_flops,
        "model_flops_per_chip": model_flops / topo.chips,
        "flops_ratio": flops / (model_flops / topo.chips) if model_flops and flops else None,
        "est_step_seconds": est,
        "est_mfu": (model_flops / topo.chips) / (est * topo.generation.peak_flops) if est else None,
        "peak_phase": peak.name,
    }


def _phase_json(r: PhaseReport, topo: Topology) -> dict:
    out = stage_summary([r], topo)
    out["bytes_per_chip"].update(aliased=r.aliased, code=r.code, resident_outside=r.resident_outside)
    out.update(required_bytes=r.required or None, compile_seconds=round(r.compile_seconds, 1), note=r.note)
    return out


def run(
    cfg: ml_collections.ConfigDict,
    topology: str,
    stage: str = "all",
    devices=None,
    *,
    loop_flops: bool = True,
) -> dict:
    """The preflight report (the ``--json`` document) of ``cfg`` on ``topology``. ``loop_flops=False`` skips
    the extra compiles that count every loop iteration (memory and fits are unaffected; no FLOPs, time or MFU
    are reported)."""
    if stage not in ("sft", "grpo", "all"):
        raise InvalidInputError(f"--stage {stage!r}: choose sft, grpo or all")
    topo = parse_topology(topology)
    target = make_target(cfg, topo, devices)
    target.loop_flops = loop_flops
    mesh = dict(target.mesh.shape)
    report = {
        "topology": topo.name, "chips": topo.chips, "hbm_bytes_per_chip": topo.hbm_bytes,
        "device_kind": topo.generation.device_kind, "peak_flops_per_chip": topo.generation.peak_flops,
        "mesh": mesh, "remat": target.mcfg.remat, "scan_layers": target.mcfg.scan_layers, "attn_impl": target.mcfg.attn_impl,
        "attn_impl_config": cfg.model.attn_impl,
        "params": dataclasses.asdict(target.counts) | {"total": target.counts.total},
        "hosts": topo.hosts, "stages": {}, "distinct_compiled_shapes": {}, "warnings": [],
    }  # fmt: skip
    batch = {"sft": "batch_size", "grpo": "prompt_batch_size"}
    for name, fn in (("sft", preflight_sft), ("grpo", preflight_grpo)):
        if stage not in (name, "all"):
            continue
        # the trainers' start-up check (recipes.check_batch_split) for this slice's processes, before compiling
        what = f"pipeline.{batch[name]}"
        split = batch_split_problem(what, int(cfg.pipeline[batch[name]]), mesh, topo.hosts)
        if split and split[0]:
            raise InvalidInputError(f"{name} cannot run on {topo.name} ({topo.hosts} hosts): {split[1]}")
        if split:
            report["warnings"].append(f"{name}: {split[1]}")
        res = fn(cfg, target)
        report["stages"][name] = stage_summary(res["phases"], topo)
        if name == "sft":
            p = cfg.pipeline
            rows = (
                p.batch_size // (mesh["data"] * mesh["fsdp"])
                if p.batch_size % (mesh["data"] * mesh["fsdp"]) == 0
                else None
            )
            report["stages"][name]["per_chip_rows"] = rows
            report["stages"][name]["grad_accum"] = int(cfg.sft.optim.grad_accum)
            (r,) = res["phases"]
            report["stages"][name].update(compile_seconds=round(r.compile_seconds, 1), note=r.note)
        else:
            for r in res["phases"]:
                report["stages"][f"grpo/{r.name}"] = _phase_json(r, topo)
        report["stages"][name]["phases"] = [r.name for r in res["phases"]]
        report["distinct_compiled_shapes"][name] = res["shapes"]
        if res["warning"]:
            report["warnings"].append(res["warning"])
        report.setdefault("_phases", {})[name] = res["phases"]
    return report


def _gib(n) -> str:
    return f"{n / GiB:.2f}" if n else "-"


def format_report(report: dict, config_name: str = "") -> str:
    topo = parse_topology(report["topology"])
    gen = topo.generation
    p = report["params"]
    lines = [
        f"preflight {config_name} on {topo.name}: {topo.chips} chips {gen.device_kind} ({topo.topology_name}), "
        f"{topo.hbm_bytes / GiB:.2f} GiB HBM and {gen.peak_flops / 1e12:.0f} TFLOP/s bf16 per chip",
        f"model {p['total'] / 1e9:.2f} B params (decoder {p['text'] / 1e9:.2f} B, LM head {p['head'] / 1e9:.2f} B, "
        f"vision {p['vision'] / 1e9:.2f} B); mesh {report['mesh']}; remat {report['remat']}; "
        f"{'scanned' if report.get('scan_layers') else 'unrolled'} layers; attention "
        + report["attn_impl"]
        + (" (attn_impl auto -> pallas on TPU)" if report["attn_impl_config"] == "auto" else ""),
        "",
        f"{'stage':<15}{'args':>8}{'out':>8}{'temp':>8}{'other':>8}{'total':>8}{'HBM':>8}  {'fits':<5}"
        f"{'TFLOP/chip':>11}{'model':>8}{'ratio':>7}{'est s':>9}{'MFU':>7}",
        f"{'':<15}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}{'GiB':>8}  {'':<5}{'compiled':>11}"
        f"{'':>8}{'':>7}{'(XLA)':>9}{'(XLA)':>7}",
    ]
    hbm = _gib(topo.hbm_bytes)

    def row(name, s, other=0, phase=None):
        b = s["bytes_per_chip"]
        fits = "yes" if s["fits"] else "NO"
        ratio = f"{s['flops_ratio']:.2f}" if s["flops_ratio"] else "-"
        est = f"{s['est_step_seconds']:.3g}" if s["est_step_seconds"] else "-"
        mfu = f"{100 * s['est_mfu']:.0f}%" if s["est_mfu"] else "-"
        mf = s["model_flops_per_chip"] / 1e12
        cf = f"{s['flops_per_chip'] / 1e12:.3g}" if s["flops_per_chip"] else "-"
        if phase is not None and not phase.fits:
            return (f"{name:<15}{'':>8}{'':>8}{'':>8}{_gib(other):>8}{_gib(phase.total):>8}{hbm:>8}  {'NO':<5}"
                    f"{'-':>11}{mf:>8.3g}{'-':>7}{'-':>9}{'-':>7}  (compile: out of HBM)")  # fmt: skip
        return (f"{name:<15}{_gib(b['arguments']):>8}{_gib(b['outputs']):>8}{_gib(b['temporaries']):>8}"
                f"{_gib(other):>8}{_gib(b['total']):>8}{hbm:>8}  {fits:<5}{cf:>11}{mf:>8.3g}{ratio:>7}{est:>9}"
                f"{mfu:>7}")  # fmt: skip

    notes = []
    for stage, phases in report.get("_phases", {}).items():
        if stage == "sft":
            lines.append(row("sft", report["stages"]["sft"], phase=phases[0]))
        else:
            for r in phases:
                lines.append(row(f"grpo/{r.name}", report["stages"][f"grpo/{r.name}"], r.resident_outside, r))
                if r.note and r.fits:
                    notes.append(f"grpo/{r.name}: {r.note}")
            s = report["stages"]["grpo"]
            lines.append(row("grpo (step)", s, phase=None))
        for r in phases:
            if not r.fits:
                notes.append(f"{stage}/{r.name}: {r.note}")
    lines.append("")
    lines.append(
        "other = the step's state resident outside this program's arguments (policy, frozen reference copy, "
        "optimizer); total = args + out - donated + temp + code + other; model = analytic TFLOP/chip; est s = "
        "XLA cost model (optimal_seconds); MFU = model FLOPs / (est s x peak)"
    )
    shapes = ", ".join(f"{k}: {v}" for k, v in report["distinct_compiled_shapes"].items())
    lines.append(f"distinct compiled shapes per run: {shapes}")
    lines += notes
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def advice(report: dict) -> str:
    """One line: what does not fit, by how much, and what to change."""
    hbm = report["hbm_bytes_per_chip"]
    worst = []
    for name, phases in report.get("_phases", {}).items():
        for r in phases:
            if not r.fits or r.total > hbm:
                label = name if name == "sft" else f"grpo/{r.name}"
                need = f"at least {r.total / GiB:.2f} GiB" if r.required else f"{r.total / GiB:.2f} GiB"
                worst.append(f"{label} needs {need} per chip")
    return (
        f"does not fit on {report['topology']}: {'; '.join(worst)}, {hbm / GiB:.2f} GiB available. Change "
        f"model.remat (now {report['remat']}; full < dots_no_batch < dots < none in memory, offload moves saved "
        "activations to host), the per-chip batch (pipeline.batch_size / prompt_batch_size with "
        "sft.optim.grad_accum keeping the global batch), pipeline.seq_len (GRPO: max_prompt_len, "
        f"max_prompt_patches, rl.grpo.max_new_tokens) or the mesh (now {report['mesh']}: mesh.fsdp shards "
        "params and optimizer state, mesh.tensor the activations)"
    )


def public_report(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def cli(
    config_path, overrides, topology: str, *, stage: str = "all", json_path: str | None = None,
    loop_flops: bool = True,
) -> int:  # fmt: skip
    """``r1ov preflight``: prints the table, writes ``--json``; a config that does not fit raises one
    ``InvalidInputError`` line (exit 2), and so, before any compile, does a batch the slice's processes cannot
    split over the mesh (`sharding.batch_split_problem`)."""
    from r1ov_jax.config_utils import load_config

    if not config_path:
        raise InvalidInputError("r1ov preflight needs --config FILE")
    cfg = load_config(config_path, overrides)
    report = run(cfg, topology, stage, loop_flops=loop_flops)
    print(format_report(report, config_path))
    sys.stdout.flush()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(public_report(report), f, indent=2)
    if not all(s["fits"] for s in report["stages"].values()):
        raise InvalidInputError(advice(report))
    return 0
