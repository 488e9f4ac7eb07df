"""Readers for the public R1-Onevision files on local disk → Records. Tolerant: bad rows are counted per reason,
logged and skipped; every good row comes through.

A row is bad, whatever the reason, when any of its checks fails or raises: bytes that are not UTF-8
(``bad_encoding``), an image whose header announces more than ``max_pixels`` (``image_too_large``, checked before any
pixel is decoded; default ``processing.image.MAX_INPUT_PIXELS`` ≈ 90 MP), pixel data that fails a full decode
(``bad_image``), fields nested or long enough to exhaust the parser (``too_nested`` / ``too_long``), a NaN or empty
answer (``nan_answer`` / ``empty_answer``); any other exception while converting a row is counted as
``error_<Type>``. ``ImportReport`` names the file and the row of each (``report.examples``, ``report.summary()``).

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

from PIL import Image

from r1ov_jax.data.record import Record, RecordError, image_format, is_nan_text
from r1ov_jax.errors import InvalidInputError
from r1ov_jax.processing.image import ImageTooLargeError, check_image_bytes
from r1ov_jax.rewards.answers import boxed_contents, last_answer_block, parse_choices_field

log = logging.getLogger(__name__)

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}
SYSTEM_ROLES = {"system"}
IMAGE_MARKER = "<image>"
MAX_ANSWER_CHARS = 20_000  # a gold answer is short; longer ones are degenerate responses
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

    @property
    def reasons(self) -> dict:
        """Skipped rows per reason (a plain dict)."""
        return dict(self.skipped)

    def summary(self) -> str:
        """One line: "PATH: kept K of N rows; skipped S (reason: n, ...); e.g. row R: detail"."""
        n_skip = sum(self.skipped.values())
        line = f"{self.path}: kept {self.kept} of {self.rows} rows"
        if n_skip:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            line += f"; skipped {n_skip} ({reasons})"
            if self.examples:
                row, _, detail = self.examples[0]
                line += f"; e.g. row {row}: {detail[:200]}"
        return line

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
            reason = "nan_answer" if "NaN" in str(e) else "invalid_record"
            report.skip(n, RowError(reason, str(e)))
        except Exception as e:  # noqa: BLE001 - whatever a row does, it costs that row, never the import
            report.skip(n, row_error(e))
        else:
            report.kept += 1
            yield out


def row_error(e: BaseException) -> RowError:
    """Any exception raised while converting a row → a RowError with a counter key."""
    if isinstance(e, RowError):
        return e
    if isinstance(e, RecursionError):
        return RowError("too_nested", f"a field is nested too deeply to read ({e})")
    if isinstance(e, MemoryError):
        return RowError("too_long", "a field is too large to read")
    if isinstance(e, (UnicodeError,)):
        return RowError("bad_encoding", f"not UTF-8 ({e})")
    return RowError(f"error_{type(e).__name__}", f"{type(e).__name__}: {e}")


def check_utf8(cells, where: str = "") -> None:
    """Raise RowError("bad_encoding") for text read with ``errors="surrogateescape"`` that held non-UTF-8 bytes,
    naming the column and the byte."""
    for col, text in cells:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[e.start]
            byte = ord(bad) - 0xDC00 if 0xDC80 <= ord(bad) <= 0xDCFF else None
            shown = f"byte 0x{byte:02x}" if byte is not None else f"character {bad!r}"
            raise RowError(
                "bad_encoding", f"{where}column {col!r}: {shown} at offset {e.start} is not UTF-8"
            ) from None


def decode_image(value, *, field: str = "image", max_pixels: int | None = None) -> bytes:
    """base64 text (optionally a data: URI), raw bytes, or {"bytes": …} → encoded image bytes (PNG if re-encoded).

    The image must open, hold at most ``max_pixels`` (default ``processing.image.MAX_INPUT_PIXELS``, read from the
    header before decoding) and decode fully; else RowError ``bad_image`` / ``image_too_large``."""
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
        with Image.open(io.BytesIO(data)) as im:  # structure (e.g. PNG chunk CRCs); header size checked next
            im.verify()
    except Image.DecompressionBombError as e:
        raise RowError("image_too_large", f"{field}: {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise RowError(
            "bad_image", f"{field} decodes to {len(data)} bytes that are not an image ({e})"
        ) from None
    try:  # pixel cap from the header BEFORE decoding, then a full decode of the pixels
        check_image_bytes(data, max_pixels=max_pixels, where=field)
    except ImageTooLargeError as e:
        raise RowError("image_too_large", str(e)) from None
    except InvalidInputError as e:
        raise RowError("bad_image", str(e)) from None
    if image_format(data) is None:  # e.g. BMP/TIFF: store as PNG so every record holds PNG/JPEG/GIF/WebP
        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as im:
            im.save(buf, format="PNG")
        data = buf.getvalue()
    return data


def split_response(value: str) -> tuple[str, str]:
    """Assistant response → (trace, final answer)."""
    text = value.strip()
    block = last_answer_block(text, ignore_case=False)  # linear time, same blocks as re.findall
    if block is not None:
        return text, block.strip()
    tail = text.rsplit("</think>", 1)[-1].strip() if "</think>" in text else text
    boxed = boxed_contents(tail)
    if boxed:
        return text, boxed[-1][1].strip()
    return text, tail


# ----------------------------------------------------------------------------------------------- R1-Onevision
def _conversation_row(
    row: dict, n: int, report: ImportReport, source: str, max_pixels: int | None = None
) -> Record:
    check_utf8([(k, v) for k, v in row.items() if isinstance(v, str) and k != "image"])
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
    if is_nan_text(answer):
        raise RowError("nan_answer", f"answer is {answer!r}")
    if len(answer) > MAX_ANSWER_CHARS:
        raise RowError("too_long", f"answer has {len(answer)} characters (at most {MAX_ANSWER_CHARS})")
    image = decode_image(row.get("image"), max_pixels=max_pixels)
    if len(users) > 1:
        report.notes["multi_turn_first_pair_used"] += 1
    meta = {"type": "imported", "source": "r1-onevision", "row": n}
    return Record(id=rid, images=[image], formal="", question=question, answer=answer, trace=trace, meta=meta)


class _Unreadable:
    """Stands for a parquet row that pyarrow cannot convert (e.g. invalid UTF-8 in a string column)."""

    def __init__(self, error: BaseException):
        self.error = error


def _parquet_rows(pf, batch_size: int, cols: list[str]):
    """Rows as dicts; a batch that fails to convert is retried row by row, so only the bad rows are lost."""
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
        try:
            rows = batch.to_pylist()
        except Exception:  # noqa: BLE001 - find the bad rows one by one
            rows = []
            for i in range(batch.num_rows):
                try:
                    rows.extend(batch.slice(i, 1).to_pylist())
                except Exception as e:  # noqa: BLE001
                    rows.append(_Unreadable(e))
        yield from rows


def iter_r1onevision_parquet(
    path: str, report: ImportReport | None = None, batch_size: int = 256, *, max_pixels: int | None = None
) -> Iterator[Record]:
    """Stream records from an R1-Onevision parquet file; bad rows are counted in `report` and skipped.

    ``max_pixels``: the decompression-bomb cap on each image (default ``processing.image.MAX_INPUT_PIXELS``)."""
    import pyarrow.parquet as pq

    report = report if report is not None else ImportReport(path)
    try:
        pf = pq.ParquetFile(path)
    except OSError as e:
        raise InvalidInputError(f"{path}: not a readable parquet file ({e})") from None
    names = set(pf.schema_arrow.names)
    missing = {"image", "conversations"} - names
    if missing:
        raise InvalidInputError(f"{path}: parquet lacks column(s) {sorted(missing)}; has {sorted(names)}")
    cols = [c for c in ("id", "image", "conversations") if c in names]
    numbered = ((n, (n, row)) for n, row in enumerate(_parquet_rows(pf, batch_size, cols)))
    name = os.path.basename(path)

    def convert(nr):
        n, row = nr
        if isinstance(row, _Unreadable):
            e = row.error
            reason = "bad_encoding" if "utf" in str(e).lower() else f"error_{type(e).__name__}"
            raise RowError(reason, f"{path} row {n}: {type(e).__name__}: {e}")
        return _conversation_row(row, n, report, name, max_pixels).validate()

    yield from accounted(report, numbered, convert)


def load_r1onevision_parquet(
    path: str, *, max_pixels: int | None = None
) -> tuple[list[Record], ImportReport]:
    report = ImportReport(path)
    return list(iter_r1onevision_parquet(path, report, max_pixels=max_pixels)), report


# ---------------------------------------------------------------------------------------------------- Bench TSV
def iter_bench_tsv(
    path: str, report: ImportReport | None = None, *, max_pixels: int | None = None
) -> Iterator[Record]:
    """Stream records from an R1-Onevision-Bench TSV; bad rows are counted in `report` and skipped."""
    report = report if report is not None else ImportReport(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are long fields
    images: dict[str, bytes] = {}  # index → image, for rows that refer to an earlier row's image
    # surrogateescape: a non-UTF-8 byte costs its row (bad_encoding, named by check_utf8), not the file
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
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
            check_utf8(row.items(), f"{path}: ")
            idx = row["index"].strip()
            question, answer = row["question"].strip(), row["answer"].strip()
            if not question:
                raise RowError("empty_question", "question is empty")
            if not answer:
                raise RowError("empty_answer", "answer is empty")
            if is_nan_text(answer):
                raise RowError("nan_answer", f"answer is {answer!r}")
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
                image = decode_image(img, max_pixels=max_pixels)
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


def load_bench_tsv(path: str, *, max_pixels: int | None = None) -> tuple[list[Record], ImportReport]:
    report = ImportReport(path)
    return list(iter_bench_tsv(path, report, max_pixels=max_pixels)), report
