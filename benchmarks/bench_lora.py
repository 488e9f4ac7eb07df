"""LoRA / QLoRA cost: per-chip memory of the 7B recipes on v5e-8 (deviceless preflight) and CPU step time of the
demo model, each against full fine-tuning measured in the same run.

    python benchmarks/bench_lora.py cpu [--steps 12 --rounds 3]
    python benchmarks/bench_lora.py preflight [--stages sft grpo] [--depths 2 4] [--topology v5e-8]

``cpu``: the demo's model (configs/tiny_cpu.py: hidden 128 x 4 layers, vision tower included) on one SFT batch of
8 rows x 192 tokens with an image per row; jitted train step (loss, gradients, AdamW update) timed for full
fine-tuning, LoRA rank 8 and QLoRA (int8, nf4) on the default decoder targets, variants in alternation over
``--rounds`` so that load drift hits all alike; medians after a compile step; ratio vs full fine-tuning.

``preflight``: compiles the 7B recipes (configs/qwen2_5_vl_7b_lora_sft.py / _grpo.py, and the same shapes,
mesh and batch with the adapters off = full fine-tuning) at full depth with ``model.scan_layers`` (a few minutes
per program on 2 cores; memory only, no FLOP-counting compiles). ``--depths D0 D1`` instead compiles unrolled
models of D0 and D1 decoder layers and extrapolates each byte count linearly to the 7B's 28 (per-layer
parameters, optimizer state and remat'd block inputs are each linear in depth), for checking the scan.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name -> model.lora overrides
    "full FT": {},
    "LoRA r8": {"rank": 8},
    "QLoRA int8": {"rank": 8, "base_qtype": "int8"},
    "QLoRA nf4": {"rank": 8, "base_qtype": "nf4"},
}
PREFLIGHT_VARIANTS = {  # the 7B LoRA recipes use rank 64
    "full FT": None,
    "LoRA r64": {},
    "QLoRA nf4 r64": {"base_qtype": "nf4"},
}
LAYERS_7B = 28


# ----------------------------------------------------------------------------------------------- CPU step
def demo_batch(model, rows: int = 8, length: int = 192):
    cfg = model.cfg
    rng = np.random.default_rng(0)
    merge = cfg.vision.spatial_merge_size
    grid = np.array([[1, 4 * merge, 4 * merge]] * rows)
    n_img = 16  # merged tokens per image
    ids = rng.integers(1, 200, (rows, length))
    ids[:, 4] = cfg.vision_start_token_id
    ids[:, 5 : 5 + n_img] = cfg.image_token_id
    ids[:, 5 + n_img] = cfg.vision_end_token_id
    pixels = rng.normal(size=(rows * n_img * merge * merge, cfg.vision.patch_dim)).astype(np.float32)
    inputs = model.prepare_inputs(ids, None, pixels, grid)
    # the loss covers the second half of every row
    loss_mask = np.broadcast_to(np.arange(length) > length // 2, ids.shape).astype(np.float32)
    return {**inputs, "loss_mask": loss_mask}


def cpu_bench(steps: int, rounds: int) -> None:
    import jax
    from r1ov_configs.tiny_cpu import get_config

    from r1ov_jax.models import lora
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL
    from r1ov_jax.train import sft
    from r1ov_jax.train.builders import model_config
    from r1ov_jax.train.optim import make_nnx_optimizer

    cfg = get_config()
    mcfg = model_config(cfg.model)
    batch = demo_batch(Qwen25VL(mcfg, rngs=nnx.Rngs(0)))
    step = sft.train_step  # the trainer's jitted step; it donates the model, so each variant builds its own
    times = {name: [] for name in VARIANTS}
    trainable = {}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for name, over in VARIANTS.items():
            model = Qwen25VL(mcfg, rngs=nnx.Rngs(0))
            model = lora.apply_lora(model, lora.LoraSpec(**over)) if over else model
            trainable[name] = sum(x.size for x in jax.tree.leaves(nnx.state(model, lora.trainable(model))))
            opt = make_nnx_optimizer(model, cfg.sft.optim, steps + 1)
            jax.block_until_ready(step(model, opt, batch))  # compile
            for _ in range(steps):
                t0 = time.perf_counter()
                jax.block_until_ready(step(model, opt, batch))
                times[name].append(time.perf_counter() - t0)
    load1 = os.getloadavg()[0]
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"SFT train step, demo model (configs/tiny_cpu.py), {batch['input_ids'].shape[0]} rows x "
          f"{batch['input_ids'].shape[1]} tokens + 1 image each; CPU {os.cpu_count()} cores, load average "
          f"{load0:.1f} -> {load1:.1f}; medians of {rounds} x {steps} steps")  # fmt: skip
    print("| variant | trainable params | step ms | vs full FT |\n|---|---|---|---|")
    for n in VARIANTS:
        print(f"| {n} | {trainable[n]:,} | {1e3 * med[n]:.1f} | {med[n] / med['full FT']:.2f} |")


# ---------------------------------------------------------------------------------------------- preflight
def recipe(stage: str, variant, depth: int | None = None):
    from r1ov_jax.config_utils import load_config

    cfg = load_config(os.path.join(ROOT, "configs", f"qwen2_5_vl_7b_lora_{stage}.py"))
    if variant is None:
        cfg.model.lora.rank = 0  # the same shapes, mesh and batch as full fine-tuning
    else:
        cfg.model.lora.update(variant)
    if depth is not None:
        cfg.model.text.num_hidden_layers = depth
        cfg.model.scan_layers = False
    return cfg


def preflight_full_depth(stages, topology: str) -> None:
    from r1ov_jax import preflight

    print(f"7B per-chip bytes on {topology}, full depth, scanned layers (GiB; 'temp' = XLA temporaries, 'other' "
          "= state resident outside the program; GRPO: the phase that peaks)")  # fmt: skip
    print("| stage (peak phase) | variant | args | out | temp | other | total | HBM | fits | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for stage in stages:
        for name, variant in PREFLIGHT_VARIANTS.items():
            t0 = time.perf_counter()
            report = preflight.run(recipe(stage, variant), topology, stage, loop_flops=False)
            secs = time.perf_counter() - t0
            phases = [k for k in report["stages"] if k.startswith(stage + "/")] or [stage]
            peak = max(phases, key=lambda k: report["stages"][k]["bytes_per_chip"]["total"])
            b = {k: v / preflight.GiB for k, v in report["stages"][peak]["bytes_per_chip"].items() if v}
            fits = report["stages"][stage]["fits"]
            print(f"| {peak} | {name} | {b.get('arguments', 0):.2f} | {b.get('outputs', 0):.2f} | "
                  f"{b.get('temporaries', 0):.2f} | {b.get('resident_outside', 0):.2f} | {b.get('total', 0):.2f} | "
                  f"{report['hbm_bytes_per_chip'] / preflight.GiB:.0f} | {'yes' if fits else 'NO'} | {secs:.0f} |",
                  flush=True)  # fmt: skip


def preflight_bench(stages, depths, topology: str) -> None:
    from r1ov_jax import preflight

    d0, d1 = depths
    print(f"7B per-chip bytes on {topology}, compiled at {d0} and {d1} decoder layers, extrapolated to "
          f"{LAYERS_7B} (GiB; 'temp' = XLA temporaries, 'other' = state resident outside the program)")  # fmt: skip
    print(
        "| stage (peak phase) | variant | args | temp | other | total | HBM | fits (extrapolated) | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for stage in stages:
        for name, variant in PREFLIGHT_VARIANTS.items():
            by_depth, secs = {}, 0.0
            for d in (d0, d1):
                t0 = time.perf_counter()
                report = preflight.run(recipe(stage, variant, d), topology, stage)
                secs += time.perf_counter() - t0
                phases = [k for k in report["stages"] if k.startswith(stage + "/")] or [stage]
                by_depth[d] = {k: report["stages"][k]["bytes_per_chip"] for k in phases}
            hbm = report["hbm_bytes_per_chip"]

            def at_full(phase, key):
                a, b = by_depth[d0][phase].get(key, 0), by_depth[d1][phase].get(key, 0)
                return a + (b - a) * (LAYERS_7B - d0) / (d1 - d0)

            peak = max(by_depth[d1], key=lambda ph: at_full(ph, "total"))  # GRPO: the phase that peaks
            keys = ("arguments", "temporaries", "resident_outside", "total")
            g = {k: at_full(peak, k) / preflight.GiB for k in keys}
            print(f"| {peak} | {name} | {g['arguments']:.2f} | {g['temporaries']:.2f} | "
                  f"{g['resident_outside']:.2f} | {g['total']:.2f} | {hbm / preflight.GiB:.0f} | "
                  f"{'yes' if g['total'] * preflight.GiB <= hbm else 'NO'} | {secs:.0f} |", flush=True)  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--steps", type=int, default=12)
    c.add_argument("--rounds", type=int, default=3)
    p = sub.add_parser("preflight")
    p.add_argument("--stages", nargs="*", default=["sft", "grpo"])
    p.add_argument("--depths", nargs=2, type=int, default=None, help="unrolled depths to extrapolate from")
    p.add_argument("--topology", default="v5e-8")
    args = ap.parse_args(argv)
    if args.what == "cpu":
        cpu_bench(args.steps, args.rounds)
    elif args.depths:
        preflight_bench(args.stages, args.depths, args.topology)
    else:
        preflight_full_depth(args.stages, args.topology)


if __name__ == "__main__":
    sys.exit(main())
