"""Readers for the public R1-Onevision files on local disk → Records. Tolerant: bad rows are counted per reason,
logged and skipped; every good row comes through.

* R1-Onevision dataset (parquet): columns ``id``, ``image`` (base64 string; raw bytes or an HF ``{"bytes": …}``
  struct are accepted too), ``conversations`` = list of ``{from, value}`` with roles human/user, gpt/assistant
  (and optionally system). The assistant value is ``<think>…</think>\\n\\nanswer``; it becomes the record's trace and
  the text after ``</think>`` (or an ``<answer>`` block, or the last ``\\boxed{}``) its answer.
* R1-Onevision-Bench (TSV): columns ``index, question, choices, answer, level, category, image`` (image = base64,
  or — VLMEvalKit's de-duplication — the ``index`` of an earlier row holding the same image).
"""

from __future__ import annotations

import base64
import binascii
import collections
import csv
import dataclasses
import io
import logging
import os
import re
import sys
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from r1ov_jax.data.record import Record, RecordError, image_format
from r1ov_jax.rewards.answers import boxed_contents, parse_choices_field
from r1ov_jax.errors import InvalidInputError

log = logging.getLogger(__name__)

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}
SYSTEM_ROLES = {"system"}
IMAGE_MARKER = "<image>"
BENCH_COLUMNS = ("index", "question", "choices", "answer", "level", "category", "image")


class RowError(ValueError):
    """A row is malformed; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclasses.dataclass
class ImportReport:
    """What an import did: rows read, records kept, skipped rows per reason, and the first few skipped rows."""

    path: str
    rows: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)  # (row number, reason, detail), first 20
    notes: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )  # kept rows with quirks

    def skip(self, row: int, err: RowError) -> None:
        self.skipped[err.reason] += 1
        if len(self.examples) < 20:
            self.examples.append((row, err.reason, str(err)))
        log.warning("%s row %d skipped (%s): %s", self.path, row, err.reason, err)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows": self.rows,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "examples": [list(e) for e in self.examples],
        }


def accounted(report: ImportReport, rows, convert):
    """Yields ``convert(raw)`` for each ``(row number, raw row)`` pair, counting every row in ``report``; a row whose
    ``convert`` raises ``RowError`` or ``RecordError`` is counted per reason and skipped."""
    for n, raw in rows:
        report.rows += 1
        try:
            out = convert(raw)
        except RowError as e:
            report.skip(n, e)
        except RecordError as e:
            report.skip(n, RowError("invalid_record", str(e)))
        else:
            report.kept += 1
            yield out


def decode_image(value, *, field: str = "image") -> bytes:
    """base64 text (optionally a data: URI), raw bytes, or {"bytes": …} → encoded image bytes (PNG if re-encoded)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("missing_image", f"{field} is empty")
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("data:"):
            s = s.split(",", 1)[-1]
        s = "".join(s.split())  # encoders often wrap base64 at 76 columns
        try:
            data = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RowError("bad_base64", f"{field} is not valid base64 ({e})") from None
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise RowError("missing_image", f"{field} has type {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RowError(
            "bad_image", f"{field} decodes to {len(data)} bytes that are not an image ({e})"
        ) from None
    if image_format(data) is None:  # e.g. BMP/TIFF: store as PNG so every record holds PNG/JPEG/GIF/WebP
        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as im:
            im.save(buf, format="PNG")
        data = buf.getvalue()
    return data


def split_response(value: str) -> tuple[str, str]:
    """Assistant response → (trace, final answer)."""
    text = value.strip()
    m = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if m:
        return text, m[-1].strip()
    tail = text.rsplit("</think>", 1)[-1].strip() if "</think>" in text else text
    boxed = boxed_contents(tail)
    if boxed:
        return text, boxed[-1][1].strip()
    return text, tail


