"""Benchmark the Pallas attention kernels against jax.nn.dot_product_attention (cuDNN and XLA), same run.

    python benchmarks/bench_attention.py            # GPU: causal GQA fwd+bwd at 1k..16k + vision varlen
    python benchmarks/bench_attention.py --smoke    # CPU: tiny shapes, interpret mode (checks the script only)

Causal text attention uses the Qwen2.5-VL-7B decoder shape (28 query heads, 4 kv heads, head dim 128, bf16)
with batch * seq = 16k tokens. The vision case is the window attention of the vision tower: 4096 patches,
16 heads, head dim 80, windows of 64 patches, varlen kernel vs XLA with the dense [t, t] segment mask.

TFLOP/s count only visible entries (causal: half the square; varlen: sum of window_len^2), fwd+bwd =
3.5x the forward's 4 * b * h * d * visible flops (FlashAttention-2 accounting). Ratios are ours / baseline
measured here, on this device, in this run. Prints one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from r1ov_kernels.flash_attention import flash_attention
from r1ov_kernels.varlen_attention import segment_ids_from_cu_seqlens, varlen_attention

from r1ov_jax.layers.attention import make_mask, xla_attention


def fwd_bwd(attn):
    """(q, k, v, do) -> (dq, dk, dv): one forward and one backward pass."""
    return jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))


def time_it(fn, args, iters: int, warmup: int) -> float:
    """Median seconds per call (compiled; first call excluded)."""
    jax.block_until_ready(fn(*args))
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name, attn, args, flops, iters, warmup):
    try:
        sec = time_it(fwd_bwd(attn), args, iters, warmup)
    except Exception as e:  # noqa: BLE001  (OOM or unsupported config: report it, keep going)
        return {"impl": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return {"impl": name, "ms": round(sec * 1e3, 3), "tflops": float(f"{flops / sec / 1e12:.4g}")}


def causal_suite(args, rng, interpret):
    rows = []
    hq, hkv, d = args.heads, args.kv_heads, args.head_dim
    for t in args.seqs:
        b = max(1, args.tokens // t)
        q, k, v, do = (
            jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.bfloat16) for h in (hq, hkv, hkv, hq)
        )
        flops = 3.5 * 4 * b * hq * d * (t * (t + 1) / 2)
        impls = {"pallas": lambda q, k, v: flash_attention(q, k, v, causal=True, interpret=interpret)}
        if jax.default_backend() == "gpu":
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation="cudnn"
            )
        impls["xla"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="xla"
        )
        res = [measure(n, f, (q, k, v, do), flops, args.iters, args.warmup) for n, f in impls.items()]
        row = {"case": "causal", "b": b, "t": t, "hq": hq, "hkv": hkv, "d": d, "results": res}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def vision_suite(args, rng, interpret):
    t, h, d, w = args.vision_patches, args.vision_heads, args.vision_head_dim, args.window
    q, k, v, do = (jnp.asarray(rng.standard_normal((t, h, d)), jnp.bfloat16) for _ in range(4))
    cu = jnp.asarray(np.r_[np.arange(0, t, w), t], jnp.int32)
    lens = np.diff(np.asarray(cu))
    flops = 3.5 * 4 * h * d * float(np.sum(lens.astype(np.float64) ** 2))
    seg = segment_ids_from_cu_seqlens(cu, t)[None]
    mask = make_mask(seg, seg, causal=False)

    def dense(q, k, v):
        return xla_attention(q[None], k[None], v[None], mask, scale=d**-0.5)[0]

    def by_segments(q, k, v):
        return flash_attention(q[None], k[None], v[None], seg, seg, interpret=interpret)[0]

    impls = {
        "varlen": lambda q, k, v: varlen_attention(q, k, v, cu, max_seqlen=w, interpret=interpret),
        "flash_segments": by_segments,
        "xla_dense_mask": dense,
    }
    res = [measure(n, f, (q, k, v, do), flops, args.iters, args.warmup) for n, f in impls.items()]
    row = {"case": "vision_varlen", "t": t, "h": h, "d": d, "window": w, "results": res}
    print(json.dumps(row), flush=True)
    return [row]


def ratio(res, ours, base):
    by = {r["impl"]: r for r in res}
    if "ms" not in by.get(ours, {}) or "ms" not in by.get(base, {}):
        return "n/a"
    return f"{by[base]['ms'] / by[ours]['ms']:.2f}x"


def table(rows, device):
    print(f"\n### {device} ({jax.default_backend()}), fwd+bwd, bf16\n")
    print("| case | shape | impl | ms | TFLOP/s |\n|---|---|---|---|---|")
    for row in rows:
        shape = (
            f"b={row['b']} t={row['t']} hq={row['hq']} hkv={row['hkv']} d={row['d']}"
            if row["case"] == "causal"
            else f"t={row['t']} h={row['h']} d={row['d']} window={row['window']}"
        )
        for r in row["results"]:
            cells = (r["ms"], r["tflops"]) if "ms" in r else (r["error"], "")
            print(f"| {row['case']} | {shape} | {r['impl']} | {cells[0]} | {cells[1]} |")
    print("\n| case | t | ours vs cuDNN | ours vs XLA |\n|---|---|---|---|")
    for row in rows:
        ours = "pallas" if row["case"] == "causal" else "varlen"
        base = "xla" if row["case"] == "causal" else "xla_dense_mask"
        print(
            f"| {row['case']} | {row['t']} | {ratio(row['results'], ours, 'cudnn')} | "
            f"{ratio(row['results'], ours, base)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--smoke", action="store_true", help="tiny shapes; the kernels run in interpret mode on CPU"
    )
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    ap.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seq")
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vision-patches", type=int, default=4096)
    ap.add_argument("--vision-heads", type=int, default=16)
    ap.add_argument("--vision-head-dim", type=int, default=80)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if args.smoke:
        args.seqs, args.tokens, args.heads, args.kv_heads, args.head_dim = [64, 128], 128, 4, 2, 32
        args.vision_patches, args.vision_heads, args.vision_head_dim, args.window = 256, 2, 16, 64
        args.iters, args.warmup = 2, 0
    interpret = jax.default_backend() == "cpu"
    device = jax.devices()[0].device_kind
    print(json.dumps({"device": device, "backend": jax.default_backend(), "interpret": interpret}))
    rng = np.random.default_rng(0)
    rows = causal_suite(args, rng, interpret) + vision_suite(args, rng, interpret)
    table(rows, device)


if __name__ == "__main__":
    main()
