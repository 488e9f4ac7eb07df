"""Verifiable rewards for GRPO: format (`<think>…</think><answer>…</answer>`) and accuracy (answer vs gold).

from r1ov_jax.rewards import compute_rewards
r = compute_rewards(completions, golds, choices_list, weights={"format": 1.0, "accuracy": 1.0})
r["total"]  # float32[n] = sum_k weights[k] * r[k]

Rewards by name (built-ins and user ``module:function`` rewards): `r1ov_jax.rewards.registry`.

Time: each completion has one budget (``accuracy.ANSWER_BUDGET_S``, 1.0 s) and each GRPO group of completions
another (``accuracy.GROUP_BUDGET_S``, 2.0 s), enforced in any thread by killing symbolic-check worker processes
(`r1ov_jax.rewards.budget`); a spent budget leaves only the cheap checks (letters, strings, numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from r1ov_jax.rewards import budget
from r1ov_jax.rewards.accuracy import (
    ANSWER_BUDGET_S,
    GROUP_BUDGET_S,
    accuracy_reward,
    extract_answer_block,
    verify_answer,
)
from r1ov_jax.rewards.format import FORMAT_PATTERN, format_reward, format_rewards
from r1ov_jax.rewards.registry import (
    PER_COMPLETION,
    RewardTerm,
    check_group_output,
    length_reward,
    resolve_rewards,
)

REWARD_FUNCS = PER_COMPLETION  # per-completion built-ins; `registry` adds group-level and user rewards
DEFAULT_WEIGHTS = {"format": 1.0, "accuracy": 1.0}


def compute_rewards(
    completions: Sequence[str],
    golds: Sequence[str],
    choices_list: Sequence[list[str] | None] | None = None,
    weights: Mapping[str, float] | None = None,
    *,
    group_size: int | None = None,
    answer_budget_s: float | None = None,
    group_budget_s: float | None = None,
    reward_fns: Mapping[str, str] | None = None,
    lengths: Sequence[int] | None = None,
    terms: Sequence[RewardTerm] | None = None,
) -> dict[str, np.ndarray]:
    """Per-completion rewards.

    Args:
      completions: n decoded completions (special tokens removed). With G samples per prompt, repeat each prompt's
        gold/choices G times (row i of every argument describes completion i).
      golds: n gold answers.
      choices_list: n option lists (None entries for free-form), or None for all free-form.
      weights: reward name -> weight (`registry`: built-ins format, accuracy, length, iou, iou_soft, or user
        rewards); default format 1.0 + accuracy 1.0.
      group_size: G, the completions per prompt (consecutive rows); None: runs of rows with the same gold and
        choices are the groups.
      answer_budget_s / group_budget_s: time budgets per completion / per group (defaults
        ``accuracy.ANSWER_BUDGET_S`` = 1.0 s, ``accuracy.GROUP_BUDGET_S`` = 2.0 s), wall time, in any thread.
      reward_fns: name -> "module:function" for user rewards (see `registry`).
      lengths: n completion token counts (the length reward; user rewards get them as ``lengths=``).
      terms: already resolved reward terms (`registry.resolve_rewards`, done once at start-up by GRPO);
        overrides ``weights`` / ``reward_fns``.
    Returns:
      {"total": float32[n], "<name>": float32[n] for every weighted reward}. `total` is the weighted sum.
    """
    if terms is None:
        terms = resolve_rewards(
            dict(DEFAULT_WEIGHTS if weights is None else weights), reward_fns, dry_run=False
        )
    n = len(completions)
    if len(golds) != n:
        raise ValueError(f"compute_rewards: {n} completions but {len(golds)} golds")
    if choices_list is None:
        choices_list = [None] * n
    if len(choices_list) != n:
        raise ValueError(f"compute_rewards: {n} completions but {len(choices_list)} choice lists")
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"compute_rewards: {n} completions but {len(lengths)} lengths")
    if group_size is not None and (int(group_size) != group_size or group_size < 1):
        raise ValueError(f"compute_rewards: group_size must be a positive int, got {group_size!r}")
    a_budget = ANSWER_BUDGET_S if answer_budget_s is None else answer_budget_s
    g_budget = GROUP_BUDGET_S if group_budget_s is None else group_budget_s
    names = {t.name for t in terms}
    if "accuracy" in names or "length" in names:
        budget.warm_up(wait=True)  # once per process: the workers' sympy import is not charged to any budget
    scores = {t.name: np.zeros(n, dtype=np.float32) for t in terms}
    for lo, hi in _groups(golds, choices_list, group_size):
        with budget.time_budget(g_budget):
            for i in range(lo, hi):
                c, g, ch = completions[i], golds[i], choices_list[i]
                for t in terms:
                    if t.per_completion:
                        kw = {"budget_s": a_budget} if t.fn is accuracy_reward else {}
                        scores[t.name][i] = t.fn(c, g, ch, **kw)
            group_args = (list(completions[lo:hi]), list(golds[lo:hi]), list(choices_list[lo:hi]))
            group_lengths = None if lengths is None else [int(x) for x in lengths[lo:hi]]
            for t in terms:
                if t.per_completion:
                    continue
                kw = {"lengths": group_lengths}
                if t.fn is length_reward and "accuracy" in scores:  # reuse the accuracy already computed
                    kw["correct"] = [bool(v > 0) for v in scores["accuracy"][lo:hi]]
                label = f"reward {t.name!r} ({t.source})"
                scores[t.name][lo:hi] = check_group_output(t.fn(*group_args, **kw), hi - lo, label)
    out = {}
    total = np.zeros(n, dtype=np.float32)
    for t in terms:
        out[t.name] = scores[t.name]
        total += np.float32(t.weight) * scores[t.name]
    out["total"] = total
    return out


def _groups(golds, choices_list, group_size):
    """(start, stop) of each group of consecutive rows."""
    n = len(golds)
    if group_size is not None:
        return [(lo, min(n, lo + int(group_size))) for lo in range(0, n, int(group_size))]
    out, lo = [], 0
    for i in range(1, n + 1):
        if i == n or (golds[i], choices_list[i]) != (golds[lo], choices_list[lo]):
            out.append((lo, i))
            lo = i
    return out


__all__ = [
    "ANSWER_BUDGET_S",
    "FORMAT_PATTERN",
    "GROUP_BUDGET_S",
    "REWARD_FUNCS",
    "RewardTerm",
    "accuracy_reward",
    "compute_rewards",
    "extract_answer_block",
    "format_reward",
    "format_rewards",
    "resolve_rewards",
    "verify_answer",
]
