"""``r1ov serve`` throughput and latency at 1, 8 and 32 concurrent clients vs sequential generation (issue 16).

Model: a random-init model of the CPU demo's size (``configs/tiny_cpu.py``: text 128 x 4 layers, vision 4
blocks; ``r1ov_jax.testing.demo_model``). Each request: one 90x120 image (24 image tokens) + a question, greedy,
``--new`` tokens (the random model never draws EOS, so every request decodes all of them).

Baseline: the same requests one at a time through ``answer_prompts`` in this process, i.e. what ``r1ov generate``
runs per call minus process start and compile (warmed up first; all prompts have one shape, so it never
recompiles). The server runs as its own process (``r1ov serve --max-batch B``, once per B in ``--max-batch``),
warmed up by two untimed rounds at every concurrency level first (so the row buckets the timed runs use are
compiled; the number compiled during the timed runs is printed); clients are asyncio tasks over one ``httpx.AsyncClient`` in this process, each sending its
next request when the previous one returns. Client, server and baseline share the machine's cores: the load
average is printed before and after. Optionally (``--cli``) one ``r1ov generate`` process is timed too.

    python benchmarks/bench_serve.py [--new 128 --requests-per-client 4 --max-batch 8,32 --cli]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from r1ov_jax.testing.demo_model import write_demo_hf_dir  # noqa: E402

QUESTION = "How many objects are in the image? Answer with a number."
CONCURRENCY = (1, 8, 32)


def images(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        pixels = np.random.default_rng(100 + i).integers(0, 255, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def percentiles(latencies: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(latencies), [50, 99])
    return float(p50), float(p99)


def sequential(hf_dir: str, imgs: list[bytes], new: int) -> tuple[float, list[float]]:
    from r1ov_jax import runs
    from r1ov_jax.rollout.chat import answer_prompts

    loaded = runs.load(hf_dir, require_tokenizer=True)

    def one(img):
        answer_prompts(
            loaded.model, loaded.tokenizer, loaded.image_processor, [([img], QUESTION)], max_new_tokens=new
        )

    one(imgs[0])  # compile
    latencies, start = [], time.perf_counter()
    for img in imgs:
        t = time.perf_counter()
        one(img)
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies


def body(img: bytes, new: int) -> dict:
    url = "data:image/png;base64," + base64.b64encode(img).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": new,
    }


async def load_test(url: str, imgs: list[bytes], clients: int, per_client: int, new: int):
    latencies = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:

        async def client(c: int):
            for k in range(per_client):
                t = time.perf_counter()
                r = await http.post(url, json=body(imgs[(c * per_client + k) % len(imgs)], new))
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return time.perf_counter() - start, latencies


def start_server(hf_dir: str, max_batch: int, new: int, log) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "r1ov_jax.cli", "serve", "--model", hf_dir, "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--max-new-tokens", str(new), "--served-model-name", "demo"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    raise RuntimeError("r1ov serve did not start; see its log")


def serve(hf_dir: str, imgs: list[bytes], max_batch: int, args, seq_rps: float, log) -> None:
    proc, base = start_server(hf_dir, max_batch, args.new, log)
    try:
        print(f"\n`r1ov serve --max-batch {max_batch}`\n")
        print("| clients | requests | req/s | x sequential | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
        url = f"{base}/v1/chat/completions"
        for clients in CONCURRENCY * 2:  # untimed: compiles the row buckets the timed runs use
            asyncio.run(load_test(url, imgs, clients, args.requests_per_client, args.new))
        warm = httpx.get(f"{base}/metrics").json()["compiles"]
        for clients in CONCURRENCY:
            n = clients * args.requests_per_client
            total, lat = asyncio.run(load_test(url, imgs, clients, args.requests_per_client, args.new))
            p50, p99 = percentiles(lat)
            rps = n / total
            print(
                f"| {clients} | {n} | {rps:.2f} | {rps / seq_rps:.2f} | {p50 * 1e3:.0f} | {p99 * 1e3:.0f} |"
            )
        m = httpx.get(f"{base}/metrics").json()
        print(
            f"\nserver (warm-up included): {m['batches']} batches, rows per batch {m['batch_rows']}, "
            f"compiles {m['compiles']} ({m['compiles'] - warm} during the timed runs), "
            f"queue wait p50 {m['queue_wait_s']['p50'] * 1e3:.0f} ms, sampler call p50 "
            f"{m['sampler_s']['p50'] * 1e3:.0f} ms (mean {m['sampler_s']['mean'] * 1e3:.0f} ms)"
        )
    finally:
        proc.terminate()
        proc.wait(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=128, help="max_tokens per request")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--sequential", type=int, default=24, help="requests in the sequential baseline")
    ap.add_argument("--max-batch", default="8,32", help="server --max-batch values, one server each")
    ap.add_argument("--cli", action="store_true", help="also time one `r1ov generate` process")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} CPUs")
    tmp = tempfile.mkdtemp()
    hf_dir = write_demo_hf_dir(tmp)
    imgs = images(32)

    seq_s, seq_lat = sequential(hf_dir, imgs[: args.sequential], args.new)
    seq_rps = len(seq_lat) / seq_s
    p50, p99 = percentiles(seq_lat)
    print(f"\nsequential answer_prompts: {seq_rps:.2f} req/s, p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
    if args.cli:
        with open(os.path.join(tmp, "x.png"), "wb") as f:
            f.write(imgs[0])
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "r1ov_jax.cli", "generate", "--model", hf_dir, "--image",
             os.path.join(tmp, "x.png"), "--prompt", QUESTION, "--max-new-tokens", str(args.new)],
            check=True, capture_output=True,
        )  # fmt: skip
        print(
            f"one `r1ov generate` process (start + load + compile + generate): {time.perf_counter() - t:.1f} s"
        )

    for max_batch in [int(b) for b in args.max_batch.split(",")]:
        with open(os.path.join(tmp, f"server{max_batch}.log"), "w") as log:
            serve(hf_dir, imgs, max_batch, args, seq_rps, log)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
