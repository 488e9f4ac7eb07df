"""Benchmark `r1ov synth`: seconds for N mixed items (all generators) with W workers, vs 1 worker in the same run.

    python benchmarks/bench_synth.py --num 2000 --workers 2

Prints one JSON line per run and the speed-up of W workers over 1 worker measured here (same machine, same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

from r1ov_jax.data.synth import synthesize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-num", type=int, default=500, help="items for the 1-worker baseline (0: skip)")
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    with tempfile.TemporaryDirectory() as d:
        rows = []
        if args.baseline_num:
            rep = synthesize(os.path.join(d, "w1"), args.baseline_num, workers=1, progress=False)
            rows.append(("1 worker", rep))
        rep = synthesize(os.path.join(d, f"w{args.workers}"), args.num, workers=args.workers, progress=False)
        rows.append((f"{args.workers} workers", rep))
        for name, r in rows:
            print(
                json.dumps(
                    {
                        "run": name,
                        "machine": machine,
                        "num": r["num_requested"],
                        "written": r["num_written"],
                        "seconds": r["seconds"],
                        "items_per_second": r["items_per_second"],
                        "rejected": r["rejected"],
                    }
                )
            )
        if len(rows) == 2:
            print(
                f"speed-up {args.workers} workers vs 1: "
                f"{rows[1][1]['items_per_second'] / rows[0][1]['items_per_second']:.2f}x (items/s ratio)"
            )
        size = sum(
            os.path.getsize(os.path.join(d, f"w{args.workers}", f))
            for f in os.listdir(os.path.join(d, f"w{args.workers}"))
        )
        print(f"output size for {args.num} items: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
