"""What the teacher VLM is asked: the image type first (unless given), then a formal description in the form the
paper uses for that type (R1-Onevision §3: charts → data tables / plotting code, diagrams → elements and relations,
circuits → SPICE netlists, documents → OCR text, tables → CSV, natural scenes → dense captions with object boxes,
math figures → precise geometry or LaTeX).

The description is asked without the question: it describes the image, so every question about one image reuses
the same (cached) description, and the reasoner cannot be handed a hint the image does not hold. The reasoner's
prompt lives in ``r1ov_jax.data.reasoning`` (one prompt for the synthetic and the real-image pipeline).
"""

from __future__ import annotations

import base64
import re

from r1ov_jax.data.record import image_format

# type → (one-line definition shown to the detector, formalization instruction)
IMAGE_TYPES: dict[str, tuple[str, str]] = {
    "chart": (
        "a bar, line, pie or scatter chart or a function plot",
        "Transcribe the chart into its data. Give the title, the axis labels with units and the legend, then a CSV "
        "table of every series with the values as read from the chart (say when a value is estimated between "
        "gridlines), then short matplotlib code that would redraw the chart.",
    ),
    "diagram": (
        "a flowchart, block diagram, graph of nodes and edges, timeline or labelled scientific illustration",
        "Describe the diagram formally: list every element (node, box, part, label) and every relation between "
        "elements (arrows with their direction and labels, containment, order), written as Mermaid code, then any "
        "other text the diagram shows.",
    ),
    "geometry": (
        "a geometry figure: points, lines, angles, circles, polygons or solids",
        "Give a precise geometric description of the figure: every labelled point (with coordinates when a grid "
        "or values show them), segment, angle, circle and polygon; every given measure (lengths, angles, tick "
        "marks, right-angle marks); and every relation shown (parallel, perpendicular, tangent, equal, midpoint, "
        "point on a line or circle).",
    ),
    "scene": (
        "a photograph or rendering of a natural scene, objects or people",
        "Write a dense caption of the image, then a JSON list of every visible object with its name, attributes "
        "(color, size, material, state) and bounding box [x1, y1, x2, y2] in pixels of this image.",
    ),
    "document": (
        "a document, page, screenshot, poster, sign or other text-rich image",
        "Transcribe all text in the image exactly (OCR), in reading order, keeping headings, lists, line breaks "
        "and numbers as written; render any table as markdown and describe any figure in one sentence.",
    ),
    "math": (
        "printed or handwritten formulas, equations or a worked math problem",
        "Transcribe every formula, equation and expression in the image as LaTeX, with the surrounding text in "
        "reading order; describe any figure or plotted function precisely.",
    ),
    "circuit": (
        "an electrical circuit diagram",
        "Write the circuit as a SPICE netlist: one line per component (name, nodes, value with unit), sources "
        "with their polarity, and a comment line naming each node as labelled in the diagram.",
    ),
    "table": (
        "a table of rows and columns",
        "Transcribe the table exactly as CSV: the header row first, then one line per row, every cell as written "
        "(numbers with their units); add the table's title and footnotes as comment lines starting with #.",
    ),
}
FALLBACK_TYPE = "other"
_FALLBACK_INSTRUCTION = (
    "Describe the image precisely and completely, so that someone who cannot see it could answer any question "
    "about it: every object, all text and numbers, the layout and the relations between the parts."
)
FORMALIZER_SYSTEM = (
    "You write formal, text-only descriptions of images for a reasoner who cannot see them. Be exact and "
    "complete; describe only what the image shows; do not answer or solve anything."
)
# Words a detector may answer with instead of our type names.
_SYNONYMS = {
    "plot": "chart", "graph": "chart", "bar": "chart", "pie": "chart", "flowchart": "diagram",
    "illustration": "diagram", "photo": "scene", "photograph": "scene", "natural": "scene", "screenshot": "document",
    "text": "document", "ocr": "document", "page": "document", "poster": "document", "formula": "math",
    "equation": "math", "handwritten": "math", "schematic": "circuit", "electrical": "circuit",
}  # fmt: skip


def image_types() -> list[str]:
    """The type names a user may pass (``--image-type``), the fallback included."""
    return [*IMAGE_TYPES, FALLBACK_TYPE]


def image_part(image: bytes) -> dict:
    """An OpenAI ``image_url`` content part holding the image as a data: URL."""
    fmt = image_format(image) or "png"
    return {
        "type": "image_url",
        "image_url": {"url": f"data:image/{fmt};base64,{base64.b64encode(image).decode('ascii')}"},
    }


def detect_messages(image: bytes) -> list[dict]:
    """Ask which of IMAGE_TYPES the image is; the answer is one type name."""
    kinds = "\n".join(f"- {name}: {definition}" for name, (definition, _) in IMAGE_TYPES.items())
    text = (
        f"Which one of these kinds best describes the image?\n{kinds}\n- {FALLBACK_TYPE}: none of these\n"
        "Answer with the kind's name only."
    )
    return [{"role": "user", "content": [image_part(image), {"type": "text", "text": text}]}]


def parse_type(reply: str) -> str | None:
    """The type a detector's reply names (its first type name or synonym), or None when it names none."""
    words = re.findall(r"[a-z]+", reply.lower())
    for w in words:
        if w in IMAGE_TYPES or w == FALLBACK_TYPE:
            return w
    for w in words:
        if w in _SYNONYMS:
            return _SYNONYMS[w]
    return None


def formalize_messages(image: bytes, kind: str) -> list[dict]:
    """The formalization request for an image of type ``kind`` (unknown kinds get the generic instruction)."""
    instruction = IMAGE_TYPES[kind][1] if kind in IMAGE_TYPES else _FALLBACK_INSTRUCTION
    return [
        {"role": "system", "content": FORMALIZER_SYSTEM},
        {"role": "user", "content": [image_part(image), {"type": "text", "text": instruction}]},
    ]
