"""Format reward: the completion is exactly `<think>…</think>` then `<answer>…</answer>`.

Pattern and flags follow VLM-R1 (the R1-Onevision RL code base): `re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?
</answer>", content, re.DOTALL)`. (The original open-r1-multimodal used `re.match` without DOTALL, which rejects
any multi-line reasoning and accepts trailing junk; VLM-R1 fixed both.)

One deliberate difference: we `strip()` the completion first. Decoded completions often carry a leading newline
after the assistant header or trailing whitespace before EOS; whitespace outside the tags says nothing about the
format, and rewarding it differently would only add noise to the advantages. Any other text before `<think>` or
after `</answer>` still gives 0. Callers must pass the decoded text without special tokens (`<|im_end|>`).

Note that with a non-greedy `.*?` inside a *full* match, a second `<answer>` block after the first is absorbed into
the answer body (the pattern still matches); this is the reference behaviour and we keep it.
"""

from __future__ import annotations

import re

import numpy as np

FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


_SPACE = re.compile(r"\s*")


def format_reward(completion: str) -> float:
    """1.0 iff `completion.strip()` fully matches `<think>.*?</think>\\s*<answer>.*?</answer>` (DOTALL), else 0.0.

    Decided in linear time (the regex backtracks quadratically on many `</think>` without a closing answer): the
    text must start with `<think>` and end with `</answer>`, and some `</think>` (the first that works is the
    best) must be followed by whitespace and an `<answer>` that ends before that final `</answer>`."""
    s = (completion or "").strip()
    if not (s.startswith("<think>") and s.endswith("</answer>")):
        return 0.0
    last = len(s) - len("</answer>")
    pos = len("<think>")
    while True:
        i = s.find("</think>", pos)
        if i < 0:
            return 0.0
        j = _SPACE.match(s, i + len("</think>")).end()
        if s.startswith("<answer>", j):
            return 1.0 if j + len("<answer>") <= last else 0.0
        pos = i + 1


def format_rewards(completions: list[str]) -> np.ndarray:
    """Vectorized `format_reward`: float32[n]."""
    return np.asarray([format_reward(c) for c in completions], dtype=np.float32)
