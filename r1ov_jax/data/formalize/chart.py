"""Charts (bar / line / pie) → formal = the data CSV + the matplotlib code that reproduces the chart.

Drawn with PIL (fast); the plotting code in the formal text is what a person would write to make the same chart.
Questions by grade: read a value / find the largest or smallest, by label or by position from the left (JHS),
differences, sums, counts, pie shares (HS), means and the largest gap between two series (College), percentage
change as in data-interpretation tests (Social Test).
"""

from __future__ import annotations

from fractions import Fraction

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import finish, fmt_num, font, numeric_distractors, resolve_level, rng_for
from r1ov_jax.data.record import Record

KIND = "chart"
W, H = 400, 320
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

# (title, unit, labels, series names, category)
THEMES = [
    (
        "Fruit sold per day",
        "boxes",
        ["Apples", "Pears", "Plums", "Figs", "Kiwis", "Limes", "Mangos"],
        ("Mon", "Tue"),
        "Math",
    ),
    (
        "Birds counted by species",
        "birds",
        ["Robin", "Finch", "Crow", "Wren", "Heron", "Owl", "Swift"],
        ("2023", "2024"),
        "Biology",
    ),
    (
        "Reaction yield by catalyst",
        "%",
        ["Pt", "Pd", "Ni", "Fe", "Cu", "Co", "Ru"],
        ("run 1", "run 2"),
        "Chemistry",
    ),
    (
        "Distance covered by cart",
        "m",
        ["t=1s", "t=2s", "t=3s", "t=4s", "t=5s", "t=6s", "t=7s"],
        ("cart A", "cart B"),
        "Physics",
    ),
    (
        "Visitors per month",
        "people",
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul"],
        ("Store 1", "Store 2"),
        "Math",
    ),
]


def _nice_step(vmax: int) -> int:
    for s in (5, 10, 20, 25, 50):
        if vmax / s <= 6:
            return s
    return 100


