"""Table solver: parse a markdown or CSV table and compute lookups / aggregates."""

from __future__ import annotations

from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError


def parse(formal: str) -> tuple[list[str], dict[str, dict[str, int]]]:
    """→ (numeric column names, {row name: {column: value}})."""
    lines = [ln.strip() for ln in formal.strip().splitlines() if ln.strip()]
    if any(ln.startswith("|") for ln in lines):
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]
        cells = [r for r in cells if not all(set(c) <= {"-", ":"} for c in r)]  # drop the |---| rule
    else:
        cells = [ln.split(",") for ln in lines if not ln.startswith("#")]
    if len(cells) < 2:
        raise SolveError("table formal text has no data rows")
    header, body = cells[0], cells[1:]
    cols = header[1:]
    try:
        rows = {r[0]: {c: int(v) for c, v in zip(cols, r[1:])} for r in body}
    except ValueError as e:
        raise SolveError(f"table: non-integer cell ({e})") from None
    return cols, rows


def solve(formal: str, question: str, query: dict) -> Solution:
    cols, rows = parse(formal)
    op = query["op"]
    steps = []
    if op == "row_total_argmax":
        totals = {}
        for name, r in rows.items():
            totals[name] = sum(r.values())
            steps.append(f"{name}: " + " + ".join(str(v) for v in r.values()) + f" = {totals[name]}.")
        best = max(totals, key=totals.get)
        steps.append(f"The largest row total is {totals[best]} ({best}).")
        return Solution(steps, best)
    if op == "ratio":
        r = rows[query["row"]]
        a, b = r[query["num"]], r[query["den"]]
        steps.append(f"In the table, row {query['row']} has {query['num']} = {a} and {query['den']} = {b}.")
        v = Fraction(a, b)
        steps.append(f"{a} / {b} = {float(v):.4f} ≈ {fmt_num(v, 2)}.")
        return Solution(steps, fmt_num(v, 2))
    col = query["col"]
    if col not in cols:
        raise SolveError(f"table: column {col!r} not in {cols}")
    vals = {name: r[col] for name, r in rows.items()}
    steps.append(
        f"The {col} column of the table reads: " + ", ".join(f"{k} = {v}" for k, v in vals.items()) + "."
    )
    if op == "lookup":
        v = vals[query["row"]]
        steps.append(f"The entry for {query['row']} is {v}.")
        return Solution(steps, str(v))
    if op in ("argmax", "argmin"):
        best = (max if op == "argmax" else min)(vals, key=vals.get)
        steps.append(f"The {'highest' if op == 'argmax' else 'lowest'} value is {vals[best]}, in row {best}.")
        return Solution(steps, best)
    if op in ("sum", "mean"):
        total = sum(vals.values())
        steps.append("Sum = " + " + ".join(map(str, vals.values())) + f" = {total}.")
        if op == "sum":
            return Solution(steps, str(total))
        m = Fraction(total, len(vals))
        steps.append(f"Mean = {total} / {len(vals)} = {float(m):.4f} ≈ {fmt_num(m, 2)}.")
        return Solution(steps, fmt_num(m, 2))
    if op == "row_diff":
        a, b = vals[query["a"]], vals[query["b"]]
        steps.append(f"{query['a']} − {query['b']} = {a} − {b} = {a - b}.")
        return Solution(steps, str(a - b))
    if op == "count_gt":
        t = query["threshold"]
        hits = [k for k, v in vals.items() if v > t]
        steps.append(
            f"Rows with {col} > {t}: "
            + (", ".join(f"{k} ({vals[k]})" for k in hits) or "none")
            + f" → {len(hits)}."
        )
        return Solution(steps, str(len(hits)))
    raise SolveError(f"table: unknown op {op!r}")
