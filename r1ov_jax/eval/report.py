"""Score tables like the paper's: accuracy by grade x category, with correct / wrong / undecided counts.

`write_reports(records, out_dir)` writes scores.md, scores.json and scores.csv and returns the summary dict.
Accuracy = correct / n; undecided items are not correct, and are counted separately so they stay visible.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

from r1ov_jax.eval.bench import CATEGORIES, GRADES
from r1ov_jax.eval.stats import bootstrap_mean_ci

ALL = "All"
UNKNOWN = "Unknown"


def _counts(recs: list[dict]) -> dict:
    n = len(recs)
    correct = sum(1 for r in recs if r["correct"])
    undecided = sum(1 for r in recs if r.get("undecided") and not r["correct"])
    return {
        "n": n,
        "correct": correct,
        "wrong": n - correct - undecided,
        "undecided": undecided,
        "accuracy": correct / n if n else None,
    }


def _order(values: set[str], preferred: tuple[str, ...]) -> list[str]:
    first = [v for v in preferred if v in values]
    return first + sorted(values - set(first))


def summarize(records: list[dict], *, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Counts and accuracy overall, per grade, per category and per (grade, category) cell.

    Returns a JSON-serializable dict: overall (+ ci95, seeded bootstrap over items), levels, categories (display
    order: the paper's first, then others sorted), by_level, by_category, cells (list of {level, category,
    counts...}), rules (how many answers each extraction rule produced).
    """
    recs = list(records)

    def lvl(r):
        return r.get("level") or UNKNOWN

    def cat(r):
        return r.get("category") or UNKNOWN

    levels = _order({lvl(r) for r in recs}, GRADES)
    cats = _order({cat(r) for r in recs}, CATEGORIES)
    overall = _counts(recs)
    overall["ci95"] = list(
        bootstrap_mean_ci([float(bool(r["correct"])) for r in recs], n_boot=n_boot, seed=seed)
    )
    cells = []
    for lv in levels:
        for c in cats:
            sub = [r for r in recs if lvl(r) == lv and cat(r) == c]
            if sub:
                cells.append({"level": lv, "category": c, **_counts(sub)})
    return {
        "overall": overall,
        "levels": levels,
        "categories": cats,
        "by_level": {lv: _counts([r for r in recs if lvl(r) == lv]) for lv in levels},
        "by_category": {c: _counts([r for r in recs if cat(r) == c]) for c in cats},
        "cells": cells,
        "rules": dict(Counter(r.get("rule", "") for r in recs)),
        "bootstrap": {"n_boot": n_boot, "seed": seed},
    }


def _pct(x) -> str:
    return "–" if x is None else f"{100.0 * x:.1f}"


def format_markdown(summary: dict, title: str = "R1-Onevision-Bench scores") -> str:
    """Markdown: headline with CI, accuracy matrix (grade rows x category columns), and a counts table."""
    o = summary["overall"]
    lo, hi = o["ci95"]
    levels, cats = summary["levels"], summary["categories"]
    cell = {(c["level"], c["category"]): c for c in summary["cells"]}
    out = [
        f"## {title}",
        "",
        (
            f"Overall accuracy **{_pct(o['accuracy'])}%** (95% bootstrap CI {_pct(lo)}–{_pct(hi)}), "
            f"n = {o['n']}: {o['correct']} correct, {o['wrong']} wrong, {o['undecided']} undecided."
        ),
        "",
        "Accuracy % (n) by grade × category:",
        "",
        "| Grade \\ Category | " + " | ".join(cats) + f" | {ALL} |",
        "|---" * (len(cats) + 2) + "|",
    ]
    for lv in levels:
        row = [
            f"{_pct(cell[(lv, c)]['accuracy'])} ({cell[(lv, c)]['n']})" if (lv, c) in cell else "–"
            for c in cats
        ]
        t = summary["by_level"][lv]
        out.append(f"| {lv} | " + " | ".join(row) + f" | {_pct(t['accuracy'])} ({t['n']}) |")
    tot = [f"{_pct(summary['by_category'][c]['accuracy'])} ({summary['by_category'][c]['n']})" for c in cats]
    out.append(f"| {ALL} | " + " | ".join(tot) + f" | {_pct(o['accuracy'])} ({o['n']}) |")
    out += [
        "",
        "Counts (correct / wrong / undecided):",
        "",
        "| Grade | Category | n | correct | wrong | undecided | accuracy % |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in _long_rows(summary):
        out.append(
            "| "
            + " | ".join(str(row[k]) for k in ("level", "category", "n", "correct", "wrong", "undecided"))
            + f" | {_pct(row['accuracy'])} |"
        )
    rules = ", ".join(f"{k}: {v}" for k, v in sorted(summary["rules"].items()))
    out += ["", f"Extraction rules used: {rules}.", ""]
    return "\n".join(out)


def _long_rows(summary: dict) -> list[dict]:
    rows = [dict(c) for c in summary["cells"]]
    rows += [{"level": lv, "category": ALL, **summary["by_level"][lv]} for lv in summary["levels"]]
    rows += [{"level": ALL, "category": c, **summary["by_category"][c]} for c in summary["categories"]]
    o = summary["overall"]
    rows.append(
        {
            "level": ALL,
            "category": ALL,
            **{k: o[k] for k in ("n", "correct", "wrong", "undecided", "accuracy")},
        }
    )
    return rows


def format_csv(summary: dict) -> str:
    """Long-form CSV: level, category, n, correct, wrong, undecided, accuracy (incl. All rows/columns)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["level", "category", "n", "correct", "wrong", "undecided", "accuracy"])
    for r in _long_rows(summary):
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.6f}"
        w.writerow([r["level"], r["category"], r["n"], r["correct"], r["wrong"], r["undecided"], acc])
    return buf.getvalue()


def write_reports(
    records: list[dict],
    out_dir: str | os.PathLike,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    stem: str = "scores",
    title: str = "R1-Onevision-Bench scores",
) -> dict:
    """Write `{stem}.md`, `{stem}.json`, `{stem}.csv` into out_dir; return the summary (also in the JSON)."""
    summary = summarize(records, n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(format_markdown(summary, title), encoding="utf-8")
    (out / f"{stem}.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / f"{stem}.csv").write_text(format_csv(summary), encoding="utf-8")
    return summary


def format_items(records: list[dict], *, only: str | None = None, width: int = 60) -> str:
    """One line per item showing the extraction (id, verdict, rule, extracted, gold); only='wrong'|'undecided'."""
    lines = []
    for r in records:
        verdict = "correct" if r["correct"] else ("undecided" if r.get("undecided") else "wrong")
        if only and verdict != only:
            continue
        span = (r.get("span") or "").replace("\n", " ")[:width]
        lines.append(
            f"{r['id']}\t{verdict}\t{r.get('rule', '')}\textracted={r.get('extracted')!r}\t"
            f"gold={r.get('answer')!r}\t{span}"
        )
    return "\n".join(lines)
