"""Input readers for `r1ov formalize` → Records (image, question, gold answer, choices), in input order.

* a JSONL file — or a folder holding exactly one ``*.jsonl`` — of ``{"image": PATH, "question": …, "answer": …,
  "choices"?: [...] | "A. … B. …", "id"?: …}`` with PATH relative to the JSONL's folder (or absolute);
* the R1-Onevision parquet layout (``*.parquet``) and a Bench TSV (``*.tsv``), read by ``data.importers``.

Bad rows are counted per reason in an ``ImportReport`` naming file and row (``missing_image``, ``bad_image``,
``image_too_large``, ``empty_question``, ``empty_answer``, ``bad_json``, ``bad_choices``, …) and skipped; every
record carries ``meta["source"]`` (file name) and ``meta["row"]`` (JSONL line, parquet row, TSV line).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

from r1ov_jax.data.importers import ImportReport, RowError, accounted, decode_image, iter_bench_tsv
from r1ov_jax.data.importers import iter_r1onevision_parquet
from r1ov_jax.data.record import Record, is_nan_text
from r1ov_jax.errors import InvalidInputError, MissingInputError
from r1ov_jax.rewards.answers import parse_choices_field

JSONL_FIELDS = ("image", "question", "answer", "choices", "id")


def resolve_input(path: str) -> tuple[str, str]:
    """(kind, file) for ``--input``: kind is "jsonl", "parquet" or "tsv"."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
        if len(found) != 1:
            raise MissingInputError(
                f"--input {path}: a folder must hold exactly one *.jsonl listing its images "
                f"(found {len(found)}: {[os.path.basename(f) for f in found][:5]})"
            )
        return "jsonl", found[0]
    if not os.path.isfile(path):
        raise MissingInputError(f"--input {path} does not exist")
    for kind, exts in (("jsonl", (".jsonl", ".json")), ("parquet", (".parquet",)), ("tsv", (".tsv",))):
        if path.lower().endswith(exts):
            return kind, path
    raise InvalidInputError(
        f"--input {path}: expected a .jsonl (with images beside it), an R1-Onevision .parquet or a Bench .tsv"
    )


def _text_field(row: dict, name: str) -> str:
    value = row.get(name)
    if value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return "nan"
    return str(value).strip()


def _jsonl_record(line: bytes, n: int, base: str, name: str, max_pixels: int | None) -> Record:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RowError(
            "bad_encoding", f"byte 0x{line[e.start]:02x} at offset {e.start} is not UTF-8"
        ) from None
    except json.JSONDecodeError as e:
        raise RowError("bad_json", f"not JSON ({e})") from None
    if not isinstance(row, dict):
        raise RowError(
            "bad_json", f"expected an object {{image, question, answer}}, got {type(row).__name__}"
        )
    question, answer = _text_field(row, "question"), _text_field(row, "answer")
    if not question:
        raise RowError("empty_question", "field 'question' is missing or empty")
    if not answer:
        raise RowError("empty_answer", "field 'answer' is missing or empty")
    if is_nan_text(answer):
        raise RowError("nan_answer", f"answer is {answer!r}")
    choices = row.get("choices")
    if isinstance(choices, str):
        try:
            choices = parse_choices_field(choices)
        except ValueError as e:
            raise RowError("bad_choices", str(e)) from None
    elif choices is not None:
        if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
            raise RowError(
                "bad_choices", f"field 'choices' must be a list of option texts, got {choices!r:.80}"
            )
        choices = [str(c) for c in choices] or None
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RowError("missing_image", "field 'image' (a path relative to the JSONL) is missing or empty")
    path = os.path.join(base, image)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RowError("missing_image", f"image {image!r} not found (looked for {path})") from None
    except OSError as e:
        raise RowError("missing_image", f"image {image!r} cannot be read ({e.strerror})") from None
    data = decode_image(data, field=f"image {image!r}", max_pixels=max_pixels)
    rid = _text_field(row, "id") or f"{os.path.splitext(name)[0]}-{n}"
    meta = {"source": name, "row": n, "image": image}
    return Record(
        id=rid, images=[data], formal="", question=question, answer=answer, choices=choices, meta=meta
    )


def _iter_jsonl(path: str, report: ImportReport, max_pixels: int | None) -> Iterator[Record]:
    base, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    with open(path, "rb") as f:
        # n = line number (1-based); blank lines are not rows
        rows = ((n, (n, line)) for n, line in enumerate(f, start=1) if line.strip())

        def convert(nl):
            n, line = nl
            return _jsonl_record(line, n, base, name, max_pixels).validate()

        yield from accounted(report, rows, convert)


def iter_inputs(path: str, report: ImportReport, *, max_pixels: int | None = None) -> Iterator[Record]:
    """Good records of ``--input`` in input order; bad rows are counted in ``report`` (file and row named)."""
    kind, file = resolve_input(path)
    report.path = file
    name = os.path.basename(file)
    if kind == "jsonl":
        yield from _iter_jsonl(file, report, max_pixels)
        return
    reader = iter_r1onevision_parquet if kind == "parquet" else iter_bench_tsv
    for rec in reader(file, report, max_pixels=max_pixels):
        meta = {k: v for k, v in rec.meta.items() if k not in ("type", "source")}
        meta.setdefault("row", meta.get("index"))  # Bench rows are named by their index column
        meta["dataset"], meta["source"] = rec.meta.get("source"), name
        # the dataset's own response is not the teacher's: the pipeline writes a new trace
        yield Record(id=rec.id, images=rec.images, formal="", question=rec.question, answer=rec.answer,
                     choices=rec.choices, meta=meta)  # fmt: skip
