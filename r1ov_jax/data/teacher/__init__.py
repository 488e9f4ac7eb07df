"""`r1ov formalize`: the paper's formalization pipeline on your own images through OpenAI-compatible endpoints.

client.py    async chat client (httpx): one concurrency bound for all endpoints, retries with backoff + jitter
cache.py     on-disk response cache keyed by the request (image hash, messages, model, sampling parameters)
prompts.py   image types, type detection and the type-specific formalization prompts
inputs.py    JSONL + image folder, R1-Onevision parquet, Bench TSV → Records (bad rows counted, skipped)
pipeline.py  detect → formalize → reason → rewrite → verify → ArrayRecord shards + report.json
"""

from __future__ import annotations

import os


def formalize_cli(args) -> int:
    """`r1ov formalize` (see ``r1ov_jax.cli``): run, print the summary, return 0 (failed items are counted)."""
    from r1ov_jax.data.teacher.pipeline import FormalizeOptions, formalize, summary_lines

    opts = FormalizeOptions(
        input=args.input,
        out=args.out,
        teacher=args.teacher,
        reasoner=args.reasoner,
        model=args.model,
        reasoner_model=args.reasoner_model,
        concurrency=args.concurrency,
        image_type=args.image_type,
        timeout=args.timeout,
        max_retries=args.max_retries,
        retry_delay=args.retry_delay,
        limit=args.limit,
        temperature=args.temperature,
        formal_max_tokens=args.formal_max_tokens,
        reason_max_tokens=args.reason_max_tokens,
        cache_dir=args.cache,
        progress=not args.no_progress,
        api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
    )
    report = formalize(opts)
    for line in summary_lines(report):
        print(line)
    return 0


__all__ = ["formalize_cli"]
