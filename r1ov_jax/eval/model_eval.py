"""Evaluate one of our models: benchmark items → prompts → KV-cache sampler → resumable scoring → tables."""

from __future__ import annotations

import os

from r1ov_jax.eval.bench import BenchItem, items_from_records, load_bench
from r1ov_jax.eval.report import write_reports
from r1ov_jax.eval.runner import evaluate
from r1ov_jax.processing.prompts import PromptFormat
from r1ov_jax.rollout.chat import answer_prompts
from r1ov_jax.errors import InvalidInputError, MissingInputError


def load_items(data: str) -> list[BenchItem]:
    """A Bench/VLMEvalKit TSV or JSONL file, or a directory of generated ArrayRecord shards."""
    if os.path.isdir(data):
        from r1ov_jax.data.record import read_records, shard_paths

        paths = shard_paths(data)
        if not paths:
            raise MissingInputError(f"{data}: no generated shards (run `r1ov synth --out {data}` first)")
        from r1ov_jax.data.importers import ImportReport

        report = ImportReport(data)
        items = items_from_records(read_records(paths, report))
    else:
        items, report = load_bench(data)
    if report.skipped:
        print(report.summary())  # "kept K of N rows; skipped S (reason: n, ...); e.g. row R: ..."
    if not items:
        raise InvalidInputError(f"{data}: no usable rows ({report.summary()})")
    return items


def make_generate_fn(
    model, tokenizer, image_processor, *, max_new_tokens: int, fmt: PromptFormat = PromptFormat()
):
    """``generate_fn(items) -> completions`` with the prompts of ``processing.prompts`` in format ``fmt``."""

    def generate_fn(items: list[BenchItem]) -> list[str]:
        prompts = [(it.images, it.question, it.choices) for it in items]
        return answer_prompts(
            model, tokenizer, image_processor, prompts, max_new_tokens=max_new_tokens, fmt=fmt
        )

    return generate_fn


def evaluate_model(
    model,
    tokenizer,
    image_processor,
    data,
    out_dir: str,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    fmt: PromptFormat = PromptFormat(),
    progress: bool = True,
) -> dict:
    """Scores ``data`` (path or list of BenchItems) greedily; writes results.jsonl + score tables to ``out_dir``.

    ``fmt``: the prompt format (use the one the model was trained with: ``runs.load(...).prompt_format``).
    Returns the summary of ``write_reports`` (accuracy with bootstrap CI, grade × category table).
    """
    items = load_items(data) if isinstance(data, str) else list(data)
    fn = make_generate_fn(model, tokenizer, image_processor, max_new_tokens=max_new_tokens, fmt=fmt)
    records = evaluate(items, fn, out_dir, limit=limit, batch_size=batch_size, progress=progress)
    return write_reports(records, out_dir)
