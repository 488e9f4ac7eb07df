"""Documents (rendered text) → formal = the text itself (what OCR of the page returns, line by line).

Three document kinds: a shop receipt (Math), a seed-germination lab report (Biology), an event schedule (Deduction).
Questions by grade: read one field (JHS), one derived quantity (HS), an aggregate over all lines (College), a
what-if deduction (Social Test).
"""

from __future__ import annotations

from fractions import Fraction

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import (
    finish,
    fmt_num,
    font,
    numeric_distractors,
    resolve_level,
    rng_for,
    text_size,
)
from r1ov_jax.data.record import Record

KIND = "document"
ITEMS = [
    ("Notebook", "notebooks"),
    ("Pencil", "pencils"),
    ("Eraser", "erasers"),
    ("Ruler", "rulers"),
    ("Marker", "markers"),
    ("Folder", "folders"),
    ("Stapler", "staplers"),
    ("Glue stick", "glue sticks"),
]
SHOPS = ["Corner Stationery", "Paper & Co.", "Green Leaf Supplies", "Campus Store"]
SESSIONS = [
    "Registration",
    "Keynote",
    "Poster session",
    "Lunch",
    "Panel",
    "Workshop",
    "Coffee break",
    "Closing",
]
SEEDS = ["bean", "radish", "lettuce", "wheat", "pea"]


