"""Preflight table: the paper configs (3B, 7B × SFT, GRPO) compiled deviceless for TPU topologies.

    python benchmarks/bench_preflight.py [--sizes 3b 7b] [--stages sft grpo] [--topologies v5p-8 v5p-64 ...]
        [--json OUT] [--memory-only] [--as-shipped] [--config.a.b=v ...]

Per row: per-chip GiB (XLA memory analysis; GRPO: the peak phase incl. the state resident outside it), fits,
compiled / analytic FLOPs per chip, XLA's cost-model step time and the MFU it implies at the chip's peak bf16
FLOP/s. Needs libtpu (``pip install -e .[tpu]``), no TPU. Every row is one ``r1ov_jax.preflight.run`` (what
``r1ov preflight`` runs); a row that does not fit is printed as such, not raised. ``--memory-only`` skips the
two extra compiles per program that count scanned blocks (FLOP / time / MFU columns then "-").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from r1ov_jax import preflight
from r1ov_jax.cli import _split_overrides
from r1ov_jax.config_utils import load_config
from r1ov_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGIES = ("v5p-8", "v5p-64", "v5e-256", "v6e-64")

# Per-topology launch recipes for the paper configs, keeping the paper's global batch (SFT: rows x grad_accum
# = 128; GRPO: 16 prompts x G 8 = 128 completions) where the slice allows. The shipped configs are the v5p-64
# recipe. Batch rows shard over (data, fsdp), which must divide them (a multi-host run refuses a batch it cannot
# split): on 256 chips 128 SFT rows need fsdp 128 x tensor 2, and 16 GRPO prompts at most 16 batch shards, so
# the rest of the chips go to the tensor axis (it must divide the attention heads: 28 for the 7B, so <= 4);
# v5e-256 GRPO therefore draws 64 prompts a step (4x the paper's; steps 157 for the same 10k prompts).
# launch/README.md prints these next to the preflight table.
RECIPES = {
    ("sft", "v5p-8"): ["pipeline.batch_size=4", "sft.optim.grad_accum=32"],
    ("sft", "v5e-256"): [
        "mesh.fsdp=128",
        "mesh.tensor=2",
        "pipeline.batch_size=128",
        "sft.optim.grad_accum=1",
    ],
    ("sft", "v6e-64"): ["pipeline.batch_size=64", "sft.optim.grad_accum=2"],
    ("grpo", "v5p-8"): ["mesh.tensor=1"],
    ("grpo", "v5e-256"): [
        "pipeline.prompt_batch_size=64",
        "rl.train.steps=157",
        "mesh.fsdp=64",
        "mesh.tensor=4",
    ],
    ("grpo", "v6e-64"): ["mesh.tensor=4"],
}


def row(size, stage, topo, report):
    s = report["stages"][stage]
    b = s["bytes_per_chip"]["total"] / preflight.GiB
    ratio = f"{s['flops_ratio']:.2f}" if s.get("flops_ratio") else "-"
    est = f"{s['est_step_seconds']:.3g}" if s.get("est_step_seconds") else "-"
    mfu = f"{100 * s['est_mfu']:.0f}%" if s.get("est_mfu") else "-"
    return (f"| {size} | {stage} | {topo} | {report['mesh']['data']}x{report['mesh']['fsdp']}x"
            f"{report['mesh']['tensor']} | {b:.1f} / {report['hbm_bytes_per_chip'] / preflight.GiB:.1f} | "
            f"{'yes' if s['fits'] else 'NO'} | {ratio} | {est} | {mfu} |")  # fmt: skip


def main(argv=None):
    argv, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", default=["3b", "7b"])
    ap.add_argument("--stages", nargs="*", default=["sft", "grpo"])
    ap.add_argument("--topologies", nargs="*", default=list(TOPOLOGIES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--as-shipped", action="store_true", help="no per-topology recipe overrides (RECIPES)")
    args = ap.parse_args(argv)
    print("| model | stage | topology | mesh d x f x t | GiB/chip (used / HBM) | fits | compiled/analytic FLOPs "
          "| est. step s (XLA) | est. MFU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in args.sizes:
        for stage in args.stages:
            path = os.path.join(ROOT, "configs", f"qwen2_5_vl_{size}_{stage}.py")
            for topo in args.topologies:
                t0 = time.perf_counter()
                try:
                    recipe = [] if args.as_shipped else RECIPES.get((stage, topo), [])
                    cfg = load_config(path, recipe + overrides)
                    report = preflight.run(cfg, topo, stage, loop_flops=not args.memory_only)
                except UserError as e:
                    print(f"| {size} | {stage} | {topo} | error: {e} |||||||", flush=True)
                    continue
                print(
                    row(size, stage, topo, report), f"<!-- {time.perf_counter() - t0:.0f} s -->", flush=True
                )
                if recipe:
                    print(f"<!-- {topo} {stage} recipe: {' '.join('--config.' + o for o in recipe)} -->")
                results.append(
                    {"size": size, "overrides": recipe + overrides, **preflight.public_report(report)}
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
