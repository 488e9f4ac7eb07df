"""Shared pieces of the generators: levels, seeded RNG, fonts, PNG encoding, number formatting, multiple choice.

Everything here is deterministic: a generator given the same seed returns the same record, byte for byte (for a
fixed Pillow version: PNG encoding and font rasterization are Pillow's).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import random
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from PIL import Image, ImageFont

from r1ov_jax.data.record import LEVELS, Record, letter

# Probability that a generated item is multiple choice (4 options) rather than free form. The Bench is ~83% MC;
# we keep free-form answers common too so small models learn to write numbers.
MC_PROB = 0.4


def rng_for(kind: str, seed: int) -> random.Random:
    """Independent stream per (generator, seed): seeds of different generators don't share draws."""
    return random.Random(f"r1ov/{kind}/{int(seed)}")


def resolve_level(level: int | str | None, rng: random.Random) -> int:
    """Difficulty knob 0..3 → index into LEVELS (Junior High School, High School, College, Social Test)."""
    if level is None:
        return rng.randrange(len(LEVELS))
    if isinstance(level, str):
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {LEVELS} or 0..{len(LEVELS) - 1}")
        return LEVELS.index(level)
    if not 0 <= int(level) < len(LEVELS):
        raise ValueError(f"level must be in 0..{len(LEVELS) - 1} or a grade name, got {level!r}")
    return int(level)


@functools.cache
def font(size: int = 13) -> ImageFont.FreeTypeFont:
    """DejaVu Sans shipped inside matplotlib's package data (has Ω, ∥, ×), else Pillow's bundled default."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def text_size(text: str, size: int = 13) -> tuple[int, int]:
    x0, y0, x1, y1 = font(size).getbbox(text)
    return x1 - x0, y1 - y0


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: ~3x faster than the default and these flat drawings still compress well.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fmt_num(x: float | Fraction, places: int = 2) -> str:
    """Short checkable number: integers as-is, else rounded half-up to `places` decimals, trailing zeros dropped."""
    if isinstance(x, int):
        return str(x)
    d = Decimal(x.numerator) / Decimal(x.denominator) if isinstance(x, Fraction) else Decimal(repr(float(x)))
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    s = format(q, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def numeric_distractors(rng: random.Random, gold: str, k: int = 3) -> list[str]:
    """k distinct plausible wrong numbers near `gold` (same number of decimals)."""
    places = len(gold.split(".")[1]) if "." in gold else 0
    g = float(gold)
    step = 10.0**-places if places else 1.0
    scale = max(abs(g) * 0.25, step * 3)
    out: list[str] = []
    seen = {gold}
    for _ in range(200):
        delta = rng.choice([-1, 1]) * max(step, round(rng.uniform(0.1, 1.0) * scale / step) * step)
        cand = fmt_num(Fraction(repr(g + delta)), places) if places else str(int(round(g + delta)))
        if cand not in seen and not (g >= 0 and float(cand) < 0):
            seen.add(cand)
            out.append(cand)
            if len(out) == k:
                return out
    raise RuntimeError(f"could not make {k} distractors for {gold!r}")


def make_choices(rng: random.Random, gold: str, distractors: list[str]) -> tuple[list[str], str]:
    """Shuffle gold among distractors; return (choices, gold letter)."""
    opts = [gold] + [d for d in distractors if d != gold]
    rng.shuffle(opts)
    return opts, letter(opts.index(gold))


def finish(
    kind: str,
    seed: int,
    level: int,
    category: str,
    image: Image.Image,
    formal: str,
    question: str,
    gold: str,
    query: dict,
    rng: random.Random,
    distractors: list[str] | None = None,
    **meta,
) -> Record:
    """Assemble the Record; turn it into multiple choice with probability MC_PROB (when distractors exist)."""
    choices, answer = None, gold
    if distractors is not None and rng.random() < MC_PROB:
        choices, answer = make_choices(rng, gold, distractors)
    m = {"type": kind, "level": LEVELS[level], "difficulty": level, "category": category, "seed": int(seed)}
    m.update(query=query, value=gold, **meta)
    rec = Record(
        id=f"{kind}-{seed}",
        images=[png_bytes(image)],
        formal=formal,
        question=question,
        answer=answer,
        choices=choices,
        meta=m,
    )
    return rec.validate()
