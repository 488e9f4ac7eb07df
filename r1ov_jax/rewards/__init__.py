"""Verifiable rewards for GRPO: format (`<think>…</think><answer>…</answer>`) and accuracy (answer vs gold).

from r1ov_jax.rewards import compute_rewards
r = compute_rewards(completions, golds, choices_list, weights={"format": 1.0, "accuracy": 1.0})
r["total"]  # float32[n] = sum_k weights[k] * r[k]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from r1ov_jax.rewards.accuracy import accuracy_reward, extract_answer_block, verify_answer
from r1ov_jax.rewards.format import FORMAT_PATTERN, format_reward, format_rewards

REWARD_FUNCS = {"format": lambda c, g, ch: format_reward(c), "accuracy": accuracy_reward}
DEFAULT_WEIGHTS = {"format": 1.0, "accuracy": 1.0}


def compute_rewards(
    completions: Sequence[str],
    golds: Sequence[str],
    choices_list: Sequence[list[str] | None] | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Per-completion rewards.

    Args:
      completions: n decoded completions (special tokens removed). With G samples per prompt, repeat each prompt's
        gold/choices G times (row i of every argument describes completion i).
      golds: n gold answers.
      choices_list: n option lists (None entries for free-form), or None for all free-form.
      weights: reward name -> weight, names from `REWARD_FUNCS` ("format", "accuracy"); default 1.0 each.
    Returns:
      {"total": float32[n], "<name>": float32[n] for every weighted reward}. `total` is the weighted sum.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    n = len(completions)
    if len(golds) != n:
        raise ValueError(f"compute_rewards: {n} completions but {len(golds)} golds")
    if choices_list is None:
        choices_list = [None] * n
    if len(choices_list) != n:
        raise ValueError(f"compute_rewards: {n} completions but {len(choices_list)} choice lists")
    unknown = set(weights) - set(REWARD_FUNCS)
    if unknown:
        raise ValueError(
            f"compute_rewards: unknown reward(s) {sorted(unknown)}; known: {sorted(REWARD_FUNCS)}"
        )
    out = {}
    total = np.zeros(n, dtype=np.float32)
    for name, w in weights.items():
        fn = REWARD_FUNCS[name]
        r = np.asarray([fn(c, g, ch) for c, g, ch in zip(completions, golds, choices_list)], dtype=np.float32)
        out[name] = r
        total += np.float32(w) * r
    out["total"] = total
    return out


__all__ = [
    "FORMAT_PATTERN",
    "REWARD_FUNCS",
    "accuracy_reward",
    "compute_rewards",
    "extract_answer_block",
    "format_reward",
    "format_rewards",
    "verify_answer",
]
