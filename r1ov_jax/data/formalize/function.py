"""Function plots (expression → curve) → formal = the expression, the plotted domain and the plotting code.

Polynomials with integer roots: linear (JHS: value, slope, root), quadratic (HS: roots, vertex, extreme value),
cubic (College: roots, number of roots in an interval, local extreme values), quadratic inequalities counted over
integers (Social Test). The image shows the curve on a grid with the formula as its title.
"""

from __future__ import annotations

import math
from fractions import Fraction

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import finish, fmt_num, font, numeric_distractors, resolve_level, rng_for
from r1ov_jax.data.record import Record

KIND = "function"
SIZE, M = 336, 36


def poly_str(coefs: list[int]) -> str:
    """Coefficients [c0, c1, ..., cn] → 'x^3 - 2x^2 + 5' (highest degree first)."""
    out = []
    for k in range(len(coefs) - 1, -1, -1):
        c = coefs[k]
        if c == 0:
            continue
        mag = abs(c)
        body = (
            ("" if mag == 1 and k > 0 else str(mag)) + ("x" if k >= 1 else "") + (f"^{k}" if k >= 2 else "")
        )
        sign = "-" if c < 0 else "+"
        out.append((sign, body))
    if not out:
        return "0"
    s = ("-" if out[0][0] == "-" else "") + out[0][1]
    return s + "".join(f" {sg} {b}" for sg, b in out[1:])


def _py_expr(coefs: list[int]) -> str:
    terms = [f"{c}*x**{k}" if k >= 2 else (f"{c}*x" if k == 1 else f"{c}") for k, c in enumerate(coefs) if c]
    return " + ".join(reversed(terms)).replace("+ -", "- ") or "0*x"


def _mul(p: list[int], q: list[int]) -> list[int]:
    out = [0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _eval(coefs, x):
    return sum(c * x**k for k, c in enumerate(coefs))


def _nice(span: float) -> int:
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500):
        if span / s <= 10:
            return s
    return 1000