def _axes(d: ImageDraw.ImageDraw, title: str, unit: str, vmax: int, box: tuple[int, int, int, int]) -> float:
    """Draw title, y axis with ticks and grid; return pixels per unit."""
    x0, y0, x1, y1 = box
    d.text((W // 2, 8), title, fill="black", font=font(14), anchor="mt")
    d.text((6, y0 - 18), unit, fill="black", font=font(11))
    step = _nice_step(vmax)
    top = (vmax // step + 1) * step
    scale = (y1 - y0) / top
    for v in range(0, top + 1, step):
        y = y1 - v * scale
        d.line([(x0, y), (x1, y)], fill="#E5E5E5")
        d.text((x0 - 4, y), str(v), fill="black", font=font(10), anchor="rm")
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    return scale


def _draw(
    kind: str, title: str, unit: str, labels: list[str], series: list[tuple[str, list[int]]]
) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    if kind == "pie":
        values = series[0][1]
        total = sum(values)
        d.text((W // 2, 8), title, fill="black", font=font(14), anchor="mt")
        cx, cy, r = 150, 170, 110
        start = -90.0
        for i, (lab, v) in enumerate(zip(labels, values)):
            end = start + 360.0 * v / total
            d.pieslice([cx - r, cy - r, cx + r, cy + r], start, end, fill=PALETTE[i % 8], outline="white")
            start = end
        for i, (lab, v) in enumerate(zip(labels, values)):  # legend with the counts
            y = 60 + 24 * i
            d.rectangle([280, y, 292, y + 12], fill=PALETTE[i % 8])
            d.text((298, y + 6), f"{lab}: {v}", fill="black", font=font(12), anchor="lm")
        return img
    vmax = max(max(v) for _, v in series)
    box = (46, 50, W - 14, H - 40)
    scale = _axes(d, title, unit, vmax, box)
    x0, y0, x1, y1 = box
    n = len(labels)
    slot = (x1 - x0) / n
    for j, lab in enumerate(labels):
        d.text((x0 + slot * (j + 0.5), y1 + 6), lab, fill="black", font=font(11), anchor="mt")
    ns = len(series)
    for s, (name, values) in enumerate(series):
        color = PALETTE[s]
        if ns > 1:  # legend
            lx = x0 + 10 + 110 * s
            d.rectangle([lx, H - 18, lx + 12, H - 6], fill=color)
            d.text((lx + 16, H - 12), name, fill="black", font=font(11), anchor="lm")
        pts = []
        for j, v in enumerate(values):
            if kind == "bar":
                bw = slot * 0.7 / ns
                bx = x0 + slot * j + slot * 0.15 + bw * s
                d.rectangle([bx, y1 - v * scale, bx + bw - 1, y1 - 1], fill=color)
                d.text((bx + bw / 2, y1 - v * scale - 2), str(v), fill="black", font=font(10), anchor="mb")
            else:
                pts.append((x0 + slot * (j + 0.5), y1 - v * scale))
        if kind == "line":
            d.line(pts, fill=color, width=2)
            for (px, py), v in zip(pts, values):
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
                below = s == 1  # second series labels under its points so the two don't collide
                d.text(
                    (px, py + (5 if below else -5)),
                    str(v),
                    fill=color,
                    font=font(10),
                    anchor="mt" if below else "mb",
                )
    return img


def _formal(kind: str, title: str, unit: str, labels: list[str], series: list[tuple[str, list[int]]]) -> str:
    names = [n for n, _ in series]
    csv = ["label," + ",".join(names)] + [
        f"{lab}," + ",".join(str(v[j]) for _, v in series) for j, lab in enumerate(labels)
    ]
    code = ["import matplotlib.pyplot as plt", f"labels = {labels!r}"]
    for i, (n, v) in enumerate(series):
        code.append(f"values_{i} = {v!r}  # {n}")
    if kind == "pie":
        code.append("plt.pie(values_0, labels=labels, startangle=90, counterclock=False)")
    elif kind == "bar":
        for i, (n, _) in enumerate(series):
            code.append(
                f"plt.bar([j + {i} * 0.35 for j in range(len(labels))], values_{i}, width=0.35, label={n!r})"
            )
        code.append("plt.xticks(range(len(labels)), labels)")
    else:
        for i, (n, _) in enumerate(series):
            code.append(f"plt.plot(labels, values_{i}, marker='o', label={n!r})")
    code += [f"plt.title({title!r})", f"plt.ylabel({unit!r})", "plt.show()"]
    return "# data.csv\n" + "\n".join(csv) + "\n\n# plot.py\n" + "\n".join(code) + "\n"


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    title, unit, pool, snames, category = rng.choice(THEMES)
    kind = rng.choice(["bar", "line", "pie"]) if lv in (1, 3) else rng.choice(["bar", "line"])
    n = rng.randint(4, 6) if kind != "pie" else rng.randint(3, 5)
    start = rng.randrange(len(pool) - n + 1)
    labels = pool[start : start + n] if unit in ("m", "people") else rng.sample(pool, n)
    nseries = 2 if (lv == 2 and kind != "pie") else 1
    hi = 95 if unit != "%" else 99
    series = []
    for s in range(nseries):
        while True:  # distinct values keep argmax/argmin unambiguous
            vals = [rng.randint(5, hi) for _ in range(n)]
            if len(set(vals)) == n:
                break
        series.append((snames[s] if nseries > 1 else (snames[0] if kind != "pie" else "count"), vals))
    name0, v0 = series[0]
    other_labels = lambda lab: [x for x in labels if x != lab][:3]
    ser = f" ({name0})" if nseries > 1 else ""
    if kind == "pie":
        if lv == 1:
            j = rng.randrange(n)
            total = sum(v0)
            gold = fmt_num(Fraction(100 * v0[j], total), 1)
            query = {"op": "share", "label": labels[j], "places": 1}
            question = f"What percentage of the total does {labels[j]} make up? Round to one decimal place."
        else:
            j, k = rng.sample(range(n), 2)
            if v0[k] < v0[j]:
                j, k = k, j
            gold = fmt_num(Fraction(100 * (v0[k] - v0[j]), v0[j]), 1)
            query = {"op": "pct_more", "a": labels[k], "b": labels[j], "places": 1}
            question = (
                f"By what percentage is the count of {labels[k]} larger than that of {labels[j]}? "
                "Round to one decimal place."
            )
        dis = numeric_distractors(rng, gold)
    elif lv == 0:
        # the *_pos questions need no text read off the image: bar heights / point positions alone answer them
        op = rng.choice(["value", "argmax", "argmin", "argmax_pos", "argmin_pos"])
        if op == "value":
            j = rng.randrange(n)
            gold, query = str(v0[j]), {"op": "value", "label": labels[j], "series": name0}
            question = f"What is the value for {labels[j]} in the chart?"
            dis = numeric_distractors(rng, gold)
        elif op.endswith("_pos"):
            j = (max if op == "argmax_pos" else min)(range(n), key=lambda i: v0[i])
            gold, query = str(j + 1), {"op": op, "series": name0}
            mark = "bar" if kind == "bar" else "point"
            question = (
                f"Counting from the left, which {mark} shows the {'highest' if op == 'argmax_pos' else 'lowest'} "
                "value? Answer with its position (1 = leftmost)."
            )
            dis = [str(k) for k in rng.sample([k for k in range(1, n + 1) if k != j + 1], min(3, n - 1))]
        else:
            j = (max if op == "argmax" else min)(range(n), key=lambda i: v0[i])
            gold, query = labels[j], {"op": op, "series": name0}
            question = f"Which label has the {'highest' if op == 'argmax' else 'lowest'} value in the chart?"
            dis = other_labels(labels[j])
    elif lv == 1:
        op = rng.choice(["diff", "sum", "count_above"])
        if op == "diff":
            j, k = rng.sample(range(n), 2)
            gold, query = str(v0[j] - v0[k]), {"op": "diff", "a": labels[j], "b": labels[k], "series": name0}
            question = f"What is the value of {labels[j]} minus the value of {labels[k]}?"
        elif op == "sum":
            gold, query = str(sum(v0)), {"op": "sum", "series": name0}
            question = "What is the sum of all values shown in the chart?"
        else:
            t = rng.choice(sorted(v0)[1:-1]) if n > 2 else 50
            gold, query = str(sum(v > t for v in v0)), {"op": "count_above", "threshold": t, "series": name0}
            question = f"How many labels have a value greater than {t}?"
        dis = numeric_distractors(rng, gold)
    elif lv == 2:
        op = rng.choice(["mean", "max_gap"])
        if op == "mean":
            gold, query = fmt_num(Fraction(sum(v0), n), 2), {"op": "mean", "series": name0}
            question = f"What is the average value{ser} across all labels? Round to two decimal places."
            dis = numeric_distractors(rng, gold)
        else:
            v1 = series[1][1]
            gaps = [abs(a - b) for a, b in zip(v0, v1)]
            if gaps.count(max(gaps)) > 1:  # ambiguous: fall back to the gap's size
                gold, query = str(max(gaps)), {"op": "max_gap_value"}
                question = f"What is the largest absolute difference between {name0} and {series[1][0]} at one label?"
                dis = numeric_distractors(rng, gold)
            else:
                j = gaps.index(max(gaps))
                gold, query = labels[j], {"op": "max_gap"}
                question = f"At which label is the difference between {name0} and {series[1][0]} the largest?"
                dis = other_labels(labels[j])
    else:
        j, k = sorted(rng.sample(range(n), 2))
        gold = fmt_num(Fraction(100 * (v0[k] - v0[j]), v0[j]), 1)
        query = {"op": "pct_change", "a": labels[j], "b": labels[k], "series": name0, "places": 1}
        question = (
            f"What is the percentage change from {labels[j]} to {labels[k]}? "
            "Round to one decimal place (negative for a decrease)."
        )
        dis = numeric_distractors(rng, gold)
    image = _draw(kind, title, unit, labels, series)
    formal = _formal(kind, title, unit, labels, series)
    return finish(KIND, seed, lv, category, image, formal, question, gold, query, rng, dis, chart=kind)
