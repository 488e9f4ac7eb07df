"""The one example record that flows through data: generators and importers make it, the pipeline consumes it.

    {id, images: [encoded image bytes], formal, question, answer, choices, trace, meta}

* ``images``: PNG (generators) or PNG/JPEG/GIF/WebP bytes as found in imported files; never decoded arrays.
* ``formal``: the cross-modal formal description (CSV + plotting code, SPICE netlist, object list, ...); "" when
  unknown (imported data).
* ``answer``: short, checkable gold answer (integer, short decimal, or a letter when ``choices`` is given).
* ``choices``: option texts for multiple choice (letters A, B, ... are implied by position), else None.
* ``trace``: the assistant target ``<think>…</think>\n<answer>…</answer>`` (or an imported response), else None.
* ``meta``: JSON-serializable; generators set ``type, level, category, seed`` and ``query`` (the question as a small
  program, like the functional programs CLEVR ships with its questions, executed by ``reasoning.py`` against the
  parsed formal text).

Serialization for ArrayRecord shards (``to_bytes``) is ``MAGIC | u32 json_len | json | (u32 len | bytes)*``: the images
stay raw bytes (no base64 inflation) and everything else is one JSON object.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from r1ov_jax.errors import InvalidInputError, MissingInputError
from r1ov_jax.processing.prompts import question_text

MAGIC = b"R1OV\x01"
SHARD_PREFIX = "synth.array_record"
# ArrayRecord option for random access: one record per chunk group (what grain's docs recommend for reading).
WRITER_OPTIONS = "group_size:1"
_U32 = struct.Struct("<I")

# Bench grades (R1-Onevision-Bench `level` column) and categories (`category` column).
LEVELS = ("Junior High School", "High School", "College", "Social Test")
CATEGORIES = ("Math", "Physics", "Chemistry", "Biology", "Deduction")

_IMAGE_MAGICS = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),
}


class RecordError(InvalidInputError):
    """A record (or serialized record) is malformed; the message names the record id and the field."""


_NAN_TEXTS = {"nan", "+nan", "-nan", "nan%"}


def is_nan_text(s) -> bool:
    """True for a gold answer that is a NaN written out ("nan", "NaN", "-nan"): a missing value, never an answer."""
    return isinstance(s, str) and s.strip().strip("$").strip().lower() in _NAN_TEXTS


def image_format(data: bytes) -> str | None:
    """The container format of encoded image bytes ("png", "jpeg", ...), or None if not a known image."""
    for name, magics in _IMAGE_MAGICS.items():
        if any(data.startswith(m) for m in magics):
            if name == "webp" and data[8:12] != b"WEBP":
                continue
            return name
    return None


def letter(i: int) -> str:
    """Option letter for a 0-based choice index."""
    return chr(ord("A") + i)


@dataclasses.dataclass
class Record:
    id: str
    images: list[bytes]
    formal: str
    question: str
    answer: str
    choices: list[str] | None = None
    trace: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ----------------------------------------------------------------------------------------------------- checks
    def validate(self) -> Record:
        """Raise RecordError naming the id and field on the first problem; return self when valid."""
        where = f"record {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise RecordError(f"{where}: field 'id' must be a non-empty str, got {self.id!r}")
        if not isinstance(self.images, list):
            raise RecordError(
                f"{where}: field 'images' must be a list of bytes, got {type(self.images).__name__}"
            )
        for i, img in enumerate(self.images):
            if not isinstance(img, (bytes, bytearray)):
                raise RecordError(f"{where}: images[{i}] must be bytes, got {type(img).__name__}")
            if image_format(bytes(img)) is None:
                raise RecordError(
                    f"{where}: images[{i}] is not PNG/JPEG/GIF/WebP data (starts {bytes(img[:8])!r})"
                )
        for name in ("formal", "question", "answer"):
            if not isinstance(getattr(self, name), str):
                raise RecordError(
                    f"{where}: field {name!r} must be a str, got {type(getattr(self, name)).__name__}"
                )
        if not self.question.strip():
            raise RecordError(f"{where}: field 'question' is empty")
        if not self.answer.strip():
            raise RecordError(f"{where}: field 'answer' is empty")
        if is_nan_text(self.answer):
            raise RecordError(f"{where}: field 'answer' is NaN ({self.answer!r}), a missing value")
        if self.choices is not None:
            if not isinstance(self.choices, list) or not all(isinstance(c, str) for c in self.choices):
                raise RecordError(
                    f"{where}: field 'choices' must be a list of str or None, got {self.choices!r}"
                )
            if not 2 <= len(self.choices) <= 26:
                raise RecordError(f"{where}: field 'choices' needs 2..26 options, got {len(self.choices)}")
        if self.trace is not None and not isinstance(self.trace, str):
            raise RecordError(
                f"{where}: field 'trace' must be a str or None, got {type(self.trace).__name__}"
            )
        if not isinstance(self.meta, dict):
            raise RecordError(f"{where}: field 'meta' must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise RecordError(f"{where}: field 'meta' is not JSON-serializable: {e}") from None
        return self

    # ------------------------------------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (images as bytes); ``from_dict(r.to_dict()) == r``."""
        return {
            "id": self.id,
            "images": [bytes(b) for b in self.images],
            "formal": self.formal,
            "question": self.question,
            "answer": self.answer,
            "choices": list(self.choices) if self.choices is not None else None,
            "trace": self.trace,
            "meta": json.loads(json.dumps(self.meta)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Build and validate; missing optional fields default, unknown fields are an error."""
        if not isinstance(d, dict):
            raise RecordError(f"record must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        rid = d.get("id", "<no id>")
        if unknown:
            raise RecordError(f"record {rid!r}: unknown field(s) {unknown}; expected {sorted(names)}")
        missing = [n for n in ("id", "images", "formal", "question", "answer") if n not in d]
        if missing:
            raise RecordError(f"record {rid!r}: missing field(s) {missing}")
        rec = cls(
            id=d["id"],
            images=list(d["images"]) if isinstance(d["images"], (list, tuple)) else d["images"],
            formal=d["formal"],
            question=d["question"],
            answer=d["answer"],
            choices=list(d["choices"]) if isinstance(d.get("choices"), (list, tuple)) else d.get("choices"),
            trace=d.get("trace"),
            meta=dict(d["meta"]) if isinstance(d.get("meta"), dict) else d.get("meta", {}),
        )
        return rec.validate()

    def to_bytes(self) -> bytes:
        """Serialize for an ArrayRecord shard (validates first)."""
        self.validate()
        head = self.to_dict()
        images = head.pop("images")
        head["num_images"] = len(images)
        js = json.dumps(head, ensure_ascii=False, sort_keys=True).encode("utf-8")
        parts = [MAGIC, _U32.pack(len(js)), js]
        for img in images:
            parts += [_U32.pack(len(img)), img]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        """Inverse of ``to_bytes``; raises RecordError on truncated or foreign data."""
        data = bytes(data)
        if not data.startswith(MAGIC):
            raise RecordError(f"serialized record: bad magic {data[:5]!r}, expected {MAGIC!r}")
        pos = len(MAGIC)
        try:
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            head = json.loads(data[pos : pos + n].decode("utf-8"))
            pos += n
            images = []
            for _ in range(head.pop("num_images")):
                (m,) = _U32.unpack_from(data, pos)
                pos += 4
                if pos + m > len(data):
                    raise RecordError("serialized record: image data truncated")
                images.append(data[pos : pos + m])
                pos += m
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise RecordError(f"serialized record: corrupt or truncated ({e})") from None
        except RecursionError:
            raise RecordError("serialized record: a field is nested too deeply to read") from None
        if not isinstance(head, dict):
            raise RecordError("serialized record: header is not a JSON object")
        if pos != len(data):
            raise RecordError(f"serialized record: {len(data) - pos} trailing bytes")
        head["images"] = images
        return cls.from_dict(head)

    # ------------------------------------------------------------------------------------------------------ views
    def prompt_text(self) -> str:
        """The question as shown to a model (``processing.prompts.question_text``)."""
        return question_text(self.question, self.choices)


# ----------------------------------------------------------------------------------------------- shard I/O
def shard_paths(out_dir: str, prefix: str = SHARD_PREFIX) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, f"{prefix}-*-of-*")))


def read_records(paths: str | Sequence[str], report=None) -> Iterator[Record]:
    """All good records of ArrayRecord shards (a directory written by `synthesize`, or explicit paths), in order.

    A record that does not deserialize or validate (truncated, foreign, nested too deeply, NaN answer, ...) is
    skipped and counted in ``report`` (an ``importers.ImportReport``; one per call is made when None and its
    summary logged), named ``shard:row``; a shard that cannot be opened is counted as ``unreadable_shard``."""
    import logging

    from array_record.python.array_record_module import ArrayRecordReader

    from r1ov_jax.data.importers import ImportReport, RowError, row_error

    own = report is None
    if isinstance(paths, str):
        paths = shard_paths(paths) if os.path.isdir(paths) else [paths]
    if own:
        report = ImportReport(paths[0] if len(paths) == 1 else f"{len(paths)} shards")
    for p in paths:
        if not os.path.isfile(p):
            raise MissingInputError(f"{p}: no such ArrayRecord shard")
        try:
            reader = ArrayRecordReader(p)
            count = reader.num_records()
        except Exception as e:  # noqa: BLE001 - a damaged shard costs that shard, loudly
            report.rows += 1
            report.skip(0, RowError("unreadable_shard", f"{p}: cannot open ({type(e).__name__}: {e})"))
            continue
        try:
            for k in range(count):
                report.rows += 1
                try:
                    rec = Record.from_bytes(reader.read([k])[0])
                except Exception as e:  # noqa: BLE001 - RecordError, or anything a damaged record raises
                    err = row_error(e)
                    reason = "bad_record" if isinstance(e, RecordError) else err.reason
                    if isinstance(e, RecordError) and "NaN" in str(e):
                        reason = "nan_answer"
                    report.skip(k, RowError(reason, f"{os.path.basename(p)}:{k}: {e}"))
                    continue
                report.kept += 1
                yield rec
        finally:
            reader.close()
    if own and report.skipped:
        logging.getLogger(__name__).warning("%s", report.summary())
