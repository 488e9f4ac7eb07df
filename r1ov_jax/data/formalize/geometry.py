"""Plane geometry on a coordinate grid → formal = points with coordinates, segments, polygons, circles.

Questions by grade: lengths, triangle areas, circumferences (JHS); perimeters, angles, circle areas (HS);
point-to-line distances and polygon areas by the shoelace formula (College); inside/outside and farthest-point
deductions (Social Test). Points are labelled with their coordinates in the image, as in textbook figures.
"""

from __future__ import annotations

import math
from fractions import Fraction

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import finish, fmt_num, font, numeric_distractors, resolve_level, rng_for
from r1ov_jax.data.record import Record

KIND = "geometry"
N = 10  # grid 0..N on both axes
SIZE, MARGIN = 336, 28
UNIT = (SIZE - 2 * MARGIN) / N
NAMES = "ABCDEFGH"
PI = Fraction("3.14159")  # the value the questions tell the reader to use


def _px(p: tuple[int, int]) -> tuple[float, float]:
    return MARGIN + p[0] * UNIT, SIZE - MARGIN - p[1] * UNIT


def _area2(pts: list[tuple[int, int]]) -> int:
    """Twice the signed shoelace area."""
    return sum(
        pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
        for i in range(len(pts))
    )


def _points(rng, k: int, lo: int = 1, hi: int = N - 1) -> list[tuple[int, int]]:
    """k distinct grid points, no three collinear."""
    while True:
        pts = list({(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(k)})
        if len(pts) < k:
            continue
        pts = pts[:k]
        rng.shuffle(pts)
        ok = all(
            _area2([pts[i], pts[j], pts[m]]) != 0
            for i in range(k)
            for j in range(i + 1, k)
            for m in range(j + 1, k)
        )
        if ok:
            return pts


def _convex_order(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Order around the centroid: a simple (non self-intersecting) polygon."""
    cx = sum(p[0] for p in pts) / len(pts)
    cy = sum(p[1] for p in pts) / len(pts)
    return sorted(pts, key=lambda p: math.atan2(p[1] - cy, p[0] - cx))


def _draw(points: dict, segments: list, polygons: list, circles: dict) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    for i in range(N + 1):
        x, _ = _px((i, 0))
        _, y = _px((0, i))
        d.line([(x, MARGIN), (x, SIZE - MARGIN)], fill="#E8E8E8")
        d.line([(MARGIN, y), (SIZE - MARGIN, y)], fill="#E8E8E8")
        d.text((x, SIZE - MARGIN + 4), str(i), fill="#555555", font=font(10), anchor="mt")
        d.text((MARGIN - 4, y), str(i), fill="#555555", font=font(10), anchor="rm")
    d.line([_px((0, 0)), _px((N, 0))], fill="black", width=1)
    d.line([_px((0, 0)), _px((0, N))], fill="black", width=1)
    for poly in polygons:
        d.polygon([_px(points[n]) for n in poly], fill="#DCE9F7", outline="#1F4E79")
    for a, b in segments:
        d.line([_px(points[a]), _px(points[b])], fill="#1F4E79", width=2)
    for name, (c, r) in circles.items():
        cx, cy = _px(c)
        d.ellipse([cx - r * UNIT, cy - r * UNIT, cx + r * UNIT, cy + r * UNIT], outline="#A23B3B", width=2)
        d.line([(cx, cy), (cx + r * UNIT, cy)], fill="#A23B3B")
        d.text((cx + r * UNIT / 2, cy - 3), f"r={r}", fill="#A23B3B", font=font(11), anchor="mb")
        d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill="#A23B3B")
        d.text((cx + 4, cy + 3), f"{name}({c[0]},{c[1]})", fill="#A23B3B", font=font(11), anchor="lt")
    for name, p in points.items():
        x, y = _px(p)
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill="black")
        d.text((x + 4, y - 3), f"{name}({p[0]},{p[1]})", fill="black", font=font(12), anchor="lb")
    return img


def _formal(points: dict, segments: list, polygons: list, circles: dict) -> str:
    lines = [f"Coordinate plane, grid 0..{N}, unit 1 (x to the right, y up)."]
    lines += [f"Point {n} = ({p[0]}, {p[1]})" for n, p in points.items()]
    lines += [f"Segment {a}{b}" for a, b in segments]
    lines += ["Polygon " + "".join(poly) for poly in polygons]
    lines += [f"Circle {n}: center ({c[0]}, {c[1]}), radius {r}" for n, (c, r) in circles.items()]
    return "\n".join(lines) + "\n"


def _dist(p, q) -> float:
    return math.hypot(p[0] - q[0], p[1] - q[1])


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    points: dict = {}
    segments: list = []
    polygons: list = []
    circles: dict = {}
    category = "Math"
    if lv == 0:
        op = rng.choice(["length", "area", "circumference"])
    elif lv == 1:
        op = rng.choice(["perimeter", "angle", "circle_area"])
    elif lv == 2:
        op = rng.choice(["point_line_distance", "polygon_area"])
    else:
        op = rng.choice(["inside", "farthest"])
    if op == "length":
        a, b = _points(rng, 2)
        points = {"A": a, "B": b}
        segments = [("A", "B")]
        gold, query, question = (
            fmt_num(_dist(a, b), 2),
            {"op": "length", "a": "A", "b": "B"},
            ("What is the length of segment AB? Round to two decimal places."),
        )
    elif op in ("area", "perimeter", "angle"):
        pts = _points(rng, 3)
        points = dict(zip("ABC", pts))
        polygons = [["A", "B", "C"]]
        if op == "area":
            gold = fmt_num(Fraction(abs(_area2(pts)), 2), 2)
            query, question = {"op": "polygon_area", "poly": "ABC"}, "What is the area of triangle ABC?"
        elif op == "perimeter":
            gold = fmt_num(sum(_dist(pts[i], pts[(i + 1) % 3]) for i in range(3)), 2)
            query = {"op": "perimeter", "poly": "ABC"}
            question = "What is the perimeter of triangle ABC? Round to two decimal places."
        else:
            a, b, c = pts
            u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
            ang = math.degrees(math.acos((u[0] * v[0] + u[1] * v[1]) / (math.hypot(*u) * math.hypot(*v))))
            gold = fmt_num(ang, 1)
            query = {"op": "angle", "a": "A", "at": "B", "c": "C"}
            question = "What is the measure of angle ABC in degrees? Round to one decimal place."
    elif op in ("circumference", "circle_area"):
        r = rng.randint(1, 4)
        c = (rng.randint(r, N - r), rng.randint(r, N - r))
        circles = {"O": (c, r)}
        if op == "circumference":
            gold = fmt_num(2 * PI * r, 2)
            question = (
                "What is the circumference of circle O? Use π = 3.14159 and round to two decimal places."
            )
        else:
            gold = fmt_num(PI * r * r, 2)
            question = "What is the area of circle O? Use π = 3.14159 and round to two decimal places."
        query = {"op": op, "circle": "O"}
    elif op == "point_line_distance":
        a, b, p = _points(rng, 3)
        points = {"A": a, "B": b, "P": p}
        segments = [("A", "B")]
        gold = fmt_num(abs(_area2([a, b, p])) / _dist(a, b), 2)
        query = {"op": "point_line_distance", "p": "P", "a": "A", "b": "B"}
        question = (
            "What is the distance from point P to the line through A and B? Round to two decimal places."
        )
    elif op == "polygon_area":
        k = rng.choice([4, 5])
        pts = _convex_order(_points(rng, k, 0, N))
        names = NAMES[:k]
        points = dict(zip(names, pts))
        polygons = [list(names)]
        gold = fmt_num(Fraction(abs(_area2(pts)), 2), 2)
        query = {"op": "polygon_area", "poly": names}
        question = f"What is the area of polygon {names}?"
    else:
        r = rng.randint(2, 4)
        c = (rng.randint(r, N - r), rng.randint(r, N - r))
        circles = {"O": (c, r)}
        if op == "inside":
            while True:
                p = (rng.randint(0, N), rng.randint(0, N))
                d2 = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2
                if d2 != r * r and p != c:
                    break
            points = {"P": p}
            gold = "Yes" if d2 < r * r else "No"
            query = {"op": "inside", "p": "P", "circle": "O"}
            question = "Does point P lie inside circle O? Answer Yes or No."
        else:
            while True:
                pts = _points(rng, 4, 0, N)
                ds = [(p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 for p in pts]
                if len(set(ds)) == 4 and c not in pts:
                    break
            points = dict(zip("ABCD", pts))
            gold = "ABCD"[ds.index(max(ds))]
            query = {"op": "farthest", "from": "O", "among": "ABCD"}
            question = "Which of the points A, B, C, D is farthest from the center of circle O?"
        category = "Deduction"
    # Yes/No and point-letter answers stay free form (a letter answer would clash with option letters).
    dis = None if gold.isalpha() else numeric_distractors(rng, gold)
    image = _draw(points, segments, polygons, circles)
    formal = _formal(points, segments, polygons, circles)
    return finish(KIND, seed, lv, category, image, formal, question, gold, query, rng, dis)
