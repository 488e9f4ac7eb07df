"""Tables → formal = the table as markdown or CSV (what OCR/table parsing of a document image yields).

Questions by grade: cell lookups and which row is largest (JHS); column sums, row differences, counts above a
threshold (HS); column means and per-row ratios of two columns (College); the row with the largest row total
(Social Test). Themes carry the Bench categories (Chemistry, Biology, Physics, Math).
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

KIND = "table"

# (title, row header, rows pool, columns (name, lo, hi), category)
THEMES = [
    (
        "Mass of product per trial (g)",
        "Trial",
        ["T1", "T2", "T3", "T4", "T5", "T6"],
        [("NaCl", 10, 60), ("KCl", 10, 60), ("CaCl2", 10, 60), ("MgCl2", 10, 60)],
        "Chemistry",
    ),
    (
        "Seedling height by week (mm)",
        "Plant",
        ["Bean", "Pea", "Corn", "Oat", "Rye", "Flax"],
        [("Week 1", 5, 30), ("Week 2", 20, 60), ("Week 3", 40, 99), ("Week 4", 60, 140)],
        "Biology",
    ),
    (
        "Spring tests",
        "Spring",
        ["S1", "S2", "S3", "S4", "S5", "S6"],
        [("Load (N)", 2, 40), ("Stretch (cm)", 1, 20), ("Length (cm)", 10, 30)],
        "Physics",
    ),
    (
        "Test scores",
        "Student",
        ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn"],
        [("Algebra", 40, 100), ("Geometry", 40, 100), ("Statistics", 40, 100)],
        "Math",
    ),
    (
        "Monthly sales (units)",
        "Shop",
        ["North", "South", "East", "West", "Central", "Harbor"],
        [("Jan", 20, 90), ("Feb", 20, 90), ("Mar", 20, 90), ("Apr", 20, 90)],
        "Deduction",
    ),
]


def _draw(title: str, header: list[str], rows: list[list[str]]) -> Image.Image:
    widths = [max(text_size(r[j], 13)[0] for r in [header] + rows) + 18 for j in range(len(header))]
    rh = 26
    w = max(sum(widths) + 20, text_size(title, 14)[0] + 20, 224)
    h = 44 + rh * (len(rows) + 1) + 12
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((w // 2, 10), title, fill="black", font=font(14), anchor="mt")
    x0, y0 = 10, 40
    d.rectangle([x0, y0, x0 + sum(widths), y0 + rh], fill="#D9E2F3")
    for i, row in enumerate([header] + rows):
        y = y0 + i * rh
        if i > 0 and i % 2 == 0:
            d.rectangle([x0, y, x0 + sum(widths), y + rh], fill="#F4F6FA")
        x = x0
        for j, cell in enumerate(row):
            d.text((x + 9, y + rh // 2), cell, fill="black", font=font(13), anchor="lm")
            x += widths[j]
    for i in range(len(rows) + 2):
        d.line([(x0, y0 + i * rh), (x0 + sum(widths), y0 + i * rh)], fill="#7F7F7F")
    x = x0
    for wj in [0] + widths:
        x += wj
        d.line([(x, y0), (x, y0 + rh * (len(rows) + 1))], fill="#7F7F7F")
    return img


def _formal(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [f"Table: {title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        lines = [f"# {title}", ",".join(header)] + [",".join(r) for r in rows]
    return "\n".join(lines) + "\n"


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    title, rowhead, pool, cols, category = rng.choice(THEMES)
    nr = rng.randint(3, 4) if lv == 0 else rng.randint(4, 6)
    names = rng.sample(pool, nr)
    ncol = min(len(cols), 2 if lv == 0 else rng.randint(2, len(cols)))
    use = cols[:ncol]
    while True:  # distinct values per column keep argmax/argmin well defined
        data = [[rng.randint(lo, hi) for (_, lo, hi) in use] for _ in names]
        if all(len({r[j] for r in data}) == nr for j in range(ncol)) and len({sum(r) for r in data}) == nr:
            break
    header = [rowhead] + [c[0] for c in use]
    rows = [[n] + [str(v) for v in r] for n, r in zip(names, data)]
    col = lambda j: [r[j] for r in data]
    j = rng.randrange(ncol)
    cname = use[j][0]
    if lv == 0:
        op = rng.choice(["lookup", "argmax", "argmin"])
    elif lv == 1:
        op = rng.choice(["sum", "row_diff", "count_gt"])
    elif lv == 2:
        op = rng.choice(["mean", "ratio"])
    else:
        op = "row_total_argmax"
    other_rows = lambda r: [x for x in names if x != r][:3]
    dis = None
    if op == "lookup":
        i = rng.randrange(nr)
        gold, query = str(data[i][j]), {"op": "lookup", "row": names[i], "col": cname}
        question = f"What is the {cname} value for {names[i]}?"
    elif op in ("argmax", "argmin"):
        vals = col(j)
        i = vals.index(max(vals) if op == "argmax" else min(vals))
        gold, query = names[i], {"op": op, "col": cname}
        question = f"Which {rowhead.lower()} has the {'highest' if op == 'argmax' else 'lowest'} {cname}?"
        dis = other_rows(gold)
    elif op == "sum":
        gold, query = str(sum(col(j))), {"op": "sum", "col": cname}
        question = f"What is the total of the {cname} column?"
    elif op == "row_diff":
        a, b = rng.sample(range(nr), 2)
        gold = str(data[a][j] - data[b][j])
        query = {"op": "row_diff", "a": names[a], "b": names[b], "col": cname}
        question = (
            f"How much larger is the {cname} of {names[a]} than that of {names[b]}? (Negative if smaller.)"
        )
    elif op == "count_gt":
        t = sorted(col(j))[rng.randrange(1, nr)] - 1
        gold, query = str(sum(v > t for v in col(j))), {"op": "count_gt", "col": cname, "threshold": t}
        question = f"How many rows have a {cname} greater than {t}?"
    elif op == "mean":
        gold, query = fmt_num(Fraction(sum(col(j)), nr), 2), {"op": "mean", "col": cname}
        question = f"What is the mean {cname}? Round to two decimal places."
    elif op == "ratio":
        i = rng.randrange(nr)
        a, b = rng.sample(range(ncol), 2)
        gold = fmt_num(Fraction(data[i][a], data[i][b]), 2)
        query = {"op": "ratio", "row": names[i], "num": use[a][0], "den": use[b][0]}
        question = f"For {names[i]}, what is {use[a][0]} divided by {use[b][0]}? Round to two decimal places."
    else:
        totals = [sum(r) for r in data]
        gold, query = names[totals.index(max(totals))], {"op": "row_total_argmax"}
        question = f"Which {rowhead.lower()} has the largest total across all numeric columns?"
        dis = other_rows(gold)
    if dis is None:
        dis = numeric_distractors(rng, gold)
    markdown = rng.random() < 0.5
    return finish(
        KIND,
        seed,
        lv,
        category,
        _draw(title, header, rows),
        _formal(title, header, rows, markdown),
        question,
        gold,
        query,
        rng,
        dis,
    )