def _draw(coefs: list[int], lo: int, hi: int) -> Image.Image:
    xs = [lo + (hi - lo) * i / 300 for i in range(301)]
    ys = [_eval(coefs, x) for x in xs]
    ymin, ymax = min(min(ys), 0), max(max(ys), 0)
    ystep = _nice(ymax - ymin)
    ymin, ymax = math.floor(ymin / ystep) * ystep, math.ceil(ymax / ystep) * ystep
    if ymax == ymin:
        ymax += ystep
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    px = lambda x: M + (x - lo) / (hi - lo) * (SIZE - 2 * M)
    py = lambda y: SIZE - M - (y - ymin) / (ymax - ymin) * (SIZE - 2 * M)
    for x in range(lo, hi + 1):
        d.line([(px(x), M), (px(x), SIZE - M)], fill="#EBEBEB")
        d.text((px(x), py(0) + 3), str(x), fill="#444444", font=font(10), anchor="mt")
    y = ymin
    while y <= ymax:
        d.line([(M, py(y)), (SIZE - M, py(y))], fill="#EBEBEB")
        if y != 0:
            d.text((px(0) - 3, py(y)), str(y), fill="#444444", font=font(10), anchor="rm")
        y += ystep
    d.line([(M, py(0)), (SIZE - M, py(0))], fill="black")
    if lo <= 0 <= hi:
        d.line([(px(0), M), (px(0), SIZE - M)], fill="black")
    d.line([(px(x), py(v)) for x, v in zip(xs, ys)], fill="#C0392B", width=2)
    d.text((SIZE // 2, 8), f"f(x) = {poly_str(coefs)}", fill="black", font=font(14), anchor="mt")
    return img


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    if lv == 0:
        m = rng.choice([-3, -2, -1, 1, 2, 3])
        coefs = [rng.randint(-5, 5), m]
        lo, hi = -5, 5
        op = rng.choice(["value", "slope", "root"])
    elif lv in (1, 3):
        a = rng.choice([1, 1, -1, 2])
        r1, r2 = sorted(rng.sample(range(-4, 5), 2))
        coefs = _mul([a * -r1, a], [-r2, 1])
        lo, hi = r1 - 2, r2 + 2
        op = (
            rng.choice(["root_small", "root_large", "vertex_x", "extreme_value"])
            if lv == 1
            else "count_negative_int"
        )
    else:
        a = rng.choice([1, -1])
        rs = sorted(rng.sample(range(-3, 4), 3))
        coefs = _mul(_mul([a * -rs[0], a], [-rs[1], 1]), [-rs[2], 1])
        lo, hi = rs[0] - 1, rs[2] + 1
        op = rng.choice(["root_large", "num_roots_in", "local_max"])
    f = lambda x: _eval(coefs, Fraction(x))
    query: dict = {"op": op}
    if op == "value":
        x0 = rng.randint(lo, hi)
        gold, query["x"] = str(f(x0)), x0
        question = f"What is the value of f({x0})?"
    elif op == "slope":
        gold, question = str(coefs[1]), "What is the slope of the line?"
    elif op == "root":
        gold, question = (
            fmt_num(Fraction(-coefs[0], coefs[1]), 2),
            "At what x does the line cross the x-axis? Round to two decimal places.",
        )
    elif op in ("root_small", "root_large"):
        roots = sorted(r for r in range(lo, hi + 1) if f(r) == 0)
        gold = str(roots[0] if op == "root_small" else roots[-1])
        question = f"What is the {'smallest' if op == 'root_small' else 'largest'} root of f(x) = 0?"
    elif op == "vertex_x":
        gold, question = (
            fmt_num(Fraction(-coefs[1], 2 * coefs[2]), 2),
            "At what x-value is the vertex of the parabola?",
        )
    elif op == "extreme_value":
        xv = Fraction(-coefs[1], 2 * coefs[2])
        kind = "minimum" if coefs[2] > 0 else "maximum"
        gold, question = fmt_num(f(xv), 2), f"What is the {kind} value of f(x)? Round to two decimal places."
        query["kind"] = kind
    elif op == "count_negative_int":
        gold = str(sum(f(x) < 0 for x in range(lo, hi + 1)))
        question = f"For how many integers x with {lo} ≤ x ≤ {hi} is f(x) < 0?"
        query.update(lo=lo, hi=hi)
    elif op == "num_roots_in":
        a_, b_ = sorted(rng.sample(range(lo, hi + 1), 2))
        gold = str(sum(a_ <= r <= b_ for r in rs))
        question = f"How many solutions does f(x) = 0 have with {a_} ≤ x ≤ {b_}?"
        query.update(lo=a_, hi=b_)
    else:  # local maximum of the cubic: f'(x) = 0 at the root of the quadratic where f'' < 0
        c1, c2, c3 = coefs[1], coefs[2], coefs[3]
        disc = 4 * c2 * c2 - 12 * c3 * c1
        xs = [(-2 * c2 + s * math.sqrt(disc)) / (6 * c3) for s in (1, -1)]
        xmax = [x for x in xs if 6 * c3 * x + 2 * c2 < 0][0]
        gold = fmt_num(_eval(coefs, xmax), 2)
        question = "What is the local maximum value of f(x)? Round to two decimal places."
    expr = poly_str(coefs)
    formal = (
        f"f(x) = {expr}\nplot domain: {lo} <= x <= {hi}\n\n# plot.py\nimport numpy as np\nimport matplotlib.pyplot as plt\n"
        f"x = np.linspace({lo}, {hi}, 400)\nplt.plot(x, {_py_expr(coefs)})\nplt.axhline(0, color='k'); plt.grid(True)\n"
        f"plt.title('f(x) = {expr}')\nplt.show()\n"
    )
    category = "Math"
    dis = numeric_distractors(rng, gold)
    return finish(KIND, seed, lv, category, _draw(coefs, lo, hi), formal, question, gold, query, rng, dis)
