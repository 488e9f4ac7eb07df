"""Resistor circuits → formal = SPICE netlist; the image is the drawn schematic (battery + series/parallel network).

Networks are random series-parallel trees. Questions by grade: equivalent resistance of 2–3 resistors all in series
or all in parallel (JHS); equivalent resistance or source current of a mixed network (HS); current through one
resistor or the power delivered by the source (College); voltage across one resistor (Social Test).
"""

from __future__ import annotations

from fractions import Fraction

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import finish, fmt_num, font, numeric_distractors, resolve_level, rng_for
from r1ov_jax.data.record import Record

KIND = "circuit"
VALUES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30]
VOLTS = [3, 6, 9, 12, 18, 24]
UX, UY = 70, 56  # pixels per layout unit


# A tree node is ("R", name, ohms) | ("S", [children]) | ("P", [children]).
def _tree(rng, k: int, parent: str, counter: list[int]) -> tuple:
    if k == 1:
        counter[0] += 1
        return ("R", f"R{counter[0]}", rng.choice(VALUES))
    kind = "S" if parent == "P" else "P"
    parts = rng.randint(2, min(3, k))
    sizes = [1] * parts
    for _ in range(k - parts):
        sizes[rng.randrange(parts)] += 1
    return (kind, [_tree(rng, s, kind, counter) for s in sizes])


def _req(t) -> Fraction:
    if t[0] == "R":
        return Fraction(t[2])
    rs = [_req(c) for c in t[1]]
    return sum(rs, Fraction(0)) if t[0] == "S" else 1 / sum((1 / r for r in rs), Fraction(0))


def _currents(t, current: Fraction, out: dict) -> None:
    """Current through every resistor when `current` flows into subtree t."""
    if t[0] == "R":
        out[t[1]] = current
    elif t[0] == "S":
        for c in t[1]:
            _currents(c, current, out)
    else:
        v = current * _req(t)
        for c in t[1]:
            _currents(c, v / _req(c), out)


def _netlist(t, a: int, b: int, lines: list[str], nxt: list[int]) -> None:
    if t[0] == "R":
        lines.append(f"{t[1]} {a} {b} {t[2]}")
    elif t[0] == "P":
        for c in t[1]:
            _netlist(c, a, b, lines, nxt)
    else:
        nodes = [a]
        for _ in t[1][:-1]:
            nxt[0] += 1
            nodes.append(nxt[0])
        nodes.append(b)
        for c, (u, v) in zip(t[1], zip(nodes, nodes[1:])):
            _netlist(c, u, v, lines, nxt)


# ------------------------------------------------------------------------------------------------------- drawing
def _size(t) -> tuple[float, int]:
    if t[0] == "R":
        return 1.0, 1
    sizes = [_size(c) for c in t[1]]
    if t[0] == "S":
        return sum(w for w, _ in sizes), max(h for _, h in sizes)
    return max(w for w, _ in sizes) + 0.5, sum(h for _, h in sizes)


def _resistor(d: ImageDraw.ImageDraw, x0: float, x1: float, y: float, label: str) -> None:
    mid, half = (x0 + x1) / 2, 18
    d.line([(x0, y), (mid - half, y)], fill="black", width=2)
    d.line([(mid + half, y), (x1, y)], fill="black", width=2)
    pts = (
        [(mid - half, y)]
        + [(mid - half + 6 * (i + 0.5), y + (7 if i % 2 else -7)) for i in range(6)]
        + [(mid + half, y)]
    )
    d.line(pts, fill="black", width=2)
    d.text((mid, y - 10), label, fill="#1F1F7A", font=font(12), anchor="mb")


NODE_COLOR = "#2E6E9E"


def _node_label(d: ImageDraw.ImageDraw, x: float, y: float, n: int) -> None:
    """Junction dot and its netlist node number under the wire (so traces citing node numbers match the image)."""
    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill="black")
    d.text((x, y + 5), str(n), fill=NODE_COLOR, font=font(10), anchor="mt")


