"""Quality filter (step 5 of the paper's pipeline): keep only traces whose final answer is correct.

The paper judged with GPT-4o; we use the project's one verifier, ``r1ov_jax.rewards.accuracy.verify_answer`` —
the same function the GRPO accuracy reward calls — so a trace kept for SFT is one RL would reward.
A trace must also have the rewarded format (``<think>…</think>\\s*<answer>…</answer>``, see rewards/format.py).
"""

from __future__ import annotations

import collections
import logging

from r1ov_jax.data.record import Record
from r1ov_jax.rewards.accuracy import extract_answer_block, verify_answer
from r1ov_jax.rewards.format import format_reward

log = logging.getLogger(__name__)

REASONS = ("no_trace", "bad_format", "wrong_answer")


def check(rec: Record) -> str | None:
    """Why `rec`'s trace is rejected (one of REASONS), or None when it is kept."""
    if not rec.trace:
        return "no_trace"
    if not format_reward(rec.trace):
        return "bad_format"
    pred = extract_answer_block(rec.trace)
    if pred is None or not verify_answer(pred, rec.answer, rec.choices):
        return "wrong_answer"
    return None


def filter_records(records) -> tuple[list[Record], dict]:
    """Split records into kept ones and counts.

    Returns:
      (kept records in input order, {"seen": n, "kept": k, "rejected": {reason: count}, "rejected_by_type": {...}})
    """
    kept: list[Record] = []
    rejected: collections.Counter = collections.Counter()
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen = 0
    for rec in records:
        seen += 1
        why = check(rec)
        if why is None:
            kept.append(rec)
        else:
            rejected[why] += 1
            by_type[str(rec.meta.get("type", "unknown"))][why] += 1
            log.info("filter: drop %s (%s)", rec.id, why)
    stats = {
        "seen": seen,
        "kept": len(kept),
        "rejected": {r: rejected.get(r, 0) for r in REASONS},
        "rejected_by_type": {t: dict(c) for t, c in sorted(by_type.items())},
    }
    return kept, stats
