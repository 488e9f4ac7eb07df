"""Pure-text helpers for reading short answers: normalization, choice letters, numbers with units.

Shared by the accuracy reward (`r1ov_jax.rewards.accuracy`) and the offline extractor (`r1ov_jax.eval.extract`).
Nothing here evaluates model text as code: numbers are read with regular expressions and `float()`, choice
fields with `json` / `ast.literal_eval` (literals only) on short strings.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Letters accepted as an option label when the choices themselves are unknown (e.g. MathVerse keeps them in the
# question text); eight covers every benchmark we read.
DEFAULT_LABELS = "ABCDEFGH"

# ---------------------------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------------------------

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")


def strip_markup(s: str) -> str:
    """Drop markdown emphasis, `$`, `\\(`/`\\)` and text wrappers; keep the content."""
    s = s.replace("²", "^2").replace("³", "^3")  # before NFKC, which would turn them into plain digits
    s = unicodedata.normalize("NFKC", s)
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u2014", "-")
    s = re.sub(r"\\[()\[\]]", " ", s)  # \( \) \[ \]
    s = s.replace("$", " ")
    for _ in range(3):  # nested \text{\textbf{..}}
        s2 = _TEXT_WRAPPERS.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"[*_`#]+", " ", s)
    return re.sub(r"\s+", " ", s).strip()


_BRACE = re.compile(r"[{}]")


def boxed_contents(s: str, max_len: int = 500) -> list[tuple[int, str]]:
    """All `\\boxed{...}` / `\\fbox{...}` contents with their start offsets (balanced braces, at most
    ``max_len`` characters each). Linear time: one pass matches every brace of the text."""
    starts = [(m.start(), m.end()) for m in _BOXED_START.finditer(s)]
    if not starts:
        return []
    close: dict[int, int] = {}  # position of a "{" -> position of its matching "}"
    stack: list[int] = []
    for m in _BRACE.finditer(s, starts[0][1] - 1):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            close[stack.pop()] = m.start()
    out = []
    for start, end in starts:
        j = close.get(end - 1)
        if j is not None and j - end < max_len:
            out.append((start, s[end:j]))
    return out


_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</answer>", re.IGNORECASE)


def answer_blocks(text: str, *, ignore_case: bool = True) -> list[str]:
    """The bodies of the `<answer>…</answer>` blocks, as ``re.findall(r"<answer>(.*?)</answer>", text, re.S)``
    gives them, in linear time (that regex is quadratic on an unclosed `<answer>` repeated many times)."""
    flags = re.IGNORECASE if ignore_case else 0
    opens = _OPEN_TAG if ignore_case else re.compile("<answer>", flags)
    closes = _CLOSE_TAG if ignore_case else re.compile("</answer>", flags)
    out, pos = [], 0
    while True:
        m = opens.search(text, pos)
        if m is None:
            return out
        c = closes.search(text, m.end())
        if c is None:
            return out
        out.append(text[m.end() : c.start()])
        pos = c.end()


def last_answer_block(text: str, *, ignore_case: bool = True) -> str | None:
    """The body of the last `<answer>…</answer>` block (unstripped), or None; linear time."""
    blocks = answer_blocks(text or "", ignore_case=ignore_case)
    return blocks[-1] if blocks else None


_ANSWER_PREFIX = re.compile(
    r"^(?:so|thus|therefore|hence)?[,\s]*(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)"
    r"\s*(?:is|:|=)\s*",
    re.IGNORECASE,
)


def clean_answer(s: str) -> str:
    """Reduce an answer span to its core: unwrap a final `\\boxed{}`, drop "the answer is", markup, end period."""
    s = s.strip()
    boxes = boxed_contents(s)
    if boxes:
        s = boxes[-1][1]
    s = strip_markup(s)
    s = _ANSWER_PREFIX.sub("", s)
    s = re.sub(
        r"^(?:approximately|approx\.?|about|around|roughly|exactly|equal to|that)\s+",
        "",
        s,
        flags=re.IGNORECASE,
    )
    s = s.strip().rstrip(".。;,!").strip()
    return s


def normalize_text(s: str) -> str:
    """Case/space/punctuation-insensitive form used for string comparison."""
    s = clean_answer(s).lower()
    s = (
        s.replace("\\left", "")
        .replace("\\right", "")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace("\\ ", "")
    )
    s = re.sub(r"[\s{}]", "", s)
    s = s.rstrip(".")
    return s


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------------------------

_LABEL_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\s*[.):：])\s*")
# A lone "A" followed by one of these words is still the option letter ("A because ..."); followed by any other
# lowercase word it is the English article ("A right triangle") and no letter is read.
_CONNECTIVES = {
    "because",
    "since",
    "as",
    "is",
    "and",
    "or",
    "which",
    "with",
    "so",
    "for",
    "given",
    "it",
    "here",
}
_LEAD_LETTER = re.compile(
    r"^(?:(?:both|either)\s+)?(?:(?:option|choice)\s*)?[(\[]?\s*([A-Z])\s*[)\]]?(?=$|[\s.:,;)\]/&+])",
    re.IGNORECASE,
)
_MORE_LETTERS = re.compile(
    r"^\s*[.)\]]?\s*(?:,|&|/|\+|\band\b|\bor\b)\s*(?:(?:option|choice)\s*)?[(\[]?\s*([A-Z])\s*[)\]]?(?=$|[\s.:,;)\]/&+])",
    re.IGNORECASE,
)
_LISTED_LABEL = re.compile(r"(?:^|\s)(?:\(([A-Z])\)|([A-Z])[.):])(?=\s)")


def strip_choice_label(text: str, letter: str) -> str:
    """ "B. 8/11" / "(B) 8/11" / "B: 8/11" -> "8/11" when the label is `letter`."""
    m = _LABEL_PREFIX.match(text)
    if m and (m.group(1) or m.group(2) or m.group(3)) == letter:
        return text[m.end() :].strip()
    return text.strip()


def clean_choices(choices) -> list[str] | None:
    """Choice texts without their "A." labels, or None when there are no choices."""
    if choices is None:
        return None
    out = [str(c).strip() for c in choices]
    if not out:
        return None
    if all(_LABEL_PREFIX.match(c) for c in out):
        out = [strip_choice_label(c, LETTERS[i]) if i < 26 else c for i, c in enumerate(out)]
    return out


def parse_letters(span: str, labels: str = DEFAULT_LABELS) -> list[str] | None:
    """Option letters given as an answer at the start of `span`, or None when it does not start with one.

    "B", "(B)", "B. 8/11", "Option B", "\\boxed{B}" -> ["B"]; "A and C", "A, C" -> ["A", "C"] (several letters are
    reported so that the caller can mark them wrong). A span that *lists* options ("A. 3 B. 4 C. 5") is not an
    answer and gives None.
    """
    s = strip_markup(span.strip())
    boxes = boxed_contents(span)
    if boxes and not _LEAD_LETTER.match(s):
        s = strip_markup(boxes[-1][1])
    s = _ANSWER_PREFIX.sub("", s).strip()
    # The whole span is one letter: accept lower case too ("(b)").
    m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?", s)
    if m:
        letter = m.group(1).upper()
        return [letter] if letter in labels else None
    m = _LEAD_LETTER.match(s)
    if not m or (m.group(1) != m.group(1).upper()):
        return None
    letters = [m.group(1).upper()]
    rest = s[m.end() :]
    if letters[0] == "A" and not re.match(r"^\s*[(\[]", s):
        word = re.match(r"^\s+([a-z]+)", rest)
        if word and word.group(1) not in _CONNECTIVES:
            return None  # the article "A", not the option
    while True:
        m2 = _MORE_LETTERS.match(rest)
        if not m2:
            break
        letters.append(m2.group(1).upper())
        rest = rest[m2.end() :]
    if len(letters) == 1:
        listed = {a or b for a, b in _LISTED_LABEL.findall(" " + s)}
        if len(listed - {letters[0]}) >= 1 and len(listed) >= 2:
            return None  # "A. 3 B. 4 C. 5": options being listed, not chosen
    if any(x not in labels for x in letters):
        return letters if len(letters) > 1 else None
    return list(dict.fromkeys(letters))


def parse_choices_field(raw: str) -> list[str] | None:
    """Read a `choices` / `options` TSV field: a JSON or Python list/dict literal, or "A. x\\nB. y" text.

    Returns choice texts (labels removed) or None when the field is empty. Raises ValueError when it cannot be read.
    """
    s = (raw or "").strip()
    if not s or s.lower() in {"nan", "none", "[]", "{}"}:
        return None
    if s[0] in "[{":
        if len(s) > 100_000:
            raise ValueError("choices field too long")
        try:
            val = json.loads(s)
        except RecursionError:
            raise ValueError("choices literal is nested too deeply") from None
        except ValueError:
            try:
                val = ast.literal_eval(s)  # literals only; never eval()
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
                raise ValueError(f"unreadable choices literal: {type(e).__name__}: {e}") from None
        if isinstance(val, dict):
            val = [val[k] for k in sorted(val, key=str)]
        if not isinstance(val, (list, tuple)) or not val:
            raise ValueError("choices literal is not a non-empty list")
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in val):
            raise ValueError("choices literal holds nested values; expected option texts")
        return clean_choices([str(v) for v in val])
    # Text: labels "A." / "(A)" / "A:" / "A)" in order A, B, C, ... at line starts or after whitespace.
    marks = list(re.finditer(r"(?:^|(?<=\s))(?:\(([A-Z])\)|([A-Z])[.):：])\s*", s))
    picked, want = [], 0
    for m in marks:
        letter = m.group(1) or m.group(2)
        if letter == LETTERS[want]:
            picked.append(m)
            want += 1
    if len(picked) >= 2:
        texts = [
            s[m.end() : (picked[i + 1].start() if i + 1 < len(picked) else len(s))]
            for i, m in enumerate(picked)
        ]
        return [t.strip().rstrip(";,").strip() for t in texts]
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    if len(lines) >= 2:
        return clean_choices(lines)
    raise ValueError("choices text has no A/B/... labels")


def choices_from_question(question: str) -> list[str] | None:
    """Options embedded in the question text, else None.

    "…\nChoices:\nA:2\nB:2√3 …" (MathVerse) or, without a "Choices:" marker, lines starting "A." / "(A)" / "A:"
    followed by B, C, … at the end of the question.
    """
    m = re.search(r"(?:choices|options)\s*[:：]\s*", question, re.IGNORECASE)
    if m is None:
        m = re.search(r"(?m)^[ \t]*(?:\(A\)|A[.):：])", question)
        if m is None:
            return None
        start = m.start()
    else:
        start = m.end()
    try:
        got = parse_choices_field(question[start:])
    except ValueError:
        return None
    return got if got and len(got) >= 2 else None


# ---------------------------------------------------------------------------------------------------------------
# Numbers with units
# ---------------------------------------------------------------------------------------------------------------

# unit -> (dimension, factor to SI base). Areas/volumes come from a power suffix (cm^2).
_UNITS = {
    "mm": ("length", 1e-3),
    "cm": ("length", 1e-2),
    "dm": ("length", 1e-1),
    "m": ("length", 1.0),
    "km": ("length", 1e3),
    "meter": ("length", 1.0),
    "meters": ("length", 1.0),
    "metre": ("length", 1.0),
    "centimeter": ("length", 1e-2),
    "centimeters": ("length", 1e-2),
    "kilometer": ("length", 1e3),
    "kilometers": ("length", 1e3),
    "mg": ("mass", 1e-6),
    "g": ("mass", 1e-3),
    "kg": ("mass", 1.0),
    "gram": ("mass", 1e-3),
    "grams": ("mass", 1e-3),
    "kilogram": ("mass", 1.0),
    "kilograms": ("mass", 1.0),
    "ms": ("time", 1e-3),
    "s": ("time", 1.0),
    "sec": ("time", 1.0),
    "second": ("time", 1.0),
    "seconds": ("time", 1.0),
    "min": ("time", 60.0),
    "minute": ("time", 60.0),
    "minutes": ("time", 60.0),
    "h": ("time", 3600.0),
    "hr": ("time", 3600.0),
    "hour": ("time", 3600.0),
    "hours": ("time", 3600.0),
    "ml": ("volume", 1e-6),
    "l": ("volume", 1e-3),
    "liter": ("volume", 1e-3),
    "liters": ("volume", 1e-3),
    "deg": ("angle", 1.0),
    "degree": ("angle", 1.0),
    "degrees": ("angle", 1.0),
}
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_QUANTITY = re.compile(rf"^(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?\s*(?P<unit>[^\d\s=<>].{{0,30}})?$")
_FRAC = re.compile(
    r"^(?P<sign>[-+]?)\\[dt]?frac\s*\{\s*(?P<num>[^{}]+?)\s*\}\s*\{\s*(?P<den>[^{}]+?)\s*\}\s*(?P<unit>.*)$"
)


@dataclass(frozen=True)
class Quantity:
    """A number read from text: `value` in the unit as written, `decimals` of the literal (for rounding)."""

    value: float
    unit: str | None  # normalized unit text ("cm^2", "%", "deg") or None
    decimals: int


def _norm_unit(u: str | None) -> str | None:
    if not u:
        return None
    u = u.strip().lower()
    u = u.replace("²", "^2").replace("³", "^3").replace("^{2}", "^2").replace("^{3}", "^3")
    u = re.sub(r"^\^\s*\{?\\circ\}?|^°|^\\degree", "deg", u)
    u = u.replace("\\%", "%").replace("percent", "%")
    u = re.sub(r"\s+", " ", u).strip(" .")
    u = re.sub(r"^(?:square|sq\.?)\s+(\w+)$", r"\1^2", u)
    u = re.sub(r"^(?:cubic)\s+(\w+)$", r"\1^3", u)
    return u or None


_MATH_WORDS = {"pi", "sin", "cos", "tan", "cot", "csc", "log", "ln", "sqrt", "exp", "frac", "i", "e"}


def _is_unit(unit: str) -> bool:
    """Known units, '%', 'deg', or plain words of 3+ letters ("apples", "square units", "m/s"); not variables."""
    if unit in ("%", "deg") or _si(unit) is not None:
        return True
    if not re.fullmatch(r"[a-zµμ][a-zµμ/ ]*(?:\^[23])?", unit) or len(unit.split()) > 3:
        return False
    first = re.split(r"[ /^]", unit)[0]
    return first not in _MATH_WORDS and (len(first) >= 3 or "/" in unit or first in _UNITS)


def parse_quantity(text: str) -> Quantity | None:
    """'3.5', '-1/2', '\\frac{3}{4}', '12 cm', '50%', '30°', '1,000' -> Quantity; anything else -> None."""
    s = strip_markup(text)
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)  # thousands separators
    s = s.replace("{,}", "")
    if len(s) > 60:
        return None
    m = _FRAC.match(s)
    if m:
        try:
            num, den = float(m.group("num")), float(m.group("den"))
        except ValueError:
            return None
        if den == 0:
            return None
        val = num / den * (-1.0 if m.group("sign") == "-" else 1.0)
        return Quantity(val, _norm_unit(m.group("unit")), decimals=-1)
    m = _QUANTITY.match(s)
    if not m:
        return None
    unit = _norm_unit(m.group("unit"))
    if unit is not None and not _is_unit(unit):
        return None  # "2x", "5 + x", "2 pi": an expression, not a quantity
    try:
        num = float(m.group("num"))
        if m.group("den") is not None:
            den = float(m.group("den"))
            if den == 0:
                return None
            return Quantity(num / den, unit, decimals=-1)
    except (ValueError, OverflowError):
        return None
    frac = m.group("num").lower().split("e")[0]
    decimals = len(frac.split(".")[1]) if "." in frac else 0
    return Quantity(num, unit, decimals)


def _si(unit: str) -> tuple[str, float] | None:
    m = re.fullmatch(r"([a-z]+)(?:\^([23]))?", unit)
    if not m or m.group(1) not in _UNITS:
        return None
    dim, f = _UNITS[m.group(1)]
    p = int(m.group(2) or 1)
    if p > 1 and dim != "length":
        return None
    return f"{dim}^{p}", f**p


def quantities_match(pred: Quantity, gold: Quantity, rel_tol: float = 1e-4) -> bool:
    """Numeric equality with tolerance, unit conversion (length/mass/time/volume), percent and rounding.

    * tolerance: |p - g| <= max(rel_tol * |g|, 1e-9); when the gold is a decimal literal with d >= 1 decimals, a
      prediction that rounds to it (|p - g| <= 0.5 * 10^-d) also matches ("3.1416" for gold "3.14").
    * a unit on one side only is ignored; units on both sides must agree after conversion ("0.5 m" == "50 cm").
    * a fraction gold ("1/3") also accepts a decimal with >= 2 decimals that it rounds to ("0.33", not "0.3").
    * percent: "50%" matches "0.5" and "50".
    """
    pv, gv = pred.value, gold.value
    pu, gu = pred.unit, gold.unit
    candidates = [pv]
    if pu == "%" and gu != "%":
        candidates.append(pv / 100.0)
    if gu == "%" and pu != "%":
        candidates.append(pv * 100.0)
    if pu and gu and pu != gu and "%" not in (pu, gu):
        ps, gs = _si(pu), _si(gu)
        if ps is None or gs is None or ps[0] != gs[0]:
            return False
        candidates = [pv * ps[1] / gs[1]]
    tol = max(rel_tol * abs(gv), 1e-9)
    if gold.decimals >= 1:
        tol = max(tol, 0.5 * 10.0 ** (-gold.decimals) * (1 + 1e-9))
    elif gold.decimals == -1 and pred.decimals >= 2:  # a fraction gold given as a decimal: "0.33" for 1/3
        tol = max(tol, 0.5 * 10.0 ** (-pred.decimals) * (1 + 1e-9))
    return any(abs(c - gv) <= tol for c in candidates)
