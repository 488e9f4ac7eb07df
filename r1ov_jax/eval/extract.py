"""Deterministic final-answer extraction for benchmark outputs (no judge model).

`score_answer(output, gold, choices)` reads the model's *explicit* final answer and verifies it with the shared
verifier (`r1ov_jax.rewards.verify_answer`). Rules, in order:

1. `answer_tag` — the last `<answer>…</answer>` block wins over everything else in the output. Inside it, a final
   phrase or `\\boxed{}` is honoured; otherwise the whole block is the answer. An empty/unreadable block is
   undecided (we do not look elsewhere).
2. `phrase` / `boxed` — otherwise the latest explicit final-answer phrase ("the answer is", "the correct option
   is", "**Answer:**", "Final answer:") or `\\boxed{}`, whichever comes last. Hypotheticals ("if the answer is A")
   and negations ("the answer is not A") are skipped; a phrase followed by nothing readable falls back to the
   previous candidate.
3. `bare` — the whole output is just an answer: "B", "(B)", "B. 8/11", a choice text, "12 cm", "\\frac{1}{2}".
4. `none` — nothing explicit: undecided, never guessed (correct=False, reported as its own count).

Rules 2-3 look first at the text after the last `</think>` (R1-Onevision answers "<think>…</think>\\n\\nB"),
then at the whole output.

Multiple choice: letters are read only from those explicit spans, so options being listed or discussed
("Option A: …", "Answer choices: A. … B. …") never count. Several letters for a single-choice question are wrong
(not undecided). The gold may be a letter or the option text; a prediction giving the option text counts as its
letter. Free-form answers compare as numbers (tolerance, units, percent, fractions) or symbolically.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from r1ov_jax.rewards import answers as A
from r1ov_jax.rewards.accuracy import ANSWER_BUDGET_S, gold_letter, match_choice_text, verify_answer
from r1ov_jax.rewards.budget import time_budget

RULES = ("answer_tag", "boxed", "phrase", "bare", "none", "judge")

_VERB = r"(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be|remains)"
_TOPIC = r"(?:\s+(?:to|for)\s+(?:this|the)\s+(?:question|problem))?"
_PHRASE = re.compile(
    # "final/correct answer|choice|option" + is / : / = / a line break / a markdown heading end
    rf"\b(?:final|correct|right|best)\s+(?:answer|choice|option){_TOPIC}[*_]*\s*"
    rf"(?:{_VERB}\b[*_]*\s*[:：]?|[:：=]|(?=\s*\n)|$)"
    # "answer" + is / : / =  ("the answer is", "Answer:", "**Answer:**", "**Answer**:"); not "Answer choices:"
    rf"|\banswer{_TOPIC}[*_]*\s*(?:{_VERB}\b[*_]*\s*[:：]?|[:：=])"
    rf"|\*\*answer\*\*(?=\s*\n)",
    re.IGNORECASE,
)
_HYPOTHETICAL = re.compile(
    r"\b(?:if|whether|suppose|supposing|assume|assuming|unless|not sure)\b", re.IGNORECASE
)
_CLAUSE_END = re.compile(
    r"(?<=[^\d\s])\.(?=\s|$)|(?<=\d)\.(?=\s+[A-Z]|\s*$)|[;!?。](?=\s|$)"
    r"|,\s+(?:which|so|because|since|as|and|where|thus|hence|therefore|but|i\.e\.)\b|\s+(?:because|since)\s"
)
_ENGLISH_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_MAX_SPAN = 400
_MAX_CANDIDATES = 64  # latest explicit spans tried per scope; a degenerate output cannot make us try 100k
_MAX_BODY = 4000  # an <answer> body longer than this is not an answer as a whole (only spans inside are read)


@dataclass(frozen=True)
class AnswerScore:
    """Verdict for one output.

    Attributes:
      correct: the explicit final answer matches the gold.
      extracted: the normalized final answer ("B", "A,C" for several letters, "12 cm"), None when undecided.
      undecided: no explicit final answer was found (correct is then False).
      rule: which rule produced the answer: answer_tag | boxed | phrase | bare | none (| judge, set by the runner).
      span: the raw text the answer was read from (for per-item display), None when undecided.
    """

    correct: bool
    extracted: str | None
    undecided: bool
    rule: str
    span: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Task:
    gold: str
    choices: list[str] | None
    letter: str | None  # gold option letter (multiple choice), None for free-form
    labels: str  # letters that may name an option


def _task(gold: str, choices) -> _Task:
    choices = A.clean_choices(choices)
    letter = gold_letter(str(gold), choices)
    labels = A.LETTERS[: max(len(choices), 5)] if choices else A.DEFAULT_LABELS
    return _Task(str(gold), choices, letter, labels)


def _first_line(span: str) -> str:
    """The rest of the phrase's line, or the next non-empty line when the phrase ends its line."""
    lines = span.split("\n")
    for ln in lines[:4]:
        if re.sub(r"[\s*_#:：>-]", "", ln):
            return ln.strip()
    return ""


def _first_clause(s: str) -> str:
    m = _CLAUSE_END.search(s)
    return s[: m.start()].strip() if m else s.strip()


def _readable_value(s: str) -> bool:
    """A free-form answer is a number/expression or a short phrase, not a sentence of prose."""
    if not s or len(s) > 200:
        return False
    if re.search(r"[\d\\=^+/]", s):
        return True
    return len(_ENGLISH_WORD.findall(s)) <= 3


