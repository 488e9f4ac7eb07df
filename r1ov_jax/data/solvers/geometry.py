"""Geometry solver: parse points and circles, then apply distance / shoelace / dot-product formulas."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError

_POINT = re.compile(r"^Point (\w+) = \((-?\d+), (-?\d+)\)$", re.MULTILINE)
_CIRCLE = re.compile(r"^Circle (\w+): center \((-?\d+), (-?\d+)\), radius (\d+)$", re.MULTILINE)


def parse(formal: str) -> tuple[dict, dict]:
    pts = {m[1]: (int(m[2]), int(m[3])) for m in _POINT.finditer(formal)}
    circles = {m[1]: ((int(m[2]), int(m[3])), int(m[4])) for m in _CIRCLE.finditer(formal)}
    if not pts and not circles:
        raise SolveError("geometry formal text lists no points or circles")
    return pts, circles


def _pi(question: str):
    m = re.search(r"π = ([\d.]+)", question)
    return (Fraction(m[1]), m[1]) if m else (Fraction(math.pi), "π")


def solve(formal: str, question: str, query: dict) -> Solution:
    pts, circles = parse(formal)
    op = query["op"]
    steps = []
    if op in ("length", "perimeter"):
        names = [query["a"], query["b"]] if op == "length" else list(query["poly"])
        pairs = (
            [(names[0], names[1])]
            if op == "length"
            else [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
        )
        total = 0.0
        for a, b in pairs:
            (x1, y1), (x2, y2) = pts[a], pts[b]
            d2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
            d = math.sqrt(d2)
            total += d
            steps.append(
                f"From the coordinates {a}({x1}, {y1}) and {b}({x2}, {y2}): {a}{b} = √(({x2} − {x1})² + ({y2} − {y1})²) = √{d2} ≈ {d:.4f}."
            )
        if op == "perimeter":
            steps.append("Perimeter = " + " + ".join(f"{a}{b}" for a, b in pairs) + f" ≈ {total:.4f}.")
        steps.append(f"Rounded: {fmt_num(total, 2)}.")
        return Solution(steps, fmt_num(total, 2))
    if op == "polygon_area":
        names = list(query["poly"])
        p = [pts[n] for n in names]
        steps.append(
            "The description gives " + ", ".join(f"{n}({x}, {y})" for n, (x, y) in zip(names, p)) + "."
        )
        terms = [p[i][0] * p[(i + 1) % len(p)][1] - p[(i + 1) % len(p)][0] * p[i][1] for i in range(len(p))]
        steps.append(
            "Shoelace terms xᵢ·yᵢ₊₁ − xᵢ₊₁·yᵢ: " + ", ".join(map(str, terms)) + f"; sum = {sum(terms)}."
        )
        area = Fraction(abs(sum(terms)), 2)
        steps.append(f"Area = |{sum(terms)}| / 2 = {fmt_num(area, 2)}.")
        return Solution(steps, fmt_num(area, 2))
    if op == "angle":
        a, b, c = pts[query["a"]], pts[query["at"]], pts[query["c"]]
        u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
        dot = u[0] * v[0] + u[1] * v[1]
        nu, nv = math.hypot(*u), math.hypot(*v)
        ang = math.degrees(math.acos(dot / (nu * nv)))
        steps.append(
            f"Vectors from {query['at']}: {query['at']}{query['a']} = {u}, {query['at']}{query['c']} = {v}."
        )
        steps.append(f"Dot product = {dot}; lengths ≈ {nu:.4f} and {nv:.4f}.")
        steps.append(
            f"cos θ = {dot} / ({nu:.4f} × {nv:.4f}) ≈ {dot / (nu * nv):.4f}, so θ ≈ {ang:.3f}° ≈ {fmt_num(ang, 1)}°."
        )
        return Solution(steps, fmt_num(ang, 1))
    if op in ("circumference", "circle_area"):
        (cx, cy), r = circles[query["circle"]]
        pi, pis = _pi(question)
        steps.append(
            f"The description gives circle {query['circle']} with center ({cx}, {cy}) and radius {r}."
        )
        if op == "circumference":
            val = 2 * pi * r
            steps.append(f"Circumference = 2πr = 2 × {pis} × {r} = {float(val):.5f}.")
        else:
            val = pi * r * r
            steps.append(f"Area = πr² = {pis} × {r}² = {float(val):.5f}.")
        steps.append(f"Rounded: {fmt_num(val, 2)}.")
        return Solution(steps, fmt_num(val, 2))
    if op == "point_line_distance":
        a, b, p = pts[query["a"]], pts[query["b"]], pts[query["p"]]
        cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
        ab = math.hypot(b[0] - a[0], b[1] - a[1])
        steps.append(
            f"A = {a}, B = {b}, P = {p}. AB = {(b[0] - a[0], b[1] - a[1])}, AP = {(p[0] - a[0], p[1] - a[1])}."
        )
        steps.append(f"|AB × AP| = |{cross}| = {abs(cross)}; |AB| ≈ {ab:.4f}.")
        d = abs(cross) / ab
        steps.append(f"Distance = {abs(cross)} / {ab:.4f} ≈ {d:.4f} ≈ {fmt_num(d, 2)}.")
        return Solution(steps, fmt_num(d, 2))
    if op == "inside":
        (cx, cy), r = circles[query["circle"]]
        px, py = pts[query["p"]]
        d2 = (px - cx) ** 2 + (py - cy) ** 2
        steps.append(f"Center ({cx}, {cy}), radius {r}; P = ({px}, {py}).")
        steps.append(f"Squared distance = ({px} − {cx})² + ({py} − {cy})² = {d2}; r² = {r * r}.")
        inside = d2 < r * r
        steps.append(
            f"{d2} {'<' if inside else '>'} {r * r}, so P is {'inside' if inside else 'outside'} the circle."
        )
        return Solution(steps, "Yes" if inside else "No")
    if op == "farthest":
        (cx, cy), _ = circles[query["from"]]
        ds = {n: (pts[n][0] - cx) ** 2 + (pts[n][1] - cy) ** 2 for n in query["among"]}
        steps.append(
            f"Center ({cx}, {cy}). Squared distances: "
            + ", ".join(f"{n}{pts[n]}: {d}" for n, d in ds.items())
            + "."
        )
        best = max(ds, key=ds.get)
        steps.append(f"The largest is {ds[best]}, for point {best}.")
        return Solution(steps, best)
    raise SolveError(f"geometry: unknown op {op!r}")