# ----------------------------------------------------------------------------------------------- R1-Onevision
def _conversation_row(row: dict, n: int, report: ImportReport, source: str) -> Record:
    rid = row.get("id")
    rid = str(rid) if rid not in (None, "") else f"{source}:{n}"
    conv = row.get("conversations")
    if isinstance(conv, str):
        raise RowError("bad_conversations", "conversations is a string, expected a list of {from, value}")
    if not isinstance(conv, (list, tuple)) or not conv:
        raise RowError("bad_conversations", f"conversations is {type(conv).__name__} / empty")
    turns = []
    for t in conv:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError("bad_conversations", f"turn {t!r:.80} lacks 'from'/'value'")
        role = str(t["from"] or "").strip().lower()
        if role not in USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES:
            raise RowError("unknown_role", f"role {t['from']!r}")
        turns.append((role, t["value"] if isinstance(t["value"], str) else ""))
    users = [v for r, v in turns if r in USER_ROLES]
    bots = [v for r, v in turns if r in ASSISTANT_ROLES]
    if not users or not users[0].strip():
        raise RowError("empty_question", "no user turn with text")
    if IMAGE_MARKER not in users[0]:
        raise RowError("missing_image_marker", f"first user turn has no {IMAGE_MARKER} marker")
    if not bots or not bots[0].strip():
        raise RowError("empty_answer", "no assistant turn with text")
    question = users[0].replace(IMAGE_MARKER, "").strip()
    if not question:
        raise RowError("empty_question", "user turn holds only the image marker")
    trace, answer = split_response(bots[0])
    if not answer:
        raise RowError("empty_answer", "assistant turn has no text after </think>")
    image = decode_image(row.get("image"))
    if len(users) > 1:
        report.notes["multi_turn_first_pair_used"] += 1
    meta = {"type": "imported", "source": "r1-onevision", "row": n}
    return Record(id=rid, images=[image], formal="", question=question, answer=answer, trace=trace, meta=meta)


def iter_r1onevision_parquet(
    path: str, report: ImportReport | None = None, batch_size: int = 256
) -> Iterator[Record]:
    """Stream records from an R1-Onevision parquet file; bad rows are counted in `report` and skipped."""
    import pyarrow.parquet as pq

    report = report if report is not None else ImportReport(path)
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    missing = {"image", "conversations"} - names
    if missing:
        raise InvalidInputError(f"{path}: parquet lacks column(s) {sorted(missing)}; has {sorted(names)}")
    cols = [c for c in ("id", "image", "conversations") if c in names]
    rows = (
        row for batch in pf.iter_batches(batch_size=batch_size, columns=cols) for row in batch.to_pylist()
    )
    numbered = ((n, (n, row)) for n, row in enumerate(rows))
    name = os.path.basename(path)
    yield from accounted(
        report, numbered, lambda nr: _conversation_row(nr[1], nr[0], report, name).validate()
    )


def load_r1onevision_parquet(path: str) -> tuple[list[Record], ImportReport]:
    report = ImportReport(path)
    return list(iter_r1onevision_parquet(path, report)), report


# ---------------------------------------------------------------------------------------------------- Bench TSV
def iter_bench_tsv(path: str, report: ImportReport | None = None) -> Iterator[Record]:
    """Stream records from an R1-Onevision-Bench TSV; bad rows are counted in `report` and skipped."""
    report = report if report is not None else ImportReport(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are long fields
    images: dict[str, bytes] = {}  # index → image, for rows that refer to an earlier row's image
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise InvalidInputError(f"{path}: empty file, expected header {BENCH_COLUMNS}")
        header = [h.strip().lower() for h in header]
        missing = [c for c in BENCH_COLUMNS if c not in header and c != "choices"]
        if missing:
            raise InvalidInputError(
                f"{path}: header lacks column(s) {missing}; expected {BENCH_COLUMNS}, got {header}"
            )

        def to_record(cells):
            if len(cells) != len(header):
                raise RowError("bad_field_count", f"{len(cells)} fields, header has {len(header)}")
            row = dict(zip(header, cells))
            idx = row["index"].strip()
            question, answer = row["question"].strip(), row["answer"].strip()
            if not question:
                raise RowError("empty_question", "question is empty")
            if not answer:
                raise RowError("empty_answer", "answer is empty")
            try:
                choices = parse_choices_field(row.get("choices", ""))
            except ValueError as e:
                raise RowError("bad_choices", str(e)) from None
            img = row["image"].strip()
            if re.fullmatch(r"\d{1,10}", img) and img != idx:
                if img not in images:
                    raise RowError("bad_image_ref", f"image refers to index {img}, which has no image")
                image = images[img]
            else:
                image = decode_image(img)
            images[idx] = image
            meta = {
                "type": "bench",
                "source": "r1-onevision-bench",
                "index": idx,
                "level": row["level"].strip(),
                "category": row["category"].strip(),
            }
            return Record(
                id=f"bench-{idx}",
                images=[image],
                formal="",
                question=question,
                answer=answer,
                choices=choices,
                meta=meta,
            ).validate()

        # n = line number of the row in the file (header is 1)
        rows = ((n, cells) for n, cells in enumerate(reader, start=2) if cells)
        yield from accounted(report, rows, to_record)


def load_bench_tsv(path: str) -> tuple[list[Record], ImportReport]:
    report = ImportReport(path)
    return list(iter_bench_tsv(path, report)), report