def _interpret(span: str, task: _Task, *, whole: bool = False) -> tuple[str, bool] | None:
    """(extracted, correct) for an explicit answer span, or None if nothing readable is in it.

    whole=True: the span is an entire answer (tag body / boxed content / bare output), not text after a phrase.
    """
    text = span.strip() if whole else _first_line(span)
    text = re.sub(r"^[\s*_:：=>-]+", "", text)
    if re.match(r"not\b", text, re.IGNORECASE):  # "the answer is not A, but C"
        m = re.search(r"\bbut\s+(?:rather\s+|instead\s+)?", text, re.IGNORECASE)
        if not m:
            return None
        text = text[m.end() :]
    if not text:
        return None
    if task.letter is not None:  # multiple choice
        letters = A.parse_letters(text, task.labels)
        if letters:
            return ",".join(letters), letters == [task.letter]
        if task.choices:
            cand = A.clean_answer(text if whole else _first_clause(text))
            hits = match_choice_text(cand, task.choices)
            if len(hits) == 1:
                return hits[0], hits[0] == task.letter
        return None
    value = A.clean_answer(text if whole else _first_clause(text))
    if not _readable_value(value):
        return None
    return value, verify_answer(value, task.gold, task.choices)


def _candidates(text: str) -> list[tuple[int, str, str, bool]]:
    """Explicit answer spans (position, rule, span, whole) in `text`, latest first."""
    n, window = len(text), 16384
    while True:  # the latest spans win: scan growing tails until enough are found (linear overall)
        lo = max(0, n - window)
        found = _candidates_from(text, lo)
        if lo == 0 or len(found) >= _MAX_CANDIDATES:
            return found
        window *= 4


def _candidates_from(text: str, lo: int) -> list[tuple[int, str, str, bool]]:
    found = []
    for m in _PHRASE.finditer(text, lo):
        lo = max(0, m.start() - 80)  # bounded look-back: linear time however many phrases there are
        start = max(text.rfind(".", lo, m.start()), text.rfind("\n", lo, m.start()), m.start() - 80)
        if _HYPOTHETICAL.search(text[start + 1 : m.start()]):
            continue
        found.append((m.start(), "phrase", text[m.end() : m.end() + _MAX_SPAN], False))
    for pos, content in A.boxed_contents(text[lo:] if lo else text):
        found.append((pos + lo, "boxed", content, True))
    found.sort(key=lambda c: c[0], reverse=True)
    return found[:_MAX_CANDIDATES]


def _bare(output: str, task: _Task) -> tuple[str, bool] | None:
    """The whole output is only an answer ("B", "(B)", "B. 8/11", "12 cm")."""
    if len(output) > 4 * 80:
        return None  # cheap bound before any normalization of a long output
    s = A.strip_markup(output).strip()
    if not s or len(s) > 80 or "\n" in s:
        return None
    if task.letter is not None:
        m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\].:]?\s*(.{0,60})", s)
        if m and (not m.group(2) or re.match(r"[(\[]?[A-Z][)\].:]", s)):
            letters = A.parse_letters(s, task.labels)
            if letters:
                return ",".join(letters), letters == [task.letter]
        if task.choices:
            hits = match_choice_text(A.clean_answer(s), task.choices)
            if len(hits) == 1:
                return hits[0], hits[0] == task.letter
        return None
    value = A.clean_answer(s)
    if A.parse_quantity(value) is None and (_ENGLISH_WORD.search(value) or not re.search(r"\d", value)):
        return None  # prose or a bare word: not a clear answer to a free-form question
    return value, verify_answer(value, task.gold, task.choices)


def score_answer(
    output: str, gold: str, choices: list[str] | None = None, *, budget_s: float | None = ANSWER_BUDGET_S
) -> AnswerScore:
    """Extract the explicit final answer from a model output and verify it against the gold.

    Args:
      output: the full model output (may contain `<think>`, markdown, LaTeX).
      gold: the gold answer: option letter or option text for multiple choice, else a value/expression.
      choices: option texts in order A, B, ... ("A." labels are stripped), or None.
    Returns:
      AnswerScore(correct, extracted, undecided, rule, span). See the module docstring for the rules.

    Time: linear in the output's length; all verification together gets ``budget_s`` (default
    ``rewards.accuracy.ANSWER_BUDGET_S`` = 1.0 s; symbolic checks are cut off when it is spent).
    """
    with time_budget(budget_s):
        return _score(output or "", gold, choices)


def _score(output: str, gold: str, choices) -> AnswerScore:
    task = _task(gold, choices)

    blocks = A.answer_blocks(output)
    if blocks:
        body = blocks[-1].strip()
        for _, rule, span, whole in _candidates(body):
            got = _interpret(span, task, whole=whole)
            if got is not None:
                return AnswerScore(got[1], got[0], False, "answer_tag", span.strip()[:_MAX_SPAN])
        got = _interpret(body, task, whole=True) if len(body) <= _MAX_BODY else None
        if got is not None:
            return AnswerScore(got[1], got[0], False, "answer_tag", body[:_MAX_SPAN])
        return AnswerScore(False, None, True, "answer_tag", body[:_MAX_SPAN])

    # R1-Onevision's own format is "<think>…</think>\n\nanswer": the text after the last </think> is the response,
    # so an answer given there beats phrases inside the reasoning; the whole output is the fallback.
    _, sep, post = output.rpartition("</think>")
    scopes = [post, output] if sep and post.strip() else [output]
    for scope in scopes:
        for _, rule, span, whole in _candidates(scope):
            got = _interpret(span, task, whole=whole)
            if got is not None:
                shown = span.strip() if whole else _first_line(span)
                return AnswerScore(got[1], got[0], False, rule, shown[:_MAX_SPAN])
        got = _bare(scope, task)
        if got is not None:
            return AnswerScore(got[1], got[0], False, "bare", scope.strip())
    return AnswerScore(False, None, True, "none", None)
