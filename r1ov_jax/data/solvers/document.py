"""Document solver: read the text line by line (receipt / lab report / schedule) and compute."""

from __future__ import annotations

import re
from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError

_ITEM = re.compile(r"^(.+): (\d+) x \$(\d+)\.(\d\d)$")
_PLOT = re.compile(r"^Plot (\w+): (\d+) seeds planted, (\d+) germinated$")
_SESSION = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d) (.+)$")


def _hm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _receipt(lines, query) -> Solution:
    items = {}
    for ln in lines:
        if m := _ITEM.match(ln):
            items[m[1]] = (int(m[2]), int(m[3]) * 100 + int(m[4]))
    steps = [
        "The text lists: " + "; ".join(f"{k}: {q} × ${c / 100:.2f}" for k, (q, c) in items.items()) + "."
    ]
    op = query["op"]
    if op == "qty":
        q = items[query["item"]][0]
        steps.append(f"The {query['item']} line shows a quantity of {q}.")
        return Solution(steps, str(q))
    if op == "line_cost":
        q, c = items[query["item"]]
        steps.append(f"{query['item']}: {q} × ${c / 100:.2f} = ${q * c / 100:.2f}.")
        return Solution(steps, fmt_num(Fraction(q * c, 100), 2))
    subtotals = [q * c for q, c in items.values()]
    for (k, (q, c)), s in zip(items.items(), subtotals):
        steps.append(f"{k}: {q} × ${c / 100:.2f} = ${s / 100:.2f}.")
    total = sum(subtotals)
    steps.append("Total = " + " + ".join(f"${s / 100:.2f}" for s in subtotals) + f" = ${total / 100:.2f}.")
    if op == "total":
        return Solution(steps, fmt_num(Fraction(total, 100), 2))
    if op == "change":
        paid = round(Fraction(str(query["paid"])) * 100)
        steps.append(f"Change = ${paid / 100:.2f} − ${total / 100:.2f} = ${(paid - total) / 100:.2f}.")
        return Solution(steps, fmt_num(Fraction(paid - total, 100), 2))
    raise SolveError(f"document/receipt: unknown op {op!r}")


def _germination(lines, query) -> Solution:
    plots = {m[1]: (int(m[2]), int(m[3])) for ln in lines if (m := _PLOT.match(ln))}
    steps = [
        "The report lists: "
        + "; ".join(f"plot {k}: {p} planted, {g} germinated" for k, (p, g) in plots.items())
        + "."
    ]
    op = query["op"]
    if op == "not_germinated":
        p, g = plots[query["plot"]]
        steps.append(f"Plot {query['plot']}: {p} − {g} = {p - g} seeds did not germinate.")
        return Solution(steps, str(p - g))
    if op == "rate":
        p, g = plots[query["plot"]]
        r = Fraction(100 * g, p)
        steps.append(f"Rate = {g} / {p} × 100% = {float(r):.3f}% ≈ {fmt_num(r, 1)}%.")
        return Solution(steps, fmt_num(r, 1))
    if op == "overall_rate":
        tp, tg = sum(p for p, _ in plots.values()), sum(g for _, g in plots.values())
        r = Fraction(100 * tg, tp)
        steps.append(f"Total planted = {tp}, total germinated = {tg}.")
        steps.append(f"Overall rate = {tg} / {tp} × 100% = {float(r):.3f}% ≈ {fmt_num(r, 1)}%.")
        return Solution(steps, fmt_num(r, 1))
    if op == "best_plot":
        rates = {k: Fraction(g, p) for k, (p, g) in plots.items()}
        steps.append(
            "Rates: "
            + ", ".join(f"{k}: {plots[k][1]}/{plots[k][0]} = {float(r):.3f}" for k, r in rates.items())
            + "."
        )
        best = max(rates, key=rates.get)
        steps.append(f"The highest rate is plot {best}.")
        return Solution(steps, best)
    raise SolveError(f"document/germination: unknown op {op!r}")


def _schedule(lines, query) -> Solution:
    rows = [
        (int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4]), m[5])
        for ln in lines
        if (m := _SESSION.match(ln))
    ]
    steps = [
        "The schedule text lists: " + "; ".join(f"{name} {_hm(a)}–{_hm(b)}" for a, b, name in rows) + "."
    ]
    op = query["op"]
    if op == "starts_at":
        hit = [name for a, _, name in rows if _hm(a) == query["time"]]
        if len(hit) != 1:
            raise SolveError(f"no unique session starts at {query['time']}")
        steps.append(f"The session starting at {query['time']} is {hit[0]}.")
        return Solution(steps, hit[0])
    if op in ("duration", "delayed_end"):
        a, b, name = next(r for r in rows if r[2] == query["session"])
        steps.append(f"{name} runs {_hm(a)}–{_hm(b)}: {b - a} minutes.")
        if op == "duration":
            return Solution(steps, str(b - a))
        d = query["delay"]
        steps.append(
            f"Starting {d} minutes late: {_hm(a + d)}; ending {b - a} minutes later at {_hm(b + d)}."
        )
        return Solution(steps, _hm(b + d))
    if op == "count_longer":
        mins = query["minutes"]
        longer = [(name, b - a) for a, b, name in rows if b - a > mins]
        steps.append("Durations: " + ", ".join(f"{name} {b - a} min" for a, b, name in rows) + ".")
        steps.append(
            f"Longer than {mins} minutes: "
            + (", ".join(n for n, _ in longer) or "none")
            + f" → {len(longer)}."
        )
        return Solution(steps, str(len(longer)))
    raise SolveError(f"document/schedule: unknown op {op!r}")


def solve(formal: str, question: str, query: dict) -> Solution:
    lines = [ln.strip() for ln in formal.strip().splitlines()]
    if not lines:
        raise SolveError("document formal text is empty")
    head = lines[0].lower()
    if head.startswith("receipt"):
        return _receipt(lines, query)
    if head.startswith("lab report"):
        return _germination(lines, query)
    if head.startswith("schedule"):
        return _schedule(lines, query)
    raise SolveError(f"document: unknown kind of document {lines[0]!r}")
