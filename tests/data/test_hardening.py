"""Hostile input: every import path (parquet, Bench TSV, JSONL, ArrayRecord, the Grain map) skips and counts a bad
row for any reason, names the file and the row, and keeps every good row."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1ov_jax.data import importers
from r1ov_jax.data.record import MAGIC, Record, read_records
from r1ov_jax.eval.bench import load_bench
from r1ov_jax.processing.image import ImageProcessor, ImageTooLargeError, check_image_bytes


def _png(w=8, h=6, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_header_only(w: int, h: int, idat: bytes | None = None) -> bytes:
    """A PNG whose chunks all have valid CRCs (it passes PIL's verify) announcing w x h pixels, with a tiny IDAT:
    small on disk, huge (or undecodable) once decoded."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


GOOD = _png()
BOMB = _png_header_only(30000, 30000)  # 900 MP: PIL's DecompressionBombError range
MP144 = _png_header_only(12000, 12000)  # 144 MP: only a DecompressionBombWarning in PIL
MP100 = _png_header_only(10000, 10000)  # 100 MP: just over the ~90 MP cap
BAD_PIXELS = _png_header_only(64, 64, idat=b"this is not zlib data at all")  # header valid, data not
B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
DEEP = "[" * 100_000 + "]" * 100_000


# ------------------------------------------------------------------------------------------- the image checks
@pytest.mark.parametrize(
    "data, error",
    [
        (GOOD, None),
        (BOMB, ImageTooLargeError),
        (MP144, ImageTooLargeError),
        (MP100, ImageTooLargeError),
        (BAD_PIXELS, ValueError),
        (_truncated_jpeg(), ValueError),
        (b"GIF89a" + b"\x00" * 20, ValueError),
        (b"not an image", ValueError),
    ],
    ids=[
        "good",
        "bomb-900MP",
        "144MP",
        "100MP",
        "png-bad-pixels",
        "jpeg-truncated",
        "gif-garbage",
        "garbage",
    ],
)
def test_image_checks(data, error):
    if error is None:
        assert check_image_bytes(data) == (8, 6)
        ImageProcessor()(data)
        return
    with pytest.raises(error):
        check_image_bytes(data)
    with pytest.raises(ValueError):
        ImageProcessor()(data)  # the model-side processor applies the same cap before decoding


def test_pixel_cap_is_configurable():
    with pytest.raises(ImageTooLargeError):
        check_image_bytes(GOOD, max_pixels=40)
    with pytest.raises(ImageTooLargeError):
        ImageProcessor(max_input_pixels=40)(GOOD)
    assert ImageProcessor(max_input_pixels=48)(GOOD)["image_grid_thw"].shape == (1, 3)
    with pytest.raises(importers.RowError) as e:
        importers.decode_image(GOOD, max_pixels=40)
    assert e.value.reason == "image_too_large"


# ------------------------------------------------------------------------------------------------ Bench TSV
HEADER = b"index\tquestion\tchoices\tanswer\tlevel\tcategory\timage\n"


def _tsv_row(idx, *, question=b"How many?", choices=b"", answer=b"3", image=None) -> bytes:
    image = B64(GOOD).encode() if image is None else image
    return b"\t".join([str(idx).encode(), question, choices, answer, b"College", b"Math", image]) + b"\n"


# (row bytes, expected skip reason); each case's neighbours (other encodings, other nested fields) are rows too
BAD_TSV_ROWS = [
    (dict(question=b"caf\xe9 au lait?"), "bad_encoding"),  # latin-1
    (dict(question=b"\x93quoted\x94"), "bad_encoding"),  # cp1252 smart quotes
    (dict(answer=b"\xc3\x28"), "bad_encoding"),  # invalid UTF-8 continuation
    (dict(question=b"\xef\xbf"), "bad_encoding"),  # truncated 3-byte sequence
    (dict(image=B64(BOMB).encode()), "image_too_large"),
    (dict(image=B64(MP144).encode()), "image_too_large"),
    (dict(image=B64(BAD_PIXELS).encode()), "bad_image"),
    (dict(image=B64(_truncated_jpeg()).encode()), "bad_image"),
    (dict(choices=DEEP.encode()), "bad_choices"),
    (dict(choices=b'[["A"], ["B"]]'), "bad_choices"),
    (dict(choices=b"{" * 50_000 + b"}" * 50_000), "bad_choices"),
    (dict(answer=b"nan"), "empty_answer"),  # the data layer's Bench importer: nan is a missing value
    (dict(answer=b"NaN"), "empty_answer"),
    (dict(answer=b""), "empty_answer"),
]


def _write_tsv(path, bad_rows, bad_reasons_by_loader=None):
    rows, good_ids = [HEADER], []
    k = 0
    for kw, _ in bad_rows:
        rows.append(_tsv_row(f"g{k}"))
        good_ids.append(f"g{k}")
        rows.append(_tsv_row(f"b{k}", **kw))
        k += 1
    path.write_bytes(b"".join(rows))
    return good_ids


def test_data_bench_tsv_skips_every_bad_row_and_keeps_every_good_one(tmp_path):
    path = tmp_path / "bench.tsv"
    good_ids = _write_tsv(path, BAD_TSV_ROWS)
    records, report = importers.load_bench_tsv(str(path))
    assert [r.meta["index"] for r in records] == good_ids
    expected = {}
    for _, reason in BAD_TSV_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    expected["nan_answer"] = expected.pop("empty_answer") - 1  # this loader names NaN answers apart
    expected["empty_answer"] = 1
    assert dict(report.skipped) == expected
    assert report.kept + sum(report.skipped.values()) == report.rows
    enc = [e for e in report.examples if e[1] == "bad_encoding"]
    assert (
        str(path) in enc[0][2] and "0xe9" in enc[0][2] and enc[0][0] == 3
    )  # file, byte and row (line) named
    assert "kept 14 of 28 rows" in report.summary() and "bad_encoding: 4" in report.summary()


def test_eval_bench_tsv_skips_every_bad_row_and_keeps_every_good_one(tmp_path):
    path = tmp_path / "bench.tsv"
    good_ids = _write_tsv(path, BAD_TSV_ROWS)
    items, report = load_bench(str(path))
    assert [it.id for it in items] == good_ids
    assert report.skipped["bad_encoding"] == 4 and report.skipped["image_too_large"] == 2
    assert report.skipped["bad_image"] == 2 and report.skipped["nan_answer"] == 2
    assert report.skipped["empty_answer"] == 1
    assert report.skipped["bad_choices"] + report.skipped["too_nested"] == 3
    assert report.kept == len(good_ids) and report.rows == 2 * len(good_ids)
    assert report.reasons == dict(report.skipped)  # what `r1ov eval` prints


# ------------------------------------------------------------------------------------------------------- JSONL
def test_bench_jsonl_bad_lines(tmp_path):
    good = {"index": 1, "question": "q?", "answer": "3", "image": B64(GOOD)}
    lines = [json.dumps(good).encode()]
    bad = [
        (json.dumps({**good, "index": 2, "question": "caf"}).encode()[:-2] + b'\xe9"}', "bad_encoding"),
        (
            b'{"index": 3, "question": "q", "answer": "1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            None,
        ),
        (json.dumps({**good, "index": 4, "answer": "nan"}).encode(), "nan_answer"),
        (json.dumps({**good, "index": 5, "image": B64(BOMB)}).encode(), "image_too_large"),
        (json.dumps({**good, "index": 6, "image": B64(BAD_PIXELS)}).encode(), "bad_image"),
        (json.dumps({**good, "index": 7, "image": "[" * 10_000 + "]" * 10_000}).encode(), None),
        (json.dumps({**good, "index": 8, "choices": DEEP}).encode(), None),
    ]
    for k, (line, _) in enumerate(bad):
        lines += [line, json.dumps({**good, "index": 100 + k}).encode()]
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items, report = load_bench(str(path))
    assert [it.id for it in items] == ["1"] + [str(100 + k) for k in range(len(bad))]
    assert report.rows == len(lines) and sum(report.skipped.values()) == len(bad)
    for _, reason in bad:
        if reason:
            assert report.skipped[reason] >= 1, (reason, report.skipped)
    assert set(report.skipped) <= {"bad_encoding", "too_nested", "nan_answer", "image_too_large", "bad_image",
                                   "bad_choices", "bad_json"}  # fmt: skip


# ----------------------------------------------------------------------------------------------------- parquet
def test_parquet_bad_rows(tmp_path):
    def conv(answer="3", question="<image>\nHow many?"):
        return [
            {"from": "human", "value": question},
            {"from": "gpt", "value": f"<think>t</think>\n\n{answer}"},
        ]

    rows = [
        ("g0", B64(GOOD), conv()),
        ("b0", B64(BOMB), conv()),  # decompression bomb
        ("g1", B64(GOOD), conv()),
        ("b1", B64(MP144), conv()),
        ("g2", B64(GOOD), conv()),
        ("b2", B64(BAD_PIXELS), conv()),  # header valid, pixels not
        ("g3", B64(GOOD), conv()),
        ("b3", B64(GOOD), conv(answer="nan")),
        ("g4", B64(GOOD), conv()),
        ("b4", B64(GOOD), conv(answer="<answer>NaN</answer>")),
        ("g5", B64(GOOD), conv()),
        ("b5", B64(_truncated_jpeg()), conv()),
        ("b6", B64(GOOD), conv(answer="<answer>" * 20_000 + "7</answer>")),  # degenerate, 160 KB
        ("g6", B64(GOOD), conv(answer="<answer>7</answer>")),
    ]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "image": [r[1] for r in rows],
            "conversations": [r[2] for r in rows],
        }
    )
    path = tmp_path / "r1ov.parquet"
    pq.write_table(table, path)
    records, report = importers.load_r1onevision_parquet(str(path))
    assert [r.id for r in records] == [f"g{k}" for k in range(7)]
    assert records[-1].answer == "7"
    assert dict(report.skipped) == {"image_too_large": 2, "bad_image": 2, "nan_answer": 2, "too_long": 1}
    assert all(str(e[0]) and e[2] for e in report.examples)


