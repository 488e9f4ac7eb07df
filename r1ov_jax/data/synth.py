"""`r1ov synth`: generate formalized examples in parallel, reason, rewrite, filter, write ArrayRecord shards.

Determinism: item i is always generator ``types[i % len(types)]`` with seed ``seed + i``, and shard k always holds
the kept items with ``k * shard_size <= i < (k + 1) * shard_size`` in index order. So the shards are byte-identical
whatever the number of workers (workers only change who computes an item, never what or where it is written).

Output in ``out_dir``:
  synth.array_record-0000k-of-0000n   serialized Records (``Record.to_bytes``), readable by grain's
                                      ArrayRecordDataSource or ``read_records``
  report.json                         counts per type, filter rejects, seconds
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence

from r1ov_jax.data.filter import check
from r1ov_jax.data.formalize import GENERATORS, generate
from r1ov_jax.data.reasoning import make_trace
from r1ov_jax.data.record import SHARD_PREFIX, WRITER_OPTIONS, shard_paths
from r1ov_jax.data.rewrite import rewrite
from r1ov_jax.data.solvers import SolveError
from r1ov_jax.errors import InvalidInputError

log = logging.getLogger(__name__)


def make_item(
    i: int, types: Sequence[str], seed: int, levels: Sequence[int] | None = None
) -> tuple[int, str, bytes | None, str | None]:
    """Item i: (i, type, serialized record or None, reject reason or None). Pure function of its arguments.

    ``levels`` (difficulty knobs 0..3) cycle per type round: item i uses ``levels[(i // len(types)) % len(levels)]``;
    None lets each generator draw its level from the seed."""
    kind = types[i % len(types)]
    level = levels[(i // len(types)) % len(levels)] if levels else None
    try:
        rec = generate(kind, seed + i, level=level)
    except Exception as e:  # a generator bug must not sink a long run: count it (report) and log it
        log.error("generator %s failed on seed %d: %r", kind, seed + i, e)
        return i, kind, None, f"generator_error:{type(e).__name__}"
    try:
        rec.trace = make_trace(rec)
    except (SolveError, KeyError, ValueError, ZeroDivisionError):
        return i, kind, None, "unsolved"
    rec = rewrite(rec)
    why = check(rec)
    if why is not None:
        return i, kind, None, why
    return i, kind, rec.to_bytes(), None


def _work(args):
    return make_item(*args)


def synthesize(
    out_dir: str,
    num: int,
    types: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    shard_size: int = 1024,
) -> dict:
    """Generate `num` items (mixed over `types`, default all generators) into ArrayRecord shards under `out_dir`.

    Args:
      out_dir: created if missing; existing shards with our prefix are replaced.
      num: items to generate (some may be dropped by the filter; the report says how many and why).
      types: generator names (see `r1ov_jax.data.formalize.GENERATORS`); item i uses types[i % len(types)].
      levels: difficulty knobs (0 = Junior High School .. 3 = Social Test) to cycle through; None = drawn per item.
      workers: processes (1 = in this process).
      seed: item i uses seed + i.
      progress: show a tqdm bar.
      shard_size: items (by index) per shard.
    Returns:
      The report dict, also written to out_dir/report.json.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    types = list(types) if types else list(GENERATORS)
    unknown = [t for t in types if t not in GENERATORS]
    if unknown:
        raise InvalidInputError(f"unknown generator type(s) {unknown}; available: {sorted(GENERATORS)}")
    if num < 0 or workers < 1 or shard_size < 1:
        raise InvalidInputError(
            f"need num >= 0, workers >= 1, shard_size >= 1 (got {num}, {workers}, {shard_size})"
        )
    os.makedirs(out_dir, exist_ok=True)
    for old in shard_paths(out_dir):
        os.remove(old)
    n_shards = max(1, math.ceil(num / shard_size))
    paths = [os.path.join(out_dir, f"{SHARD_PREFIX}-{k:05d}-of-{n_shards:05d}") for k in range(n_shards)]
    per_type = {t: {"generated": 0, "kept": 0, "rejected": {}} for t in types}
    rejected: dict[str, int] = {}
    shard_counts = [0] * n_shards
    start = time.perf_counter()
    levels = list(levels) if levels else None
    jobs = ((i, types, seed, levels) for i in range(num))
    pool = None
    if workers > 1:
        # spawn, not fork: the caller (CLI, notebooks) may already hold JAX/XLA threads.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_work, jobs, chunksize=8)  # imap keeps input order → deterministic shards
    else:
        results = map(_work, jobs)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=num, desc="synth", unit="item")
    writer, current = None, -1
    try:
        for i, kind, data, why in results:
            k = i // shard_size
            if k != current:
                if writer is not None:
                    writer.close()
                writer, current = ArrayRecordWriter(paths[k], WRITER_OPTIONS), k
            per_type[kind]["generated"] += 1
            if data is None:
                per_type[kind]["rejected"][why] = per_type[kind]["rejected"].get(why, 0) + 1
                rejected[why] = rejected.get(why, 0) + 1
                continue
            writer.write(data)
            per_type[kind]["kept"] += 1
            shard_counts[k] += 1
    finally:
        if writer is not None:
            writer.close()
        if pool is not None:
            pool.close()
            pool.join()
    for k in range(current + 1, n_shards):  # num == 0: still leave one (empty) shard
        ArrayRecordWriter(paths[k], WRITER_OPTIONS).close()
    seconds = time.perf_counter() - start
    written = sum(shard_counts)
    report = {
        "out_dir": os.path.abspath(out_dir),
        "num_requested": num,
        "num_written": written,
        "seed": seed,
        "types": types,
        "workers": workers,
        "per_type": per_type,
        "rejected": rejected,
        "shards": [{"path": os.path.basename(p), "records": c} for p, c in zip(paths, shard_counts)],
        "seconds": round(seconds, 3),
        "items_per_second": round(num / seconds, 2) if seconds > 0 else None,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
