"""Examples/s of the Grain SFT pipeline (decode → image processor → template → tokenize → pack → batch) with 448-px
images, W worker processes vs 0 workers, measured in the same run.

    python benchmarks/bench_pipeline.py [--workers 2] [--examples 300] [--repeats 2]
    python benchmarks/bench_pipeline.py --train-steps 20   # also: data-wait share of tiny-model SFT steps

Data: `synthesize` makes --num mixed records; every image is resized to 448x448 (PNG) so each one becomes 1024
patches / 256 image tokens with no further resize. Tokenizer: the tiny test BPE (the real Qwen tokenizer is not
on this machine; tokenization is a small part of the cost). Runs are interleaved (0 workers, W workers, 0, W, ...)
so load from other processes hits both alike; the first batch of each run (worker start-up, warm caches) is not
timed. The printed figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time

from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from r1ov_jax.data.pipeline import default_pipeline_config, sft_dataset
from r1ov_jax.data.record import Record, read_records
from r1ov_jax.data.synth import synthesize
from r1ov_jax.processing.tokenizer import make_test_tokenizer


def make_448_shard(out_dir: str, num: int) -> str:
    synth_dir = os.path.join(out_dir, "synth")
    synthesize(synth_dir, num, progress=False, seed=0)
    path = os.path.join(out_dir, "bench448.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for rec in read_records(synth_dir):
        images = []
        for data in rec.images:
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC).save(
                buf, "PNG"
            )
            images.append(buf.getvalue())
        writer.write(Record(**{**rec.to_dict(), "images": images}).to_bytes())
    writer.close()
    return path


def pipeline_config(args, workers: int, read_threads: int):
    cfg = default_pipeline_config()
    cfg.update(
        seq_len=args.seq_len, batch_size=args.batch_size, max_patches=args.max_patches, min_pixels=3136,
        max_pixels=448 * 448, worker_count=workers, read_threads=read_threads, shuffle=True, num_epochs=None,
        window_size=args.window_size,
    )  # fmt: skip
    return cfg


def measure(path, tok, cfg, examples: int) -> dict:
    start_up = time.perf_counter()
    it = iter(sft_dataset([path], tok, cfg))
    try:
        next(it)  # warm-up: worker start-up and first fill, not timed
        first = time.perf_counter() - start_up
        n, batches, tokens, start = 0, 0, 0, time.perf_counter()
        while n < examples:
            batch = next(it)
            n += int(batch["segment_ids"].max(axis=1).sum())
            tokens += int((batch["segment_ids"] > 0).sum())
            batches += 1
        seconds = time.perf_counter() - start
    finally:
        if hasattr(it, "close"):
            it.close()
    return {
        "examples": n,
        "batches": batches,
        "seconds": round(seconds, 3),
        "examples_per_s": round(n / seconds, 2),
        "batches_per_s": round(batches / seconds, 3),
        "fill": round(tokens / (batches * cfg.batch_size * cfg.seq_len), 3),
        "first_batch_s": round(first, 2),
    }


def data_wait_share(path, tok, args, workers: int) -> dict:
    """Tiny-model SFT steps on pipeline batches: share of wall time the loop spends in next(batch)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from r1ov_jax.models.qwen2_5_vl import Qwen25VL
    from r1ov_jax.models.qwen2_5_vl.config import tiny
    from r1ov_jax.train.optim import default_optim_config, make_nnx_optimizer
    from r1ov_jax.train.sft import train_step

    model = Qwen25VL(
        tiny(vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
             vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    optimizer = make_nnx_optimizer(model, default_optim_config(), args.train_steps + 1)
    cfg = pipeline_config(args, workers, 1)
    # A tiny-CPU-run shape (dense attention masks of the CPU path grow with patches²; 448-px batches of 12288
    # patches need > 20 GB here): images at most --train-max-pixels, the tiny model's 56-px vision windows.
    cfg.update(
        max_pixels=args.train_max_pixels, max_patches=args.train_max_patches, seq_len=args.train_seq_len,
        window_size=model.cfg.vision.window_size,
    )  # fmt: skip
    it = iter(sft_dataset([path], tok, cfg))

    def to_device(b):
        return jax.tree.map(jnp.asarray, b)

    try:
        jax.block_until_ready(train_step(model, optimizer, to_device(next(it))))  # compile, not timed
        wait, start = 0.0, time.perf_counter()
        for _ in range(args.train_steps):
            t = time.perf_counter()
            batch = to_device(next(it))
            wait += time.perf_counter() - t
            jax.block_until_ready(train_step(model, optimizer, batch))
        total = time.perf_counter() - start
    finally:
        if hasattr(it, "close"):
            it.close()
    return {
        "tiny_sft_workers": workers,
        "batch": f"{cfg.batch_size}x{cfg.seq_len} tokens, {cfg.max_patches} patches, max_pixels {cfg.max_pixels}",
        "steps": args.train_steps,
        "step_s": round(total / args.train_steps, 3),
        "data_wait_share": round(wait / total, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200, help="records in the benchmark shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--examples", type=int, default=300, help="examples timed per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-patches", type=int, default=12288)
    ap.add_argument("--window-size", type=int, default=112)
    ap.add_argument(
        "--train-steps", type=int, default=0, help="also measure the data-wait share of SFT steps"
    )
    ap.add_argument("--train-max-pixels", type=int, default=224 * 224)
    ap.add_argument("--train-max-patches", type=int, default=2048)
    ap.add_argument("--train-seq-len", type=int, default=1024)
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    with tempfile.TemporaryDirectory() as d:
        path = make_448_shard(d, args.num)
        tok = make_test_tokenizer(os.path.join(d, "tok"))
        runs = {
            "0 workers (1 read thread)": (0, 1),
            f"{args.workers} workers (1 read thread each)": (args.workers, 1),
        }
        results = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (workers, threads) in runs.items():
                r = measure(path, tok, pipeline_config(args, workers, threads), args.examples)
                results[name].append(r)
                print(json.dumps({"run": name, **r}))
        print(f"machine: {machine}; load average at end {os.getloadavg()[0]:.1f}")
        med = {name: statistics.median(r["examples_per_s"] for r in rs) for name, rs in results.items()}
        for name, v in med.items():
            print(f"{name}: median {v:.1f} examples/s")
        base, multi = list(med.values())
        print(f"{args.workers} workers vs 0 workers: {multi / base:.2f}x examples/s")
        if args.train_steps:
            for workers in (0, args.workers):
                print(json.dumps(data_wait_share(path, tok, args, workers)))


if __name__ == "__main__":
    main()