def _hm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _receipt(rng, lv: int):
    n = rng.randint(3, 5)
    items = rng.sample(ITEMS, n)
    qty = [rng.randint(1, 12) for _ in items]
    cents = [rng.randrange(20, 1000, 5) for _ in items]
    lines = [
        f"RECEIPT - {rng.choice(SHOPS)}",
        f"Date: {rng.randint(1, 28)} {rng.choice(['March', 'April', 'May'])}",
    ]
    lines += [f"{name}: {q} x ${c / 100:.2f}" for (name, _), q, c in zip(items, qty, cents)]
    i = rng.randrange(n)
    plural = items[i][1]
    total = sum(q * c for q, c in zip(qty, cents))
    if lv == 0:
        return (
            lines,
            "Math",
            str(qty[i]),
            {"op": "qty", "item": items[i][0]},
            f"How many {plural} were bought?",
        )
    if lv == 1:
        return (
            lines,
            "Math",
            fmt_num(Fraction(qty[i] * cents[i], 100), 2),
            {"op": "line_cost", "item": items[i][0]},
            f"How much was spent on {plural} in total (in dollars)?",
        )
    if lv == 2:
        return (
            lines,
            "Math",
            fmt_num(Fraction(total, 100), 2),
            {"op": "total"},
            "What is the total amount of the receipt (in dollars)?",
        )
    paid = (total // 1000 + 1) * 1000 + rng.choice([0, 1000, 4000])  # a round note amount above the total
    return (
        lines,
        "Math",
        fmt_num(Fraction(paid - total, 100), 2),
        {"op": "change", "paid": paid / 100},
        f"The customer paid with ${paid / 100:.2f}. How much change (in dollars) should they receive?",
    )


def _germination(rng, lv: int):
    n = rng.randint(3, 5)
    plots = "ABCDE"[:n]
    planted = [rng.choice([20, 25, 30, 40, 50]) for _ in plots]
    while True:
        germ = [rng.randint(p // 3, p) for p in planted]
        rates = [Fraction(g, p) for g, p in zip(germ, planted)]
        if len(set(rates)) == n:
            break
    seed = rng.choice(SEEDS)
    lines = [f"Lab report: germination of {seed} seeds", f"Temperature: {rng.randint(18, 26)} C, 7 days"]
    lines += [f"Plot {p}: {pl} seeds planted, {g} germinated" for p, pl, g in zip(plots, planted, germ)]
    i = rng.randrange(n)
    if lv == 0:
        return (
            lines,
            "Biology",
            str(planted[i] - germ[i]),
            {"op": "not_germinated", "plot": plots[i]},
            f"How many seeds in plot {plots[i]} did not germinate?",
        )
    if lv == 1:
        return (
            lines,
            "Biology",
            fmt_num(100 * rates[i], 1),
            {"op": "rate", "plot": plots[i]},
            f"What is the germination rate of plot {plots[i]} in percent? Round to one decimal place.",
        )
    if lv == 2:
        return (
            lines,
            "Biology",
            fmt_num(Fraction(100 * sum(germ), sum(planted)), 1),
            {"op": "overall_rate"},
            "What is the overall germination rate across all plots in percent? Round to one decimal place.",
        )
    best = plots[rates.index(max(rates))]
    return (
        lines,
        "Biology",
        best,
        {"op": "best_plot"},
        "Which plot has the highest germination rate? Answer with the plot letter.",
    )


def _schedule(rng, lv: int):
    n = rng.randint(4, 6)
    names = rng.sample(SESSIONS, n)
    t = rng.choice([8 * 60, 8 * 60 + 30, 9 * 60])
    rows = []
    for name in names:
        dur = rng.choice([15, 20, 30, 45, 60, 75, 90])
        rows.append((t, t + dur, name))
        t += dur
    lines = [f"Schedule - {rng.choice(['Science Day', 'Math Fair', 'Open House'])}"]
    lines += [f"{_hm(a)}-{_hm(b)} {name}" for a, b, name in rows]
    i = rng.randrange(n)
    a, b, name = rows[i]
    if lv == 0:
        return (
            lines,
            "Deduction",
            name,
            {"op": "starts_at", "time": _hm(a)},
            f"Which session starts at {_hm(a)}?",
        )
    if lv == 1:
        return (
            lines,
            "Deduction",
            str(b - a),
            {"op": "duration", "session": name},
            f"How many minutes does the {name} last?",
        )
    if lv == 2:
        m = rng.choice([20, 30, 45, 60])
        return (
            lines,
            "Deduction",
            str(sum(y - x > m for x, y, _ in rows)),
            {"op": "count_longer", "minutes": m},
            f"How many sessions last longer than {m} minutes?",
        )
    delay = rng.choice([10, 15, 20, 25, 40])
    return (
        lines,
        "Deduction",
        _hm(b + delay),
        {"op": "delayed_end", "session": name, "delay": delay},
        f"If the {name} starts {delay} minutes late and keeps its length, at what time (HH:MM) does it end?",
    )


def _draw(lines: list[str]) -> Image.Image:
    w = max(max(text_size(s, 14)[0] for s in lines) + 48, 280)
    h = 36 + 26 * len(lines) + 20
    img = Image.new("RGB", (w, h), (236, 233, 225))
    d = ImageDraw.Draw(img)
    d.rectangle([8, 8, w - 9, h - 9], fill="white", outline=(170, 170, 170))
    for k, s in enumerate(lines):
        y = 26 + 26 * k
        d.text((24, y), s, fill="black", font=font(15 if k == 0 else 14), anchor="lm")
        if k == 0:
            d.line([(24, y + 13), (w - 24, y + 13)], fill=(120, 120, 120))
    return img


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    doc = rng.choice(["receipt", "germination", "schedule"])
    lines, category, gold, query, question = {
        "receipt": _receipt,
        "germination": _germination,
        "schedule": _schedule,
    }[doc](rng, lv)
    if ":" in gold or gold.isalpha() or " " in gold:
        dis = None
        if doc == "schedule" and lv == 0:
            dis = [s.split(" ", 1)[1] for s in lines[1:] if s.split(" ", 1)[1] != gold][:3]
    else:
        dis = numeric_distractors(rng, gold)
    return finish(
        KIND,
        seed,
        lv,
        category,
        _draw(lines),
        "\n".join(lines) + "\n",
        question,
        gold,
        query,
        rng,
        dis,
        document=doc,
    )
