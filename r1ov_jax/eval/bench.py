"""Benchmark files -> `BenchItem`s: R1-Onevision-Bench TSV, VLMEvalKit-style TSVs, JSONL, and our Records.

Column layouts understood (header names are case-insensitive; the first present name wins):

| field     | columns                                                                                     |
|-----------|---------------------------------------------------------------------------------------------|
| id        | index, id, pid, question_id                                                                 |
| question  | question, query, problem                                                                    |
| answer    | answer_option (MathVista multiple choice: the letter), else answer, gt_answer               |
| choices   | A, B, C, ... columns (MMBench/WeMath style); else choices / options / option: a JSON or Python |
|           | list literal (MathVista, MathVision) or "A. x\\nB. y" text (R1-Onevision-Bench); else, for a    |
|           | single-letter gold, "Choices: A: .. B: .." inside the question (MathVerse)                   |
| level     | level, grade, difficulty, problem_version, metadata['problem_version']                     |
| category  | category, subject, task, subfield, metadata['subfield']                                     |
| image     | image: base64, a list literal of base64 strings, or the index of an earlier row with the same |
|           | image (VLMEvalKit de-duplication); else image_path (relative to the TSV)                     |

Bad rows are counted per reason in an `ImportReport` (shared with `r1ov_jax.data.importers`) and skipped, whatever
the reason (non-UTF-8 bytes, decompression bombs over ``max_pixels``, pixels that do not decode, fields nested too
deeply, NaN/empty answers, ...); `report.summary()` is one line with the counts and the first bad row.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable

from r1ov_jax.data.importers import ImportReport, RowError, accounted, check_utf8, decode_image
from r1ov_jax.processing.prompts import FORMAT_SUFFIX, user_text
from r1ov_jax.rewards.answers import LETTERS, choices_from_question, clean_choices, parse_choices_field
from r1ov_jax.errors import InvalidInputError, MissingInputError

# The paper's table order (R1_ONEVISION.md); other values are appended in sorted order.
GRADES = ("Junior High School", "High School", "College", "Social Test")
CATEGORIES = ("Math", "Physics", "Chemistry", "Biology", "Deduction")

_ID_COLS = ("index", "id", "pid", "question_id")
_QUESTION_COLS = ("question", "query", "problem")
_ANSWER_COLS = ("answer", "gt_answer")
_CHOICE_COLS = ("choices", "options", "option")
_LEVEL_COLS = ("level", "grade", "difficulty", "problem_version")
_CATEGORY_COLS = ("category", "subject", "task", "subfield")
_NAN = {"", "nan", "none", "null"}
_MAX_QUESTION_CHARS = 200_000
_MAX_ANSWER_CHARS = 20_000


@dataclasses.dataclass
class BenchItem:
    """One benchmark question.

    `choices` are option texts in order A, B, ... (None for free-form); `answer` is the gold (a letter or option
    text for multiple choice); `image_bytes` the first encoded image, `extra_images` any further ones.
    """

    id: str
    question: str
    choices: list[str] | None
    answer: str
    level: str = ""
    category: str = ""
    image_bytes: bytes | None = None
    extra_images: list[bytes] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def images(self) -> list[bytes]:
        return ([self.image_bytes] if self.image_bytes is not None else []) + list(self.extra_images)

    def prompt_text(self, suffix: str | None = FORMAT_SUFFIX) -> str:
        """The user text of the prompt (``processing.prompts.user_text``): question, choices, suffix."""
        return user_text(self.question, self.choices, suffix)


def _pick(row: dict, names: Iterable[str]) -> str:
    for n in names:
        v = row.get(n)
        if v is not None and v.strip().lower() not in _NAN:
            return v.strip()
    return ""


def _literal(s: str, what: str):
    """A JSON or Python literal (never code), for list/dict fields."""
    if len(s) > 50_000_000:
        raise RowError(f"bad_{what}", f"{what} field is too long")
    try:
        return json.loads(s)
    except RecursionError:
        raise RowError("too_nested", f"{what} field is nested too deeply") from None
    except ValueError:
        pass
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
        raise RowError(f"bad_{what}", f"{what} is not a JSON/Python literal ({type(e).__name__})") from None


def _row_choices(row: dict, raw_header: list[str], question: str, answer: str) -> list[str] | None:
    letter_cols = []
    for letter in LETTERS:  # A, B, C, ... columns, consecutive from A, non-empty
        if letter in raw_header and row.get(letter, "").strip().lower() not in _NAN:
            letter_cols.append(row[letter].strip())
        else:
            break
    if letter_cols:
        return clean_choices(letter_cols)
    raw = _pick(row, _CHOICE_COLS)
    if raw:
        try:
            return parse_choices_field(raw)
        except ValueError as e:
            raise RowError("bad_choices", str(e)) from None
    if re.fullmatch(r"\(?[A-H]\)?", answer):
        return choices_from_question(question)
    return None


def _row_images(row: dict, idx: str, images_by_id: dict, base_dir: str, max_pixels=None) -> list[bytes]:
    img = row.get("image", "").strip()
    if img and img.lower() not in _NAN:
        if len(img) <= 64 and img != idx and not img.startswith(("[", "data:")):
            if img in images_by_id:  # VLMEvalKit: a short value is the index of a row holding the same image
                return images_by_id[img]
            if re.fullmatch(r"[\w.-]{1,64}", img) and len(img) < 32:
                raise RowError("bad_image_ref", f"image refers to index {img!r}, which is not an earlier row")
        if img.startswith("["):
            parts = _literal(img, "image")
            if not isinstance(parts, list) or not parts:
                raise RowError("bad_image", "image list literal is empty or not a list")
            if not all(isinstance(p, str) for p in parts):
                raise RowError("bad_image", "image list literal holds non-string values")
            return [decode_image(p, max_pixels=max_pixels) for p in parts]
        return [decode_image(img, max_pixels=max_pixels)]
    path = row.get("image_path", "").strip()
    if path and path.lower() not in _NAN:
        paths = _literal(path, "image") if path.startswith("[") else [path]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise RowError("bad_image", "image_path list literal holds non-string values")
        out = []
        for p in paths:
            full = p if os.path.isabs(p) else os.path.join(base_dir, p)
            try:
                with open(full, "rb") as f:
                    out.append(decode_image(f.read(), field="image_path", max_pixels=max_pixels))
            except OSError as e:
                raise RowError("missing_image_file", f"image_path {full!r}: {e.strerror}") from None
        return out
    raise RowError("missing_image", "no image / image_path value")


def _row_to_item(row, raw_header, images_by_id, base_dir, require_image, max_pixels=None) -> BenchItem:
    check_utf8(row.items())
    idx = _pick(row, _ID_COLS)
    if not idx:
        raise RowError("missing_id", f"no id column value ({'/'.join(_ID_COLS)})")
    question = _pick(row, _QUESTION_COLS)
    if not question:
        raise RowError("empty_question", "question is empty")
    answer = _pick(row, ("answer_option",)) or _pick(row, _ANSWER_COLS)
    if not answer:
        raw = next((row[c].strip() for c in ("answer_option", *_ANSWER_COLS) if row.get(c, "").strip()), "")
        if raw.lower() == "nan":
            raise RowError("nan_answer", f"answer is {raw!r} (a missing value)")
        raise RowError("empty_answer", "answer is empty")
    if len(answer) > _MAX_ANSWER_CHARS:
        raise RowError("too_long", f"answer has {len(answer)} characters (at most {_MAX_ANSWER_CHARS})")
    if len(question) > _MAX_QUESTION_CHARS:
        raise RowError("too_long", f"question has {len(question)} characters (at most {_MAX_QUESTION_CHARS})")
    choices = _row_choices(row, raw_header, question, answer)
    m = re.fullmatch(r"\(?([A-Z])\)?", answer)
    if choices and m and LETTERS.index(m.group(1)) >= len(choices):
        raise RowError("answer_not_in_choices", f"answer {answer!r} but only {len(choices)} choices")
    meta = {}
    if row.get("metadata", "").strip():
        md = _literal(row["metadata"].strip(), "metadata")
        try:
            json.dumps(md)
        except (TypeError, ValueError, RecursionError):
            md = {}  # unusable metadata costs the metadata, not the row
        meta = md if isinstance(md, dict) else {}
    level = _pick(row, _LEVEL_COLS) or str(meta.get("problem_version", "") or "")
    category = _pick(row, _CATEGORY_COLS) or str(meta.get("subfield", "") or "")
    try:
        images = _row_images(row, idx, images_by_id, base_dir, max_pixels)
    except RowError as e:
        if require_image or e.reason != "missing_image":
            raise
        images = []
    images_by_id[idx] = images
    for k in ("question_type", "answer_type", "precision", "unit", "answer_value"):
        if row.get(k, "").strip():
            meta[k] = row[k].strip()
    return BenchItem(
        idx, question, choices, answer, level, category, images[0] if images else None, images[1:], meta
    )


def load_bench_tsv(
    path: str, *, require_image: bool = True, max_pixels: int | None = None
) -> tuple[list[BenchItem], ImportReport]:
    """Read an R1-Onevision-Bench or VLMEvalKit-style TSV. Returns (items, report); bad rows are skipped.

    ``max_pixels``: decompression-bomb cap per image (default ``processing.image.MAX_INPUT_PIXELS``)."""
    report = ImportReport(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are long fields
    images_by_id: dict[str, list[bytes]] = {}
    base_dir = os.path.dirname(os.path.abspath(path))
    # surrogateescape: a non-UTF-8 byte costs its row (bad_encoding), not the file
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="\t")
        raw_header = next(reader, None)
        if not raw_header:
            raise InvalidInputError(
                f"{path}: empty file; expected a TSV header such as index, question, answer, image"
            )
        raw_header = [h.strip() for h in raw_header]
        header = [h if re.fullmatch(r"[A-Z]", h) else h.lower() for h in raw_header]
        if not any(c in header for c in _QUESTION_COLS) or not any(c in header for c in _ANSWER_COLS):
            raise InvalidInputError(
                f"{path}: header {raw_header} has no question/answer columns; is this a benchmark TSV?"
            )

        def to_item(cells):
            if len(cells) != len(header):
                raise RowError("bad_field_count", f"{len(cells)} fields, header has {len(header)}")
            row = dict(zip(header, cells))
            return _row_to_item(row, header, images_by_id, base_dir, require_image, max_pixels)

        rows = ((n, c) for n, c in enumerate(reader, start=2) if c and (len(c) > 1 or c[0].strip()))
        return _collect_items(report, rows, to_item), report


def load_bench_jsonl(
    path: str, *, require_image: bool = True, max_pixels: int | None = None
) -> tuple[list[BenchItem], ImportReport]:
    """JSON lines with the TSV field names (image as base64, or `images`: list of base64)."""
    report = ImportReport(path)
    images_by_id: dict[str, list[bytes]] = {}
    base_dir = os.path.dirname(os.path.abspath(path))

    def to_item(line):
        check_utf8([("line", line)])
        try:
            obj = json.loads(line)
        except RecursionError:
            raise RowError("too_nested", "the JSON object is nested too deeply") from None
        except ValueError as e:
            raise RowError("bad_json", str(e)) from None
        if not isinstance(obj, dict):
            raise RowError("bad_json", "line is not a JSON object")
        row = {}
        for k, v in obj.items():
            if k == "images" and isinstance(v, list):
                row["image"] = json.dumps(v)
            elif isinstance(v, (list, dict)):
                try:
                    row[k] = json.dumps(v)
                except RecursionError:
                    raise RowError("too_nested", f"field {k!r} is nested too deeply") from None
            else:
                row[k] = "" if v is None else str(v)
        return _row_to_item(row, list(row), images_by_id, base_dir, require_image, max_pixels)

    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        return _collect_items(report, rows, to_item), report


def _collect_items(report: ImportReport, rows, to_item) -> list[BenchItem]:
    """Items from ``(line number, raw row)`` pairs; rows that ``to_item`` rejects, or that repeat an id, are
    counted and skipped in ``report``."""
    seen = set()

    def unique(raw):
        item = to_item(raw)
        if item.id in seen:
            raise RowError("duplicate_id", f"id {item.id!r} appears twice")
        seen.add(item.id)
        return item

    return list(accounted(report, rows, unique))


def load_bench(
    path: str, *, require_image: bool = True, max_pixels: int | None = None
) -> tuple[list[BenchItem], ImportReport]:
    """Load a benchmark file by extension (.tsv, .jsonl/.json). Returns (items, ImportReport)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"benchmark file not found: {path}")
    low = path.lower()
    if low.endswith(".tsv"):
        return load_bench_tsv(path, require_image=require_image, max_pixels=max_pixels)
    if low.endswith((".jsonl", ".json")):
        return load_bench_jsonl(path, require_image=require_image, max_pixels=max_pixels)
    raise InvalidInputError(f"{path}: unknown benchmark format; expected .tsv (Bench/VLMEvalKit) or .jsonl")


def items_from_records(records) -> list[BenchItem]:
    """Our data Records (e.g. generated held-out sets) -> BenchItems; level/category from meta (type = generator)."""
    out = []
    for r in records:
        meta = dict(getattr(r, "meta", {}) or {})
        imgs = list(r.images)
        out.append(
            BenchItem(
                id=str(r.id),
                question=r.question,
                choices=list(r.choices) if r.choices else None,
                answer=str(r.answer),
                level=str(meta.get("level", meta.get("difficulty", ""))),
                category=str(meta.get("category", meta.get("type", ""))),
                image_bytes=imgs[0] if imgs else None,
                extra_images=imgs[1:],
                meta=meta,
            )
        )
    return out