def test_parquet_bad_utf8_row_costs_only_that_row(tmp_path):
    conv = [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "<think>t</think>\n\n3"}]
    ids = pa.array([b"g0", b"\xff\xfe", b"g1"], pa.binary()).cast(pa.string(), safe=False)
    table = pa.table({"id": ids, "image": [B64(GOOD)] * 3, "conversations": [conv] * 3})
    path = tmp_path / "bad_utf8.parquet"
    pq.write_table(table, path)
    records, report = importers.load_r1onevision_parquet(str(path))
    assert [r.id for r in records] == ["g0", "g1"]
    assert report.rows == 3 and sum(report.skipped.values()) == 1
    assert set(report.skipped) <= {"bad_encoding", "error_UnicodeDecodeError", "error_ArrowInvalid"}


# ------------------------------------------------------------------------------------------------- ArrayRecord
def _raw_record(head: bytes, images=()) -> bytes:
    parts = [MAGIC, struct.pack("<I", len(head)), head]
    for img in images:
        parts += [struct.pack("<I", len(img)), img]
    return b"".join(parts)


def _good_record(k):
    return Record(
        id=f"g{k}", images=[GOOD], formal="", question="q?", answer=str(k), trace="<think>t</think>"
    )


BAD_RECORDS = [
    (b"garbage", "bad_record"),
    (_good_record(99).to_bytes()[:-5], "bad_record"),  # truncated
    (_raw_record(b"[" * 100_000 + b"]" * 100_000), "bad_record"),  # nested JSON head
    (
        _raw_record(
            json.dumps(
                {
                    "id": "n",
                    "formal": "",
                    "question": "q",
                    "answer": "nan",
                    "num_images": 0,
                    "choices": None,
                    "trace": None,
                    "meta": {},
                }
            ).encode()
        ),
        "nan_answer",
    ),  # fmt: skip
    (
        _raw_record(
            json.dumps(
                {
                    "id": "c",
                    "formal": "",
                    "question": "q",
                    "answer": "1",
                    "num_images": 0,
                    "choices": [["x"], ["y"]],
                    "trace": None,
                    "meta": {},
                }
            ).encode()
        ),
        "bad_record",
    ),  # fmt: skip
    (_raw_record(b'{"id": "u", "question": "\xff"}'), "bad_record"),  # not UTF-8
]


