"""Offline evaluation: answer extraction, benchmark loading, resumable scoring, score tables, paired comparison.

Typical use (the model side supplies `generate_fn(items) -> list[str]`):

    from r1ov_jax import eval as ev
    items, report = ev.load_bench("R1-Onevision-Bench.tsv")
    records = ev.evaluate(items, generate_fn, "out/eval", limit=None, batch_size=8)
    summary = ev.write_reports(records, "out/eval")          # scores.md / scores.json / scores.csv
    print(ev.format_markdown(summary))
    print(ev.format_comparison(ev.compare("out/sft", "out/grpo"), "sft", "grpo"))
"""

from r1ov_jax.eval.bench import (
    CATEGORIES,
    GRADES,
    BenchItem,
    items_from_records,
    load_bench,
    load_bench_jsonl,
    load_bench_tsv,
)
from r1ov_jax.eval.extract import AnswerScore, score_answer
from r1ov_jax.eval.judge import OpenAIJudge
from r1ov_jax.eval.report import format_csv, format_items, format_markdown, summarize, write_reports
from r1ov_jax.eval.runner import RESULTS_FILE, evaluate, load_results, score_item
from r1ov_jax.eval.stats import bootstrap_mean_ci, compare, format_comparison, mcnemar_exact

__all__ = [
    "CATEGORIES",
    "GRADES",
    "RESULTS_FILE",
    "AnswerScore",
    "BenchItem",
    "OpenAIJudge",
    "bootstrap_mean_ci",
    "compare",
    "evaluate",
    "format_comparison",
    "format_csv",
    "format_items",
    "format_markdown",
    "items_from_records",
    "load_bench",
    "load_bench_jsonl",
    "load_bench_tsv",
    "load_results",
    "mcnemar_exact",
    "score_answer",
    "score_item",
    "summarize",
    "write_reports",
]
