"""Uncertainty for benchmark scores: bootstrap CIs, exact McNemar test, paired comparison of two runs.

A few points of accuracy on ~1k items is often noise. `compare` pairs two result files on their common items and
reports the difference with a bootstrap CI over items, the exact McNemar p-value and the items that flip.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from r1ov_jax.errors import InvalidInputError


def bootstrap_mean_ci(values: Sequence[float], *, n_boot: int = 10_000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean of `values` (resampling items with replacement). Returns (lo, hi).

    Resampling n items with replacement from data with k distinct values is the same as drawing the counts of
    those values from Multinomial(n, observed frequencies); we draw the counts directly, which gives the same
    distribution as index resampling at O(n_boot * k) cost.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return (float("nan"), float("nan"))
    uniq, counts = np.unique(v, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot)  # [n_boot, k]
    means = draws @ uniq / n
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b vs c discordant pairs with p = 1/2.

    p = min(1, 2 * sum_{k=0}^{min(b,c)} C(b+c, k) / 2^(b+c)); 1.0 when there are no discordant pairs.
    """
    if b < 0 or c < 0:
        raise InvalidInputError("counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def _by_id(results) -> dict[str, dict]:
    if isinstance(results, (str, os.PathLike)):
        from r1ov_jax.eval.runner import load_results

        results = load_results(results)
    out: dict[str, dict] = {}
    for r in results:
        out.setdefault(str(r["id"]), r)
    return out


def compare(results_a, results_b, *, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired comparison of two evaluation runs on their common items.

    Args:
      results_a, results_b: lists of result records (`evaluate`'s return) or paths to results.jsonl / out dirs.
    Returns:
      dict with n_common, only_in_a, only_in_b, acc_a, acc_b, diff (= acc_b - acc_a), ci (bootstrap CI of diff
      over items), p_mcnemar (exact, two-sided), a_right_b_wrong, a_wrong_b_right (items that flip each way),
      both_right, both_wrong. Undecided items count as wrong.
    """
    a, b = _by_id(results_a), _by_id(results_b)
    common = [i for i in a if i in b]
    ca = np.array([bool(a[i]["correct"]) for i in common], dtype=np.int64)
    cb = np.array([bool(b[i]["correct"]) for i in common], dtype=np.int64)
    n = len(common)
    a_only = int(np.sum((ca == 1) & (cb == 0)))
    b_only = int(np.sum((ca == 0) & (cb == 1)))
    out = {
        "n_common": n,
        "only_in_a": len(a) - n,
        "only_in_b": len(b) - n,
        "acc_a": float(ca.mean()) if n else float("nan"),
        "acc_b": float(cb.mean()) if n else float("nan"),
        "diff": float((cb - ca).mean()) if n else float("nan"),
        "ci": bootstrap_mean_ci(cb - ca, n_boot=n_boot, seed=seed, level=level),
        "level": level,
        "p_mcnemar": mcnemar_exact(a_only, b_only),
        "a_right_b_wrong": a_only,
        "a_wrong_b_right": b_only,
        "both_right": int(np.sum((ca == 1) & (cb == 1))),
        "both_wrong": int(np.sum((ca == 0) & (cb == 0))),
        "flipped_ids": {
            "a_right_b_wrong": [i for i, x, y in zip(common, ca, cb) if x and not y],
            "a_wrong_b_right": [i for i, x, y in zip(common, ca, cb) if y and not x],
        },
    }
    return out


def format_comparison(cmp: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Human-readable summary of `compare`'s result."""
    pct = 100.0
    lo, hi = cmp["ci"]
    lines = [
        f"Paired comparison on {cmp['n_common']} common items"
        + (
            f" ({cmp['only_in_a']} only in {name_a}, {cmp['only_in_b']} only in {name_b})"
            if cmp["only_in_a"] or cmp["only_in_b"]
            else ""
        ),
        f"  accuracy {name_a}: {cmp['acc_a'] * pct:.1f}%   {name_b}: {cmp['acc_b'] * pct:.1f}%",
        (
            f"  difference {name_b} - {name_a}: {cmp['diff'] * pct:+.1f} points "
            f"({cmp['level'] * 100:.0f}% bootstrap CI {lo * pct:+.1f} to {hi * pct:+.1f})"
        ),
        f"  exact McNemar p = {cmp['p_mcnemar']:.4g}",
        (
            f"  flips: {cmp['a_wrong_b_right']} wrong->right, {cmp['a_right_b_wrong']} right->wrong; "
            f"{cmp['both_right']} both right, {cmp['both_wrong']} both wrong"
        ),
    ]
    return "\n".join(lines)
