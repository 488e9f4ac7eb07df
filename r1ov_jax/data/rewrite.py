"""Role-play rewrite (step 4 of the paper's pipeline): a trace written over the formal description is rewritten so
it reads as if the model were looking at the image ("the chart shows …", "the circuit diagram shows …").

Rule-based and deterministic: references to the formal artefact (description, CSV, netlist, object list, plotting
code, …) become the visual noun for the record's type; "gives/lists/reads" after them become "shows". Numbers,
the <think>/<answer> tags and the answer itself are never touched.
"""

from __future__ import annotations

import dataclasses
import re

from r1ov_jax.data.record import Record

# What the picture is, per generator type (imported data falls back to "the image").
VISUAL_NOUN = {
    "chart": "the chart",
    "geometry": "the figure",
    "scene": "the image",
    "table": "the table in the image",
    "circuit": "the circuit diagram",
    "document": "the document in the image",
    "function": "the graph",
    "diagram": "the diagram",  # `r1ov formalize` image types beyond the generators'
    "math": "the figure",
}

# Words that name the formal text rather than the image; "text" and "data" only as objects of these verbs/preps.
_ARTEFACT = (
    r"(?:formal |textual |given |provided )?"
    r"(?:description|netlist|spice netlist|csv data|csv|data table|object list|list of objects|plotting code|"
    r"code|expression|coordinates? list|schedule text|report text|ocr text|text|report|markdown table|table)"
)
_PREFIXED = re.compile(rf"\b(according to|based on|from|in|using|per) the {_ARTEFACT}\b", re.IGNORECASE)
_BARE = re.compile(rf"\b(the|this) {_ARTEFACT}\b", re.IGNORECASE)
_NOUNS = "|".join(sorted({re.escape(n[len("the ") :]) for n in VISUAL_NOUN.values()}, key=len, reverse=True))
_VERB = re.compile(rf"\b([Tt]he (?:{_NOUNS})) (gives|lists|reads|says|states|contains|specifies|provides)\b")
_LEAD = {"according to": "looking at", "based on": "looking at", "per": "as shown in", "using": "reading"}


def rewrite_text(text: str, kind: str | None = None) -> str:
    """Rewrite references to the formal description in `text` as references to the image of type `kind`."""
    noun = VISUAL_NOUN.get(kind or "", "the image")

    def prefixed(m: re.Match) -> str:
        lead = m.group(1)
        new = _LEAD.get(lead.lower(), lead.lower())
        if lead[0].isupper():
            new = new[0].upper() + new[1:]
        return f"{new} {noun}"

    def bare(m: re.Match) -> str:
        return noun[0].upper() + noun[1:] if m.group(1)[0].isupper() else noun

    out = _PREFIXED.sub(prefixed, text)
    out = _BARE.sub(bare, out)
    return _VERB.sub(lambda m: f"{m.group(1)} shows", out)


def rewrite(rec: Record) -> Record:
    """The record with its trace's <think> part role-play rewritten (the <answer> part is left as is)."""
    if not rec.trace:
        return rec
    kind = rec.meta.get("type")
    head, sep, tail = rec.trace.partition("</think>")
    new = rewrite_text(head, kind) + sep + tail if sep else rewrite_text(rec.trace, kind)
    return dataclasses.replace(rec, trace=new)
