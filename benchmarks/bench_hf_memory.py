"""Peak host memory of HF import onto an 8-device CPU mesh, and of export, per parameter byte (issue 4).

A random Qwen2.5-VL-shaped checkpoint of >= 1 GB fp32 is written shard by shard (never whole in memory), then
two fresh processes measure:
  import: ``hf.from_pretrained(path, sharding_fn=...)`` streaming each tensor onto its NamedSharding;
  export: ``hf.save_pretrained`` of that sharded model (gathering one tensor at a time).
Reported: (peak RSS during the step − RSS just before it) / parameter bytes, plus the absolute peak.
On CPU "devices" live in host memory, so the imported model itself counts: the ideal import ratio is 1.0 and
the ideal export ratio (model already resident) is ~0.

    python benchmarks/bench_hf_memory.py [--hidden 1536 --layers 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples RSS every 5 ms in a thread (ru_maxrss cannot be reset between phases)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def config(hidden: int, layers: int):
    from r1ov_jax.models.qwen2_5_vl import Qwen25VLConfig, TextConfig, VisionConfig

    text = TextConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=2,
        mrope_section=(16, 24, 24),
    )
    vision = VisionConfig(
        depth=4,
        hidden_size=512,
        intermediate_size=1368,
        num_heads=8,
        out_hidden_size=hidden,
        fullatt_block_indexes=(3,),
    )
    return Qwen25VLConfig(text=text, vision=vision)


def write_random_checkpoint(cfg, out_dir: str) -> int:
    """Writes HF-layout safetensors shards tensor by tensor; returns the parameter bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    from r1ov_jax.hf.io import abstract_model, flat_params
    from r1ov_jax.hf.mapping import ours_to_hf

    os.makedirs(out_dir, exist_ok=True)
    cfg.save_json(os.path.join(out_dir, "config.json"))
    params = flat_params(abstract_model(cfg))
    rng = np.random.default_rng(0)
    weight_map, shard, size, k, total = {}, {}, 0, 0, 0
    conv = (
        cfg.vision.hidden_size,
        cfg.vision.in_channels,
        cfg.vision.temporal_patch_size,
        cfg.vision.patch_size,
        cfg.vision.patch_size,
    )

    def flush():
        nonlocal shard, size, k
        name = f"model-{k:05d}.safetensors"
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        weight_map.update({t: name for t in shard})
        shard, size, k = {}, 0, k + 1

    for path, var in params.items():
        hf_name, kind = ours_to_hf(path)
        shape = tuple(var.shape)
        hf_shape = conv if kind == "conv" else (shape[::-1] if kind == "linear" else shape)
        shard[hf_name] = rng.standard_normal(hf_shape, dtype=np.float32) * 0.02
        size += shard[hf_name].nbytes
        total += shard[hf_name].nbytes
        if size > 200e6:
            flush()
    if shard:
        flush()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


def child(mode: str, src: str, dst: str) -> None:
    """Runs in a fresh process with 8 fake CPU devices; prints one JSON line."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from r1ov_jax import hf
    from r1ov_jax.sharding import make_mesh

    # FSDP over all 8 devices: on CPU the "devices" live in host memory, so any replication (a data axis > 1)
    # would count the model twice by construction.
    mesh = make_mesh(1, 8, 1)
    jax.block_until_ready(jax.numpy.zeros(8))  # runtime up before the baseline
    before = rss_bytes()
    with PeakRSS() as peak:
        model = hf.from_pretrained(src, mesh=mesh)
        jax.block_until_ready(jax.tree.leaves(hf.io.flat_params(model)["lm_head.kernel"][...]))
    result = {"import_before": before, "import_peak": peak.peak}
    if mode == "both":
        before = rss_bytes()
        with PeakRSS() as peak:
            hf.save_pretrained(model, dst, max_shard_size="200MB")
        result.update(export_before=before, export_peak=peak.peak)
    print("RESULT " + json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"))
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    cfg = config(args.hidden, args.layers)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
        nbytes = write_random_checkpoint(cfg, src)
        out = subprocess.run(
            [sys.executable, __file__, "--child", "both", src, dst],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.split("RESULT ")[-1])
        gb = nbytes / 1e9
        imp = (r["import_peak"] - r["import_before"]) / nbytes
        exp = (r["export_peak"] - r["export_before"]) / nbytes
        print(
            f"parameters: {nbytes / 4 / 1e6:.0f} M fp32 = {gb:.2f} GB; mesh (data, fsdp, tensor) = (1, 8, 1) on 8 "
            "CPU devices"
        )
        print(
            f"import: peak RSS {r['import_peak'] / 1e9:.2f} GB (+{(r['import_peak'] - r['import_before']) / 1e9:.2f}"
            f" GB over the {r['import_before'] / 1e9:.2f} GB baseline) → ratio {imp:.3f} (target ≤ 1.3)"
        )
        print(
            f"export: peak RSS {r['export_peak'] / 1e9:.2f} GB (+{(r['export_peak'] - r['export_before']) / 1e9:.2f}"
            f" GB over the resident model) → ratio {exp:.3f} of the parameter bytes"
        )


if __name__ == "__main__":
    main()
