"""Circuit solver: parse the SPICE netlist; series/parallel reduction for the equivalent resistance, nodal analysis
(KCL, solved exactly with fractions) for individual resistor currents and voltages."""

from __future__ import annotations

from fractions import Fraction

from r1ov_jax.data.formalize.common import fmt_num
from r1ov_jax.data.solvers import Solution, SolveError


def parse(formal: str) -> tuple[tuple[str, str, Fraction], list[tuple[str, str, str, Fraction]]]:
    """→ ((pos node, neg node, volts), [(name, node a, node b, ohms)])."""
    source, res = None, []
    for i, ln in enumerate(formal.splitlines(), 1):
        tok = ln.split()
        if not tok or tok[0].startswith("*") or tok[0].lower() == ".end":
            continue
        name = tok[0].upper()
        try:
            if name.startswith("V"):
                source = (tok[1], tok[2], Fraction(tok[-1]))
            elif name.startswith("R"):
                res.append((tok[0], tok[1], tok[2], Fraction(tok[3])))
            else:
                raise SolveError(f"netlist line {i}: unsupported element {tok[0]!r}")
        except (IndexError, ValueError):
            raise SolveError(f"netlist line {i}: cannot parse {ln!r}") from None
    if source is None or not res:
        raise SolveError("netlist needs one voltage source and at least one resistor")
    return source, res


def _ohm(x: Fraction) -> str:
    return fmt_num(x, 3) if x.denominator != 1 else str(x.numerator)


def reduce_network(res, a: str, b: str, steps: list[str]) -> Fraction:
    """Series/parallel reduction between terminals a, b; records each combination in `steps`."""
    edges = [list(r) for r in res]
    while len(edges) > 1:
        done = False
        for i in range(len(edges)):  # parallel: two elements between the same pair of nodes
            for j in range(i + 1, len(edges)):
                if {edges[i][1], edges[i][2]} == {edges[j][1], edges[j][2]}:
                    ni, nj, ri, rj = edges[i][0], edges[j][0], edges[i][3], edges[j][3]
                    r = ri * rj / (ri + rj)
                    steps.append(
                        f"{ni} ∥ {nj} = ({_ohm(ri)} × {_ohm(rj)}) / ({_ohm(ri)} + {_ohm(rj)}) = {_ohm(r)} Ω."
                    )
                    edges[i] = [f"({ni}∥{nj})", edges[i][1], edges[i][2], r]
                    del edges[j]
                    done = True
                    break
            if done:
                break
        if done:
            continue
        deg: dict[str, list[int]] = {}
        for k, e in enumerate(edges):
            deg.setdefault(e[1], []).append(k)
            deg.setdefault(e[2], []).append(k)
        for node, ks in deg.items():  # series: an inner node touched by exactly two elements
            if node not in (a, b) and len(ks) == 2:
                e1, e2 = edges[ks[0]], edges[ks[1]]
                u = e1[1] if e1[2] == node else e1[2]
                v = e2[1] if e2[2] == node else e2[2]
                r = e1[3] + e2[3]
                steps.append(f"{e1[0]} + {e2[0]} in series = {_ohm(e1[3])} + {_ohm(e2[3])} = {_ohm(r)} Ω.")
                new = [f"({e1[0]}+{e2[0]})", u, v, r]
                edges = [e for k, e in enumerate(edges) if k not in ks] + [new]
                done = True
                break
        if not done:
            raise SolveError("network is not series-parallel reducible")
    return edges[0][3]


def node_voltages(source, res) -> tuple[dict[str, Fraction], list[str]]:
    """Nodal analysis: fix the source nodes, write KCL at every other node, solve exactly."""
    pos, neg, volts = source
    nodes = sorted({n for r in res for n in r[1:3]} - {pos, neg}, key=lambda n: (len(n), n))
    known = {neg: Fraction(0), pos: volts}
    steps = [f"Take node {neg} as ground (0 V); node {pos} is at {volts} V."]
    idx = {n: i for i, n in enumerate(nodes)}
    m = [[Fraction(0)] * (len(nodes) + 1) for _ in nodes]
    for n in nodes:
        terms = []
        for name, a, b, r in res:
            if n not in (a, b):
                continue
            o = b if a == n else a
            terms.append(f"(V{n} − {'V' + o if o not in known else str(known[o])})/{_ohm(r)}")
            m[idx[n]][idx[n]] += 1 / r
            if o in known:
                m[idx[n]][-1] += known[o] / r
            else:
                m[idx[n]][idx[o]] -= 1 / r
        steps.append(f"KCL at node {n}: " + " + ".join(terms) + " = 0.")
    for c in range(len(nodes)):  # Gauss-Jordan elimination on exact fractions
        p = next(r for r in range(c, len(nodes)) if m[r][c] != 0)
        m[c], m[p] = m[p], m[c]
        m[c] = [x / m[c][c] for x in m[c]]
        for r in range(len(nodes)):
            if r != c and m[r][c] != 0:
                m[r] = [x - m[r][c] * y for x, y in zip(m[r], m[c])]
    v = dict(known)
    v.update({n: m[idx[n]][-1] for n in nodes})
    if nodes:
        steps.append("Solving: " + ", ".join(f"V{n} = {_ohm(v[n])} V" for n in nodes) + ".")
    return v, steps


def solve(formal: str, question: str, query: dict) -> Solution:
    source, res = parse(formal)
    pos, neg, volts = source
    op = query["op"]
    steps = [
        f"The netlist has a {volts} V source between nodes {pos} and {neg} and resistors "
        + ", ".join(f"{n} = {_ohm(r)} Ω ({a}–{b})" for n, a, b, r in res)
        + "."
    ]
    if op in ("req", "current", "power"):
        req = reduce_network(res, pos, neg, steps)
        steps.append(f"Equivalent resistance R_eq = {_ohm(req)} Ω.")
        if op == "req":
            return Solution(steps, fmt_num(req, 2))
        i = volts / req
        steps.append(f"Source current I = V / R_eq = {volts} / {_ohm(req)} = {float(i):.4f} A.")
        if op == "current":
            return Solution(steps, fmt_num(i, 2))
        p = volts * i
        steps.append(f"Power P = V × I = {volts} × {float(i):.4f} = {float(p):.4f} W.")
        return Solution(steps, fmt_num(p, 2))
    if op in ("resistor_current", "resistor_voltage"):
        name = query["name"]
        hit = [r for r in res if r[0] == name]
        if not hit:
            raise SolveError(f"netlist has no resistor {name!r}")
        _, a, b, r = hit[0]
        v, more = node_voltages(source, res)
        steps += more
        drop = abs(v[a] - v[b])
        steps.append(
            f"Voltage across {name} = |V{a} − V{b}| = |{_ohm(v[a])} − {_ohm(v[b])}| = {float(drop):.4f} V."
        )
        if op == "resistor_voltage":
            return Solution(steps, fmt_num(drop, 2))
        i = drop / r
        steps.append(f"Current through {name} = {float(drop):.4f} / {_ohm(r)} = {float(i):.4f} A.")
        return Solution(steps, fmt_num(i, 2))
    raise SolveError(f"circuit: unknown op {op!r}")
