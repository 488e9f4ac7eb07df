"""Cross-modal formalization generators: each makes an image together with its exact formal description.

``GENERATORS = {name: generate(seed, level=None) -> Record}``; ``generate(type, seed, level)`` dispatches.
Every generator is deterministic in its seed (same seed → same bytes) and writes ``meta.query``, the question as a
small program that ``r1ov_jax.data.reasoning`` executes against the parsed formal text.
"""

from __future__ import annotations

from r1ov_jax.data.formalize import chart, circuit, document, function, geometry, scene, table
from r1ov_jax.data.record import Record

GENERATORS = {
    "chart": chart.generate,
    "geometry": geometry.generate,
    "scene": scene.generate,
    "table": table.generate,
    "circuit": circuit.generate,
    "document": document.generate,
    "function": function.generate,
}


def generate(type: str, seed: int, level: int | str | None = None) -> Record:
    """One record of generator `type` from `seed`; `level` 0..3 or a Bench grade name (None: drawn from the seed)."""
    if type not in GENERATORS:
        raise KeyError(f"unknown generator {type!r}; available: {sorted(GENERATORS)}")
    return GENERATORS[type](seed, level)
