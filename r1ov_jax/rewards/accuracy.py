"""Accuracy reward: verify an answer against the gold answer.

`verify_answer` is the one verifier of the project (GRPO reward, trace filtering, offline eval). In order:

1. multiple choice (choices given, or a single-letter gold): the prediction's option letter — or the choice text
   it gives — must be the gold option, and only that option ("A and C" is wrong);
2. normalized string equality;
3. numbers with tolerance, units, percent and fractions (`answers.quantities_match`);
4. symbolic equivalence with math-verify (`\\frac{1}{2}` == 0.5, `2\\sqrt{2}` == `\\sqrt{8}`, `y=2x+1`), bounded
   in time.

Bounded time (`r1ov_jax.rewards.budget`). math-verify's own timeouts use `signal.alarm` (whole seconds, main thread
only) and cannot stop work done inside C (a big-integer power such as `2^{10^{10}}` runs for minutes). So: (a) inputs
that could blow up are never handed to sympy — long strings, deep nesting, exponents above `_MAX_EXPONENT`, nested
powers (also written with `\\left( \\right)`), factorials of large numbers, long digit runs; (b) the remaining
symbolic work runs in a worker process that is killed at its deadline, in any thread; (c) every answer has one time
budget (``ANSWER_BUDGET_S`` = 1.0 s by default) and every GRPO group another (``GROUP_BUDGET_S`` = 2.0 s, see
`compute_rewards`); each math-verify call takes at most ``SYMBOLIC_TIMEOUT_S`` (1.0 s) of what is left. Failed
parses and timeouts are cached. Model text is never evaluated as code. A NaN is never a correct answer.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
import time
from contextlib import contextmanager

from r1ov_jax.rewards import answers as A
from r1ov_jax.rewards import budget as B
from r1ov_jax.rewards.budget import time_budget

# Default budgets (seconds); the environment variables change them for a whole process.
ANSWER_BUDGET_S = B.env_seconds("R1OV_ANSWER_BUDGET_S", 1.0)  # one answer: all its comparisons together
GROUP_BUDGET_S = B.env_seconds("R1OV_GROUP_BUDGET_S", 2.0)  # one GRPO group (G completions of one prompt)
SYMBOLIC_TIMEOUT_S = B.env_seconds(
    "R1OV_SYMBOLIC_TIMEOUT_S", 1.0
)  # one math-verify call, hard (process killed)

_MAX_PRED_CHARS = 4000  # longer "answers" are not answers; only exact string equality is tried
_MAX_SYMBOLIC_CHARS = 200
_MAX_EXPONENT = 64
_MAX_NESTING = 12
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # an English word of 3+ letters, not a LaTeX command


def _is_prose(s: str) -> bool:
    """Two or more English words: a sentence, not an expression."""
    return len(_WORD.findall(s, 0, 2000)) >= 2


_LABEL_SEP = re.compile(r"(?<![\\A-Za-z\d])[A-Za-z]\s*[.:]\s")  # "A. 3/11 B. 8/11", "x: 5"


class _Deadline(BaseException):
    """Raised by the timer. A BaseException so that `except Exception` inside math-verify/sympy cannot eat it."""


@contextmanager
def _time_limit(seconds: float):
    """Raise `_Deadline` after `seconds` of wall time (main thread, POSIX); a no-op elsewhere."""
    if (
        not seconds
        or seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def _on_alarm(signum, frame):
        raise _Deadline()

    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:  # someone else's timer was running: give back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, old_delay - (time.monotonic() - start)))


class _TimeoutNoticeFilter(logging.Filter):
    # We pass timeout=None to math-verify because `_time_limit` provides the deadline; drop its reminder.
    def filter(self, record):
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutNoticeFilter())


_SIZERS = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*(?:\\(?=[{}])|\.)?")


def safe_for_symbolic(s: str) -> bool:
    """False for inputs whose parsing/simplification could take unbounded time or memory."""
    if len(s) > _MAX_SYMBOLIC_CHARS or re.search(r"\d{40,}", s):
        return False
    s = _SIZERS.sub("", s)  # "9^\\left(9^9\\right)" is the power of a power "9^(9^9)"
    if re.search(r"\\(?:uparrow|Uparrow|underbrace|overbrace)|\^\s*\\", s):
        return False  # Knuth arrows; exponents that are commands (\\frac, \\sqrt, \\infty, ...) are refused
    depth = best = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            best = max(best, depth)
        elif ch in ")}]":
            depth -= 1
    if best > _MAX_NESTING:
        return False
    # Exponents: `^{...}`, `^(...)`, `^token`, `**token`. Any exponent with another power inside, or a number
    # above _MAX_EXPONENT, is refused (`2^{10^{10}}`, `(1+x)^{999}`, `\sum_{k=1}^{10^9}`).
    if re.search(r"(?:\^|\*\*)\s*(?:\{[^{}]*\}|\([^()]*\)|[A-Za-z0-9.]+)\s*(?:\^|\*\*)", s):
        return False  # a power of a power: a^b^c, a^{b}^{c}
    for m in re.finditer(r"(?:\^|\*\*)\s*(\{[^{}]*\}?|\([^()]*\)?|[A-Za-z0-9.\\]+)", s):
        expo = m.group(1)
        if "^" in expo or "**" in expo or "!" in expo:
            return False
        nums = re.findall(r"\d+(?:\.\d+)?", expo)
        if any(float(n) > _MAX_EXPONENT for n in nums):
            return False
    if re.search(r"\^\s*\{[^{}]*\{", s):  # nested braces in an exponent (e.g. ^{\frac{..}{..}} with powers)
        return False
    for m in re.finditer(r"(\d+)\s*!", s):
        if int(m.group(1)) > 200 or "!!" in s:
            return False
    return True


def _as_latex(s: str) -> str:
    return s if ("$" in s or "\\(" in s or "\\[" in s) else f"${s}$"


@functools.lru_cache(maxsize=4096)
def _mv_parse(s: str):
    from math_verify import parse  # imported lazily: sympy import is ~1 s

    return tuple(parse(_as_latex(s), parsing_timeout=None))


def _symbolic_in_process(pred: str, gold: str, timeout_s: float) -> bool:
    """The fallback where no worker process can run: main thread bounded by setitimer, elsewhere by (a) alone."""
    from math_verify import verify  # imported before the timer starts

    try:
        with _time_limit(timeout_s):
            g, p = _mv_parse(gold), _mv_parse(pred)
            if not g or not p:
                return False
            return bool(verify(list(g), list(p), timeout_seconds=None))
    except _Deadline:
        return False
    except Exception:  # noqa: BLE001 - any parser/sympy failure means "not shown equal"
        return False


def symbolic_equal(pred: str, gold: str, timeout_s: float = SYMBOLIC_TIMEOUT_S) -> bool:
    """math-verify equivalence of two short answers; False on refusal, error, timeout or a spent budget.

    Runs in a worker process killed after ``min(timeout_s, what the enclosing budgets have left)`` seconds."""
    if not (safe_for_symbolic(pred) and safe_for_symbolic(gold)):
        return False
    t0 = time.monotonic()
    B.warm_up(wait=True)  # only waits while no worker is ready (start-up, replacements after a kill)
    waited = time.monotonic() - t0  # given back to this check, so a cold start does not fail it
    timeout = min(float(timeout_s), B.remaining() + waited)
    return B.symbolic_check(pred, gold, timeout, _symbolic_in_process)


def _value_equal(pred: str, gold: str, rel_tol: float, timeout_s: float) -> bool:
    """Free-form comparison: string, then numbers, then symbolic."""
    p, g = A.clean_answer(pred), A.clean_answer(gold)
    if not p or not g:
        return False
    if A.normalize_text(p) == A.normalize_text(g):
        return True
    # "x = 5" / "AB = 5 cm" against a gold "5": compare the right-hand side.
    if "=" in p and "=" not in g:
        p = p.rsplit("=", 1)[1].strip()
    if "\\approx" in p or "≈" in p:
        p = re.split(r"\\approx|≈", p)[-1].strip()
    qp, qg = A.parse_quantity(p), A.parse_quantity(g)
    if qp is None and qg is not None and _is_prose(p):
        # "There are 3 cubes" / "The area is 12 cm^2": the value after the last copula.
        tail = re.split(r"\b(?:is|are|was|were|equals?|be|of|to)\s+", p)[-1]
        qp = A.parse_quantity(tail)
    if qp is not None and qg is not None:
        return A.quantities_match(qp, qg, rel_tol)
    if A.normalize_text(p) == A.normalize_text(g):
        return True
    if _is_prose(p) or _is_prose(g) or _LABEL_SEP.search(p):
        return False  # sentences / option lists are not maths: math-verify would pick some number out of them
    return symbolic_equal(p, g, timeout_s)


def gold_letter(
    gold: str, choices: list[str] | None, rel_tol: float = 1e-4, timeout_s: float = SYMBOLIC_TIMEOUT_S
) -> str | None:
    """The gold option letter: the gold itself when it is a valid letter, else the choice whose text it is."""
    g = A.clean_answer(str(gold))
    labels = A.LETTERS[: len(choices)] if choices else A.DEFAULT_LABELS
    m = re.fullmatch(r"[(\[]?([A-Z])[)\]]?\.?", g)
    if m and m.group(1) in labels:
        return m.group(1)
    if not choices:
        return None
    norm = A.normalize_text(g)
    hits = [A.LETTERS[i] for i, c in enumerate(choices) if A.normalize_text(c) == norm]
    if not hits:
        hits = [A.LETTERS[i] for i, c in enumerate(choices) if _value_equal(g, c, rel_tol, timeout_s)]
    return hits[0] if len(hits) == 1 else None


def match_choice_text(
    pred: str, choices: list[str], rel_tol: float = 1e-4, timeout_s: float = SYMBOLIC_TIMEOUT_S
) -> list[str]:
    """Letters of the choices whose text `pred` gives (string match first, then value equality)."""
    norm = A.normalize_text(pred)
    if not norm:
        return []
    hits = [A.LETTERS[i] for i, c in enumerate(choices) if A.normalize_text(c) == norm]
    if hits:
        return hits
    return [A.LETTERS[i] for i, c in enumerate(choices) if _value_equal(pred, c, rel_tol, timeout_s)]


def verify_answer(
    pred: str,
    gold: str,
    choices: list[str] | None = None,
    *,
    rel_tol: float = 1e-4,
    timeout_s: float = SYMBOLIC_TIMEOUT_S,
    budget_s: float | None = ANSWER_BUDGET_S,
) -> bool:
    """True iff the answer `pred` (already extracted, e.g. an `<answer>` body) matches `gold`.

    Args:
      pred: the model's final answer ("B", "(B) 8/11", "\\frac{1}{2}", "12 cm", "\\boxed{5}", "The answer is 3").
      gold: the gold answer: an option letter or the option's text for multiple choice, else a value/expression.
      choices: option texts in order A, B, C, ... (labels like "A." are stripped), or None for free-form.
      rel_tol: relative tolerance for numbers (plus rounding to the gold's decimals, see `quantities_match`).
      timeout_s: hard wall-time bound on one symbolic check (one call to math-verify, in a worker process).
      budget_s: wall-time budget of this whole verification (all comparisons; default ``ANSWER_BUDGET_S``),
        within any enclosing budget (a GRPO group's); None: only the enclosing ones.
    Returns:
      bool. Several option letters for one gold option, empty, NaN or over-long predictions are False.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if len(pred) > _MAX_PRED_CHARS:
        return False
    if _is_nan(pred) or _is_nan(gold):
        return False  # "nan" == "nan" as strings, but a NaN is never an answer
    with time_budget(budget_s):
        return _verify(pred, gold, choices, rel_tol, timeout_s)


_NAN_WORD = re.compile(r"[-+]?nan", re.IGNORECASE)


def _is_nan(s: str) -> bool:
    return bool(_NAN_WORD.fullmatch(A.clean_answer(s).replace(" ", ""))) or s.strip().lower() == "nan"


def _verify(pred: str, gold: str, choices, rel_tol: float, timeout_s: float) -> bool:
    choices = A.clean_choices(choices)
    letter = gold_letter(gold, choices, rel_tol, timeout_s)
    if letter is not None:
        labels = A.LETTERS[: len(choices)] if choices else A.DEFAULT_LABELS
        letters = A.parse_letters(pred, labels)
        if letters:
            return letters == [letter]
        if choices:
            return match_choice_text(A.clean_answer(pred), choices, rel_tol, timeout_s) == [letter]
        return False
    if choices:
        # Gold is not one of the options: a letter prediction stands for its option's text.
        letters = A.parse_letters(pred, A.LETTERS[: len(choices)])
        if letters:
            return len(letters) == 1 and _value_equal(
                choices[A.LETTERS.index(letters[0])], gold, rel_tol, timeout_s
            )
    return _value_equal(pred, gold, rel_tol, timeout_s)


def extract_answer_block(completion: str) -> str | None:
    """Content of the last `<answer>...</answer>` block, or None (linear time, same blocks as `re.findall`)."""
    block = A.last_answer_block(completion or "")
    return block.strip() if block is not None else None


def accuracy_reward(
    completion: str, gold: str, choices: list[str] | None = None, *, budget_s: float | None = ANSWER_BUDGET_S
) -> float:
    """1.0 if the last `<answer>` block of `completion` verifies against `gold`, else 0.0.

    A completion without an `<answer>` block scores 0 (open-r1-multimodal falls back to parsing the whole text;
    we do not, since any stray number in the reasoning could then earn reward). A gold written as
    `<answer>X</answer>` (VLM-R1 "solution" style) is unwrapped.
    """
    pred = extract_answer_block(completion)
    if pred is None:
        return 0.0
    g = extract_answer_block(gold) if "<answer>" in str(gold) else gold
    return 1.0 if verify_answer(pred, g or "", choices, budget_s=budget_s) else 0.0