def _draw_tree(d, t, x0: float, x1: float, y: float, a: int, b: int, nxt: list[int]) -> None:
    """Draw subtree t between terminals a (left) and b (right); node numbering mirrors `_netlist` exactly."""
    if t[0] == "R":
        _resistor(d, x0, x1, y, f"{t[1]} {t[2]}Ω")
    elif t[0] == "S":
        nodes = [a]
        for _ in t[1][:-1]:
            nxt[0] += 1
            nodes.append(nxt[0])
        nodes.append(b)
        ws = [_size(c)[0] for c in t[1]]
        extra = (x1 - x0) - sum(ws) * UX
        x, junctions = x0, []
        for k, (c, w) in enumerate(zip(t[1], ws)):
            cw = w * UX + extra / len(ws)
            _draw_tree(d, c, x, x + cw, y, nodes[k], nodes[k + 1], nxt)
            x += cw
            junctions.append(x)
        for x_j, n in zip(junctions[:-1], nodes[1:-1]):
            _node_label(d, x_j, y, n)
    else:
        bl, br = x0 + UX * 0.25, x1 - UX * 0.25
        d.line([(x0, y), (bl, y)], fill="black", width=2)
        d.line([(br, y), (x1, y)], fill="black", width=2)
        yy = y
        for c in t[1]:
            _draw_tree(d, c, bl, br, yy, a, b, nxt)
            last = yy
            yy += _size(c)[1] * UY
        d.line([(bl, y), (bl, last)], fill="black", width=2)
        d.line([(br, y), (br, last)], fill="black", width=2)
        for yj in (y, last):
            for xj in (bl, br):
                d.ellipse([xj - 3, yj - 3, xj + 3, yj + 3], fill="black")


def _draw(t, volts: int) -> Image.Image:
    w_units, h_units = _size(t)
    left, top = 110, 46
    right = left + w_units * UX
    bottom = top + h_units * UY + 10
    img = Image.new("RGB", (int(right + 40), int(bottom + 30)), "white")
    d = ImageDraw.Draw(img)
    _draw_tree(d, t, left, right, top, 1, 0, [1])
    bx = 74
    my = (top + bottom) / 2
    d.line(
        [(right, top), (right + 16, top), (right + 16, bottom), (bx, bottom), (bx, my + 6)],
        fill="black",
        width=2,
    )
    d.line([(bx, my - 6), (bx, top), (left, top)], fill="black", width=2)
    d.line([(bx - 16, my - 6), (bx + 16, my - 6)], fill="black", width=3)  # long plate: +
    d.line([(bx - 8, my + 6), (bx + 8, my + 6)], fill="black", width=3)
    d.text((bx + 20, my - 10), "+", fill="black", font=font(12), anchor="lm")
    d.text((bx - 20, my), f"{volts} V", fill="#7A1F1F", font=font(12), anchor="rm")
    d.text((bx + 12, top + 5), "1", fill=NODE_COLOR, font=font(10), anchor="mt")  # source + terminal node
    d.text((bx + 12, bottom + 5), "0", fill=NODE_COLOR, font=font(10), anchor="mt")  # ground
    return img


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    k = {0: rng.randint(2, 3), 1: rng.randint(3, 4), 2: rng.randint(4, 6), 3: rng.randint(3, 5)}[lv]
    counter = [0]
    if lv == 0:
        kind = rng.choice("SP")
        tree = (kind, [_tree(rng, 1, kind, counter) for _ in range(k)])
    else:
        while True:
            counter = [0]
            tree = _tree(rng, k, rng.choice("SP"), counter)
            if any(c[0] != "R" for c in tree[1]):  # mixed series/parallel
                break
    volts = rng.choice(VOLTS)
    lines: list[str] = []
    _netlist(tree, 1, 0, lines, [1])
    formal = (
        "* resistor network driven by a DC source\n" + f"V1 1 0 DC {volts}\n" + "\n".join(lines) + "\n.end\n"
    )
    req = _req(tree)
    total = volts / req
    currents: dict = {}
    _currents(tree, total, currents)
    if lv == 0:
        op = "req"
    elif lv == 1:
        op = rng.choice(["req", "current"])
    elif lv == 2:
        op = rng.choice(["resistor_current", "power"])
    else:
        op = "resistor_voltage"
    name = f"R{rng.randint(1, counter[0])}"
    values = {ln.split()[0]: int(ln.split()[3]) for ln in lines}
    if op == "req":
        gold, query = fmt_num(req, 2), {"op": "req"}
        question = "What is the equivalent resistance (in ohms) of the resistor network connected to the source? Round to two decimal places."
    elif op == "current":
        gold, query = fmt_num(total, 2), {"op": "current"}
        question = "What current (in amperes) does the source deliver? Round to two decimal places."
    elif op == "power":
        gold, query = fmt_num(volts * total, 2), {"op": "power"}
        question = (
            "What power (in watts) does the source deliver to the network? Round to two decimal places."
        )
    elif op == "resistor_current":
        gold, query = fmt_num(currents[name], 2), {"op": "resistor_current", "name": name}
        question = f"What current (in amperes) flows through {name}? Round to two decimal places."
    else:
        gold = fmt_num(currents[name] * values[name], 2)
        query = {"op": "resistor_voltage", "name": name}
        question = f"What is the voltage (in volts) across {name}? Round to two decimal places."
    dis = numeric_distractors(rng, gold)
    return finish(KIND, seed, lv, "Physics", _draw(tree, volts), formal, question, gold, query, rng, dis)
