"""Function solver: parse the polynomial from its formula, then roots (rational root theorem), vertex, values,
extremes (derivative + quadratic formula)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError

_TERM = re.compile(r"([+-]?)(\d*)(x(?:\^(\d+))?)?")


def parse_poly(expr: str) -> list[int]:
    """'x^3 - 2x^2 + 5' → [5, 0, -2, 1]."""
    s = expr.replace(" ", "").replace("−", "-")
    coefs: dict[int, int] = {}
    pos = 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if not m or m.end() == pos or (not m[2] and not m[3]):
            raise SolveError(f"cannot parse polynomial {expr!r} at {s[pos:]!r}")
        c = int(m[2]) if m[2] else 1
        k = (int(m[4]) if m[4] else 1) if m[3] else 0
        coefs[k] = coefs.get(k, 0) + (-c if m[1] == "-" else c)
        pos = m.end()
    return [coefs.get(k, 0) for k in range(max(coefs) + 1)]


def parse(formal: str) -> tuple[list[int], int, int]:
    m = re.search(r"^f\(x\) = (.+)$", formal, re.MULTILINE)
    d = re.search(r"^plot domain: (-?\d+) <= x <= (-?\d+)$", formal, re.MULTILINE)
    if not m or not d:
        raise SolveError("function formal text needs 'f(x) = ...' and 'plot domain: a <= x <= b'")
    return parse_poly(m[1]), int(d[1]), int(d[2])


def _f(c, x):
    return sum(ck * x**k for k, ck in enumerate(c))


def _divisors(n: int) -> list[int]:
    n = abs(n)
    return [d for d in range(1, n + 1) if n % d == 0]


def rational_roots(c: list[int], steps: list[str]) -> list[Fraction]:
    """All rational roots: factor out x^k, then test ±p/q (p | constant, q | leading coefficient)."""
    roots: list[Fraction] = []
    k = next(i for i, v in enumerate(c) if v != 0)
    if k:
        roots.append(Fraction(0))
        steps.append("The constant term is 0, so x = 0 is a root; divide by x.")
        c = c[k:]
    if len(c) > 1:
        cands = sorted(
            {s * Fraction(p, q) for p in _divisors(c[0]) for q in _divisors(c[-1]) for s in (1, -1)}
        )
        hits = [x for x in cands if _f(c, x) == 0]
        steps.append(
            "Rational root candidates ±p/q (p | "
            + str(c[0])
            + ", q | "
            + str(c[-1])
            + "): "
            + ", ".join(fmt_num(x, 3) for x in cands)
            + "."
        )
        steps.append("Testing: " + ", ".join(f"f({fmt_num(x, 3)}) = 0" for x in hits) + ".")
        roots += hits
    return sorted(roots)


def solve(formal: str, question: str, query: dict) -> Solution:
    c, lo, hi = parse(formal)
    op = query["op"]
    deg = len(c) - 1
    steps = [
        f"From the expression, f(x) has coefficients (constant first) {c}; the plotted domain is [{lo}, {hi}]."
    ]
    if op == "value":
        x = query["x"]
        terms = [f"{ck}·({x})^{k}" for k, ck in enumerate(c) if ck]
        v = _f(c, x)
        steps.append(f"f({x}) = " + " + ".join(reversed(terms)) + f" = {v}.")
        return Solution(steps, str(v))
    if op == "slope":
        steps.append(f"f is linear; its slope is the coefficient of x: {c[1]}.")
        return Solution(steps, str(c[1]))
    if op == "root":
        r = Fraction(-c[0], c[1])
        steps.append(f"Solve {c[1]}x + {c[0]} = 0: x = {-c[0]}/{c[1]} = {fmt_num(r, 2)}.")
        return Solution(steps, fmt_num(r, 2))
    if op in ("root_small", "root_large", "num_roots_in"):
        roots = rational_roots(c, steps)
        steps.append("Roots: " + ", ".join(fmt_num(r, 3) for r in roots) + ".")
        if op == "num_roots_in":
            a, b = query["lo"], query["hi"]
            inside = [r for r in roots if a <= r <= b]
            steps.append(
                f"Roots with {a} ≤ x ≤ {b}: "
                + (", ".join(fmt_num(r, 3) for r in inside) or "none")
                + f" → {len(inside)}."
            )
            return Solution(steps, str(len(inside)))
        r = roots[0] if op == "root_small" else roots[-1]
        steps.append(f"The {'smallest' if op == 'root_small' else 'largest'} root is {fmt_num(r, 2)}.")
        return Solution(steps, fmt_num(r, 2))
    if op in ("vertex_x", "extreme_value"):
        if deg != 2:
            raise SolveError(f"{op} needs a quadratic, got degree {deg}")
        xv = Fraction(-c[1], 2 * c[2])
        steps.append(f"Vertex at x = −b / (2a) = {-c[1]} / {2 * c[2]} = {fmt_num(xv, 3)}.")
        if op == "vertex_x":
            return Solution(steps, fmt_num(xv, 2))
        v = _f(c, xv)
        steps.append(
            f"a = {c[2]} {'> 0: minimum' if c[2] > 0 else '< 0: maximum'}; f({fmt_num(xv, 3)}) = {fmt_num(v, 4)}."
        )
        return Solution(steps, fmt_num(v, 2))
    if op == "count_negative_int":
        a, b = query["lo"], query["hi"]
        vals = {x: _f(c, x) for x in range(a, b + 1)}
        steps.append("Values: " + ", ".join(f"f({x}) = {v}" for x, v in vals.items()) + ".")
        neg = [x for x, v in vals.items() if v < 0]
        steps.append(f"Negative at x = {', '.join(map(str, neg)) or 'none'} → {len(neg)} integers.")
        return Solution(steps, str(len(neg)))
    if op == "local_max":
        if deg != 3:
            raise SolveError(f"local_max expects a cubic, got degree {deg}")
        a3, a2, a1 = 3 * c[3], 2 * c[2], c[1]
        disc = a2 * a2 - 4 * a3 * a1
        steps.append(f"f'(x) = {a3}x^2 + {a2}x + {a1}; discriminant = {a2}² − 4·{a3}·{a1} = {disc}.")
        if disc <= 0:
            raise SolveError("cubic has no local maximum")
        xs = [(-a2 + s * math.sqrt(disc)) / (2 * a3) for s in (1, -1)]
        steps.append("Critical points: x = " + " and x = ".join(f"{x:.4f}" for x in xs) + ".")
        xm = [x for x in xs if 6 * c[3] * x + 2 * c[2] < 0][0]
        v = _f(c, xm)
        steps.append(
            f"f''(x) = {6 * c[3]}x + {2 * c[2]} < 0 at x ≈ {xm:.4f}, a local maximum; f({xm:.4f}) ≈ {v:.4f}."
        )
        return Solution(steps, fmt_num(v, 2))
    raise SolveError(f"function: unknown op {op!r}")
