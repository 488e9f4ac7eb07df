"""LM-head loss memory: full-logits cross-entropy (today's ``sft_loss`` path) vs chunked ``token_logprobs``.

For each shape, compiles ``jax.value_and_grad`` of the mean token NLL w.r.t. (hidden, head weight) and prints
XLA's compiled temp bytes (CPU ``memory_analysis``, per device), and for the small shape also the median wall
time. Ratios are against the plain baseline measured in the same run. Shapes:

* ``small``: b=1, T=1024, H=512, V=32768, fp32 (compiled and timed);
* ``logits-bound``: b=2, T=2048, H=256, V=32768, fp32 (the test's shape: logits >> weight; compile only);
* ``7b``: b=1, T=8192, H=3584, V=151936, bf16 compute with fp32 params (Qwen2.5-VL-7B's head; compile only);
* ``7b-sharded``: b=4 over fsdp=4, vocab over tensor=2 (8 CPU devices), logical constraints on (compile only).

    python benchmarks/bench_loss_memory.py [--repeats 3] [--skip-7b]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from r1ov_jax.sharding.rules import DEFAULT_RULES, activation_sharding  # noqa: E402
from r1ov_jax.train.losses import token_logprobs  # noqa: E402

GiB = 2**30


def plain_nll(dtype):
    """What ``sft_loss`` does today: logits in ``dtype`` (tied head), cast to fp32, optax CE."""

    def loss(h, w, y):
        logits = jnp.dot(h.astype(dtype), w.astype(dtype).T).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def chunked_nll(dtype, chunk):
    def loss(h, w, y):
        return -token_logprobs(h, w, y, vocab_major=True, chunk_size=chunk, dtype=dtype)[0].mean()

    return loss


def compile_vg(loss, b, t, h, v, dtype, shardings=None):
    specs = (
        jax.ShapeDtypeStruct((b, t, h), dtype, sharding=shardings and shardings[0]),
        jax.ShapeDtypeStruct((v, h), jnp.float32, sharding=shardings and shardings[1]),
        jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=shardings and shardings[2]),
    )
    fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
    t0 = time.perf_counter()
    compiled = fn.lower(*specs).compile()
    return compiled, time.perf_counter() - t0


def timeit(fn, repeats):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def report(name, b, t, h, v, dtype, chunks, *, run=False, repeats=3, shardings=None, ctx=None):
    print(f"\n== {name}: b={b} T={t} H={h} V={v} compute {jnp.dtype(dtype).name}"
          f" (fp32 logits alone: {b * t * v * 4 / GiB:.2f} GiB{' global' if shardings else ''})")  # fmt: skip
    args = None
    if run:
        rng = np.random.default_rng(0)
        args = (
            jnp.asarray(rng.normal(size=(b, t, h)), dtype),
            jnp.asarray(rng.normal(size=(v, h)) * 0.02, jnp.float32),
            jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32),
        )
    rows = [("plain (full logits, optax CE)", plain_nll(dtype))]
    rows += [(f"chunked token_logprobs c={c}", chunked_nll(dtype, c)) for c in chunks]
    base_mem = base_t = None
    for label, loss in rows:
        if ctx is not None:
            with ctx():
                compiled, t_compile = compile_vg(loss, b, t, h, v, dtype, shardings)
        else:
            compiled, t_compile = compile_vg(loss, b, t, h, v, dtype, shardings)
        mem = compiled.memory_analysis().temp_size_in_bytes
        base_mem = base_mem or mem
        line = f"  {label:32s} temp {mem / GiB:7.3f} GiB ({mem / base_mem:6.3f}x)  compile {t_compile:5.1f} s"
        if run:
            dt = timeit(lambda: compiled(*args), repeats)
            base_t = base_t or dt
            line += f"  value_and_grad {dt * 1e3:8.1f} ms ({dt / base_t:5.2f}x)"
        print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-7b", action="store_true")
    args = ap.parse_args()
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}, cpu threads {os.cpu_count()}")
    report("small", 1, 1024, 512, 32768, jnp.float32, (128, 256, 512), run=True, repeats=args.repeats)
    report("logits-bound", 2, 2048, 256, 32768, jnp.float32, (128, 256, 512))
    if args.skip_7b:
        return
    report("7b", 1, 8192, 3584, 151936, jnp.bfloat16, (512, 1024, 2048))
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    shardings = (batch, NamedSharding(mesh, P("tensor", "fsdp")), batch)
    report(
        "7b-sharded (mesh data=1 fsdp=4 tensor=2; temp per device)",
        4,
        8192,
        3584,
        151936,
        jnp.bfloat16,
        (1024,),
        shardings=shardings,
        ctx=lambda: activation_sharding(mesh, DEFAULT_RULES),
    )


if __name__ == "__main__":
    main()