@pytest.fixture()
def damaged_shard(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "synth.array_record-00000-of-00001")
    w = ArrayRecordWriter(path, "group_size:1")
    for k, (data, _) in enumerate(BAD_RECORDS):
        w.write(_good_record(k).to_bytes())
        w.write(data)
    w.write(_good_record(len(BAD_RECORDS)).to_bytes())
    w.close()
    return path


def test_read_records_skips_damaged_records(damaged_shard):
    report = importers.ImportReport(damaged_shard)
    got = list(read_records([damaged_shard], report))
    assert [r.id for r in got] == [f"g{k}" for k in range(len(BAD_RECORDS) + 1)]
    expected = {}
    for _, reason in BAD_RECORDS:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.skipped) == expected
    assert report.examples[0][0] == 1 and "synth.array_record-00000-of-00001:1" in report.examples[0][2]
    assert len(list(read_records(damaged_shard))) == len(BAD_RECORDS) + 1  # without a report too


def test_grain_example_map_skips_damaged_records(tmp_path):
    from r1ov_jax.data.pipeline import _Example, default_pipeline_config
    from r1ov_jax.processing.positions import VisionGeometry
    from r1ov_jax.processing.tokenizer import make_test_tokenizer

    tok = make_test_tokenizer(tmp_path / "tok")
    cfg = default_pipeline_config()
    cfg.update(min_pixels=28 * 28, max_pixels=56 * 56)
    ex = _Example(tok, cfg, "sft", VisionGeometry(window_size=56))
    for data, reason in BAD_RECORDS:
        out = ex(0, data)
        assert out.get("skip") == reason, out
    for img in (BOMB, MP144, BAD_PIXELS):
        bad = Record(id="i", images=[img], formal="", question="q?", answer="1", trace="<think>t</think>")
        assert ex(0, bad.to_bytes()).get("skip") == "bad_image"
    assert "skip" not in ex(0, _good_record(0).to_bytes())


# ------------------------------------------------------------------------------------------------- NaN answers
@pytest.mark.parametrize("answer", ["nan", "NaN", " -nan ", "$nan$"])
def test_nan_gold_is_rejected_by_records(answer):
    with pytest.raises(ValueError, match="NaN"):
        Record(id="x", images=[], formal="", question="q", answer=answer).validate()
