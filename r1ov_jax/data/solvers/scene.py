"""Scene solver: parse the object list (attributes + bounding boxes) and run the CLEVR-style query."""

from __future__ import annotations

import re

from r1ov_jax.data.solvers import Solution, SolveError

_OBJ = re.compile(
    r"^(\d+)\. (small|large) (\w+) (rubber|metal) (cube|sphere|cylinder), bbox \[(\d+), (\d+), (\d+), (\d+)\]$",
    re.MULTILINE,
)


def parse(formal: str) -> list[dict]:
    objs = [
        {
            "id": int(m[1]),
            "size": m[2],
            "color": m[3],
            "material": m[4],
            "shape": m[5],
            "bbox": [int(m[6]), int(m[7]), int(m[8]), int(m[9])],
        }
        for m in _OBJ.finditer(formal)
    ]
    if not objs:
        raise SolveError("scene formal text lists no objects")
    return objs


def _name(o) -> str:
    return f"#{o['id']} {o['size']} {o['color']} {o['material']} {o['shape']}"


def _fdesc(f: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in f.items()) or "any object"


def _ref(objs, ref: dict) -> dict:
    hits = [o for o in objs if all(o[k] == v for k, v in ref.items())]
    if len(hits) != 1:
        raise SolveError(f"reference {ref} matches {len(hits)} objects")
    return hits[0]


def solve(formal: str, question: str, query: dict) -> Solution:
    objs = parse(formal)
    op = query["op"]
    match = lambda o, f: all(o[k] == v for k, v in f.items())
    steps = [f"The object list has {len(objs)} objects: " + "; ".join(_name(o) for o in objs) + "."]
    if op in ("count", "count_after_remove"):
        f = query["filter"]
        hits = [o for o in objs if match(o, f)]
        if not f:
            steps.append(f"Counting all of them gives {len(objs)}.")
            return Solution(steps, str(len(objs)))
        steps.append(
            f"Objects with {_fdesc(f)}: " + (", ".join(_name(o) for o in hits) or "none") + f" → {len(hits)}."
        )
        if op == "count":
            return Solution(steps, str(len(hits)))
        left = len(objs) - len(hits)
        steps.append(f"Removing them leaves {len(objs)} − {len(hits)} = {left} objects.")
        return Solution(steps, str(left))
    if op == "count_rel":
        ref = _ref(objs, query["ref"])
        rel, f = query["rel"], query["filter"]
        bx = ref["bbox"]
        if rel in ("left", "right"):
            key = lambda o: (o["bbox"][0] + o["bbox"][2]) / 2
            steps.append(f"The reference {_name(ref)} has bbox center x = {key(ref)}.")
            hits = [
                o
                for o in objs
                if o is not ref and (key(o) < key(ref) if rel == "left" else key(o) > key(ref))
            ]
            steps.append(
                f"Objects with center x {'<' if rel == 'left' else '>'} {key(ref)}: "
                + (", ".join(f"{_name(o)} (x = {key(o)})" for o in hits) or "none")
                + "."
            )
        else:
            steps.append(
                f"The reference {_name(ref)} has bbox bottom y = {bx[3]} (larger y is nearer the camera)."
            )
            hits = [
                o
                for o in objs
                if o is not ref and (o["bbox"][3] > bx[3] if rel == "front" else o["bbox"][3] < bx[3])
            ]
            steps.append(
                f"Objects with bottom y {'>' if rel == 'front' else '<'} {bx[3]}: "
                + (", ".join(f"{_name(o)} (y = {o['bbox'][3]})" for o in hits) or "none")
                + "."
            )
        if f:
            hits = [o for o in hits if match(o, f)]
            steps.append(
                f"Of these, those with {_fdesc(f)}: " + (", ".join(_name(o) for o in hits) or "none") + "."
            )
        steps.append(f"Count = {len(hits)}.")
        return Solution(steps, str(len(hits)))
    if op == "attr":
        ref = _ref(objs, query["ref"])
        steps.append(
            f"The {query['ref']['color']} {query['ref']['shape']} is {_name(ref)}; its {query['attr']} is {ref[query['attr']]}."
        )
        return Solution(steps, ref[query["attr"]])
    if op == "compare":
        a = [o for o in objs if match(o, query["a"])]
        b = [o for o in objs if match(o, query["b"])]
        steps.append(f"Objects with {_fdesc(query['a'])}: {len(a)}; with {_fdesc(query['b'])}: {len(b)}.")
        steps.append(f"{len(a)} {'>' if len(a) > len(b) else '≤'} {len(b)}.")
        return Solution(steps, "Yes" if len(a) > len(b) else "No")
    if op == "same_attr":
        ref = _ref(objs, query["ref"])
        attr = query["attr"]
        hits = [o for o in objs if o is not ref and o[attr] == ref[attr]]
        steps.append(f"The reference {_name(ref)} has {attr} {ref[attr]}.")
        steps.append(
            f"Other objects with {attr} {ref[attr]}: "
            + (", ".join(_name(o) for o in hits) or "none")
            + f" → {len(hits)}."
        )
        return Solution(steps, str(len(hits)))
    raise SolveError(f"scene: unknown op {op!r}")
