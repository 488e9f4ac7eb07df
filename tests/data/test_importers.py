"""Importers: fixture files in the public formats, with malformed rows counted per reason and skipped."""

from __future__ import annotations

import base64
import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1ov_jax.data.importers import load_bench_tsv, load_r1onevision_parquet


def _img(fmt: str, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPG, PNG2 = _img("PNG", (200, 10, 10)), _img("JPEG", (10, 200, 10)), _img("PNG", (10, 10, 200))
B64 = lambda b: base64.b64encode(b).decode()


def _conv(*turns):
    return [{"from": r, "value": v} for r, v in turns]


GOOD_PARQUET = [
    (
        "a1",
        B64(PNG),
        _conv(("human", "<image>\nHow many cubes?"), ("gpt", "<think>I count 3.</think>\n\n3")),
        "How many cubes?",
        "3",
    ),
    (
        "a2",
        B64(JPG),
        _conv(("user", "What color? <image>"), ("assistant", "<think>green</think><answer>green</answer>")),
        "What color?",
        "green",
    ),
    (
        "a3",
        "data:image/png;base64," + "\n".join(B64(PNG2)[i : i + 76] for i in range(0, len(B64(PNG2)), 76)),
        _conv(
            ("system", "Be brief."),
            ("Human", "<image>\nSolve x+2=7."),
            ("GPT", "<think>x = 5</think>\n\nThe answer is \\boxed{5}."),
        ),
        "Solve x+2=7.",
        "5",
    ),
]
BAD_PARQUET = [
    ("b1", "not base64!!", _conv(("human", "<image>\nq"), ("gpt", "<think>t</think>\n\n1")), "bad_base64"),
    (
        "b2",
        B64(PNG),
        _conv(("human", "no marker here"), ("gpt", "<think>t</think>\n\n1")),
        "missing_image_marker",
    ),
    ("b3", B64(PNG), _conv(("human", "<image>\nq"), ("bot", "<think>t</think>\n\n1")), "unknown_role"),
    (
        "b4",
        B64(PNG),
        _conv(("human", "<image>\nq"), ("gpt", "<think>only thinking</think>\n\n")),
        "empty_answer",
    ),
    (
        "b5",
        B64(b"plain text, not an image"),
        _conv(("human", "<image>\nq"), ("gpt", "<think>t</think>\n\n1")),
        "bad_image",
    ),
    ("b6", B64(PNG), [], "bad_conversations"),
    ("b7", B64(PNG), _conv(("human", "<image>\nq")), "empty_answer"),
]


def test_parquet_import_counts_bad_rows_and_keeps_the_rest(tmp_path):
    rows = [r[:3] for r in GOOD_PARQUET[:2]] + [r[:3] for r in BAD_PARQUET] + [GOOD_PARQUET[2][:3]]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "image": [r[1] for r in rows],
            "conversations": [r[2] for r in rows],
        }
    )
    path = str(tmp_path / "r1ov.parquet")
    pq.write_table(table, path, row_group_size=4)  # several row groups: streaming must not lose rows
    recs, report = load_r1onevision_parquet(path)
    assert report.rows == len(rows) and report.kept == 3
    expected = {}
    for *_, reason in BAD_PARQUET:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.skipped) == expected
    assert sum(report.skipped.values()) + report.kept == report.rows
    assert [e[1] for e in report.examples] == [r[3] for r in BAD_PARQUET]
    by_id = {r.id: r for r in recs}
    assert set(by_id) == {"a1", "a2", "a3"}
    for rid, _, conv, question, answer in GOOD_PARQUET:
        rec = by_id[rid]
        assert rec.question == question and rec.answer == answer
        assert rec.trace == [t["value"] for t in conv if t["from"].lower() in ("gpt", "assistant")][0].strip()
    assert by_id["a1"].images == [PNG] and by_id["a2"].images == [JPG] and by_id["a3"].images == [PNG2]


def test_parquet_missing_columns_is_a_file_error(tmp_path):
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"id": ["1"], "picture": ["x"]}), path)
    with pytest.raises(ValueError, match="lacks column"):
        load_r1onevision_parquet(path)


HEADER = ["index", "question", "choices", "answer", "level", "category", "image"]


def _write_tsv(path, rows, raw_lines=()):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(HEADER)
        for r in rows:
            w.writerow(r)
        f.writelines(line + "\n" for line in raw_lines)


def test_bench_tsv_import(tmp_path):
    good = [
        [
            "1",
            "How many resistors are in series?",
            "['A. 3', 'B. 4', 'C. 5', 'D. 6']",
            "B",
            "High School",
            "Physics",
            B64(PNG),
        ],
        ["2", "Compute the area.\nGive an integer.", "", "12", "Junior High School", "Math", B64(JPG)],
        [
            "3",
            "Which gas is released?",
            "A. O2\nB. CO2",
            "B",
            "College",
            "Chemistry",
            "1",
        ],  # image shared with index 1
    ]
    bad = [
        ["4", "q", "", "7", "College", "Math", "%%%notbase64"],
        ["5", "q", "['A. 1', 'B. 2']", "  ", "College", "Math", B64(PNG)],
        ["6", "q", "", "1", "College", "Math", "99"],
        ["7", "q", "[unclosed", "A", "College", "Math", B64(PNG)],
    ]
    path = str(tmp_path / "bench.tsv")
    _write_tsv(path, good + bad, raw_lines=["8\tq\t\t3\tCollege\tMath"])  # one field short
    recs, report = load_bench_tsv(path)
    assert report.rows == 8 and report.kept == 3
    assert dict(report.skipped) == {
        "bad_base64": 1,
        "empty_answer": 1,
        "bad_image_ref": 1,
        "bad_choices": 1,
        "bad_field_count": 1,
    }
    r1, r2, r3 = recs
    assert r1.choices == ["3", "4", "5", "6"] and r1.answer == "B" and r1.images == [PNG]
    assert r1.meta["level"] == "High School" and r1.meta["category"] == "Physics"
    assert r2.question == "Compute the area.\nGive an integer." and r2.choices is None and r2.images == [JPG]
    assert r3.choices == ["O2", "CO2"] and r3.images == [PNG]


def test_bench_tsv_missing_column_is_a_file_error(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("index\tquestion\tanswer\n1\tq\t3\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_bench_tsv(str(path))
