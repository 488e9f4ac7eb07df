"""Image processor speed vs transformers' Qwen2VLImageProcessorPil, measured in the same run.

    python benchmarks/bench_processor.py [--n 32] [--repeats 5] [--seed 0]

Both processors get the same 32 mixed-size RGB PIL images (a quarter already multiples of 28, so no
resize; the rest are resized, some down past max_pixels when --max-pixels is small). Repeats are interleaved
(HF, ours, ours 1 thread, HF, ...) so load from other processes hits all alike; the medians are reported with
their ratios, and the max |diff| of pixel_values between the outputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from r1ov_jax.processing import ImageProcessor


def make_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if i % 4 == 0:  # already on the 28-px grid: no resize in either processor
            h, w = 28 * rng.integers(4, 40, size=2)
        else:
            h, w = rng.integers(60, 1400, size=2)
        # Smooth gradients plus noise, so bicubic resize sees natural-ish content.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w, 1)), (yy * 255 // max(h, 1)), ((xx + yy) % 256)], axis=-1)
        noise = rng.integers(-20, 21, size=(h, w, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-pixels", type=int, default=3136)
    parser.add_argument("--max-pixels", type=int, default=12845056)
    args = parser.parse_args()

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = make_images(args.n, args.seed)
    ours = ImageProcessor(min_pixels=args.min_pixels, max_pixels=args.max_pixels)  # default threads
    ours_1t = ImageProcessor(min_pixels=args.min_pixels, max_pixels=args.max_pixels, num_threads=1)
    hf = Qwen2VLImageProcessorPil(min_pixels=args.min_pixels, max_pixels=args.max_pixels)

    def run_hf():
        return hf(images=images)

    def run_ours():
        return ours(images)

    def run_ours_1t():
        return ours_1t(images)

    ref, out, out_1t = run_hf(), run_ours(), run_ours_1t()  # warm-up, and the outputs compared below
    runs = {"hf": run_hf, "ours": run_ours, "ours_1t": run_ours_1t}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}  # process CPU seconds: less sensitive to other jobs than wall time
    for _ in range(args.repeats):
        for name, fn in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)

    ref_pv = np.asarray(ref["pixel_values"])
    diff = max(float(np.abs(ref_pv - o["pixel_values"]).max()) for o in (out, out_1t))
    grids_equal = all(
        np.array_equal(np.asarray(ref["image_grid_thw"]), o["image_grid_thw"]) for o in (out, out_1t)
    )
    n_patches = out["pixel_values"].shape[0]
    mp = sum(im.width * im.height for im in images) / 1e6
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (default threads = min(8, CPUs)), "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        f"{args.n} images, {mp:.1f} MP in, {n_patches} patches out, "
        f"min/max_pixels {args.min_pixels}/{args.max_pixels}, {args.repeats} interleaved repeats"
    )
    labels = {
        "hf": "HF Qwen2VLImageProcessorPil         ",
        "ours": "r1ov ImageProcessor, default threads",
        "ours_1t": "r1ov ImageProcessor, 1 thread       ",
    }
    for k, label in labels.items():
        print(
            f"{label}: wall median {med[k] * 1e3:7.1f} ms (min {min(wall[k]) * 1e3:7.1f}), "
            f"CPU median {med_cpu[k] * 1e3:7.1f} ms"
        )
    print(
        f"speed-up, wall median: {med['hf'] / med['ours']:.2f}x default threads, "
        f"{med['hf'] / med['ours_1t']:.2f}x 1 thread; wall min: "
        f"{min(wall['hf']) / min(wall['ours_1t']):.2f}x 1 thread; "
        f"CPU time: {med_cpu['hf'] / med_cpu['ours_1t']:.2f}x 1 thread"
    )
    print(f"pixel_values max|diff| = {diff:.3g}; image_grid_thw equal: {grids_equal}")


if __name__ == "__main__":
    main()
