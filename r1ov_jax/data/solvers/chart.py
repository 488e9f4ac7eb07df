"""Chart solver: parse the CSV block (and chart kind from the plotting code), then compute."""

from __future__ import annotations

from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError


def parse(formal: str) -> tuple[str, list[str], dict[str, list[int]]]:
    """→ (kind bar|line|pie, labels, {series: values})."""
    if "# data.csv" not in formal or "# plot.py" not in formal:
        raise SolveError("chart formal text needs '# data.csv' and '# plot.py' blocks")
    csv, code = formal.split("# data.csv", 1)[1].split("# plot.py", 1)
    rows = [ln.split(",") for ln in csv.strip().splitlines() if ln.strip()]
    header, body = rows[0], rows[1:]
    labels = [r[0] for r in body]
    series = {name: [int(r[j + 1]) for r in body] for j, name in enumerate(header[1:])}
    kind = "pie" if "plt.pie" in code else "line" if "plt.plot" in code else "bar"
    return kind, labels, series


def solve(formal: str, question: str, query: dict) -> Solution:
    kind, labels, series = parse(formal)
    op = query["op"]
    name = query.get("series") or next(iter(series))
    if name not in series:
        raise SolveError(f"series {name!r} not in CSV columns {list(series)}")
    vals = dict(zip(labels, series[name]))
    listing = ", ".join(f"{k} = {v}" for k, v in vals.items())
    steps = [f"The chart is a {kind} chart. The CSV data gives ({name}): {listing}."]
    if op == "value":
        v = vals[query["label"]]
        steps.append(f"The row for {query['label']} has value {v}.")
        return Solution(steps, str(v))
    if op in ("argmax", "argmin"):
        pick = (max if op == "argmax" else min)(vals, key=vals.get)
        word = "largest" if op == "argmax" else "smallest"
        ordered = sorted(vals, key=vals.get, reverse=op == "argmax")
        steps.append(
            "Ordering the values: " + " > ".join(f"{k} ({vals[k]})" for k in ordered)
            if op == "argmax"
            else "Ordering the values: " + " < ".join(f"{k} ({vals[k]})" for k in ordered)
        )
        steps.append(f"The {word} value {vals[pick]} belongs to {pick}.")
        return Solution(steps, pick)
    if op in ("argmax_pos", "argmin_pos"):
        pick = (max if op == "argmax_pos" else min)(vals, key=vals.get)
        pos = labels.index(pick) + 1
        word = "largest" if op == "argmax_pos" else "smallest"
        steps.append(f"The {word} value is {vals[pick]} ({pick}), position {pos} from the left.")
        return Solution(steps, str(pos))
    if op == "diff":
        a, b = vals[query["a"]], vals[query["b"]]
        steps.append(f"{query['a']} − {query['b']} = {a} − {b} = {a - b}.")
        return Solution(steps, str(a - b))
    if op == "sum":
        total = sum(vals.values())
        steps.append("Adding all values: " + " + ".join(map(str, vals.values())) + f" = {total}.")
        return Solution(steps, str(total))
    if op == "count_above":
        t = query["threshold"]
        above = [k for k, v in vals.items() if v > t]
        steps.append(f"Values greater than {t}: {', '.join(f'{k} ({vals[k]})' for k in above) or 'none'}.")
        steps.append(f"That is {len(above)} label(s).")
        return Solution(steps, str(len(above)))
    if op == "mean":
        total = sum(vals.values())
        steps.append("Sum = " + " + ".join(map(str, vals.values())) + f" = {total}.")
        mean = Fraction(total, len(vals))
        steps.append(f"Mean = {total} / {len(vals)} = {float(mean):.4f} ≈ {fmt_num(mean, 2)}.")
        return Solution(steps, fmt_num(mean, 2))
    if op in ("max_gap", "max_gap_value"):
        (n0, v0), (n1, v1) = list(series.items())[:2]
        steps[0] = (
            f"The chart is a {kind} chart with two series. The CSV data gives {n0}: {v0} and {n1}: {v1}."
        )
        gaps = {lab: abs(a - b) for lab, a, b in zip(labels, v0, v1)}
        steps.append(
            "Absolute differences: "
            + ", ".join(f"{k}: |{a} − {b}| = {gaps[k]}" for k, a, b in zip(labels, v0, v1))
            + "."
        )
        best = max(gaps, key=gaps.get)
        steps.append(f"The largest difference is {gaps[best]}, at {best}.")
        return Solution(steps, best if op == "max_gap" else str(gaps[best]))
    places = query.get("places", 1)
    if op == "share":
        total = sum(vals.values())
        v = vals[query["label"]]
        share = Fraction(100 * v, total)
        steps.append("Total = " + " + ".join(map(str, vals.values())) + f" = {total}.")
        steps.append(
            f"Share of {query['label']} = {v} / {total} × 100% = {float(share):.4f}% ≈ {fmt_num(share, places)}%."
        )
        return Solution(steps, fmt_num(share, places))
    if op in ("pct_more", "pct_change"):
        a_lab, b_lab = (query["b"], query["a"]) if op == "pct_more" else (query["a"], query["b"])
        a, b = vals[a_lab], vals[b_lab]
        pct = Fraction(100 * (b - a), a)
        steps.append(
            f"Change from {a_lab} ({a}) to {b_lab} ({b}) = ({b} − {a}) / {a} × 100% = {float(pct):.4f}% ≈ {fmt_num(pct, places)}%."
        )
        return Solution(steps, fmt_num(pct, places))
    raise SolveError(f"chart: unknown op {op!r}")
