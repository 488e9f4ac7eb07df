"""Deterministic solvers: parse a record's formal text, execute its ``meta.query``, and return the worked steps.

Each module exposes ``solve(formal, question, query) -> Solution``. They read only the formal text (plus the question
and its query program), never generator internals, so they are the "text-only reasoner" of the paper's pipeline.
Steps refer to the formal description ("the CSV", "the netlist", ...); ``rewrite.py`` later turns those references
into what "the image shows".
"""

from __future__ import annotations

import dataclasses


class SolveError(ValueError):
    """The formal text could not be parsed, or the query does not apply to it."""


@dataclasses.dataclass
class Solution:
    steps: list[str]
    value: str  # the answer value (before mapping to a multiple-choice letter)


def solver_for(kind: str):
    """The ``solve`` function for a generator type."""
    from r1ov_jax.data.solvers import chart, circuit, document, function, geometry, scene, table

    table_ = {
        "chart": chart,
        "geometry": geometry,
        "scene": scene,
        "table": table,
        "circuit": circuit,
        "document": document,
        "function": function,
    }
    if kind not in table_:
        raise SolveError(f"no solver for type {kind!r}; available: {sorted(table_)}")
    return table_[kind].solve
