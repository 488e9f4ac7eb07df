"""Bench loading, resumable evaluation, score tables, paired comparison and the optional judge."""

import base64
import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from r1ov_jax.eval import (
    CATEGORIES,
    GRADES,
    OpenAIJudge,
    bootstrap_mean_ci,
    compare,
    evaluate,
    format_comparison,
    format_markdown,
    items_from_records,
    load_bench,
    load_results,
    mcnemar_exact,
    summarize,
    write_reports,
)


def png_b64(color=(255, 0, 0)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------------ fixture Bench TSV
#
# 4 grades x 5 categories x 2 items = 40 good rows. Item 0 of every cell is answered correctly; item 1's outcome
# depends on the cell (OUTCOME_1), which gives the hand-computed table below.

OUTCOME_1 = {
    "Math": lambda g: "wrong",
    "Physics": lambda g: "undecided",
    "Chemistry": lambda g: "right" if g in ("Junior High School", "High School") else "wrong",
    "Biology": lambda g: "right",
    "Deduction": lambda g: "undecided" if g == "Social Test" else "wrong",
}
CHOICES = ["3/11", "8/11", "6/11", "3/5"]


def fixture_rows():
    rows, plan, k = [], {}, 0
    for g in GRADES:
        for c in CATEGORIES:
            for j in range(2):
                k += 1
                idx = str(k)
                free_form = c == "Physics" and j == 0
                if free_form:
                    choices, answer = "", "12 cm"
                else:
                    choices = "A. 3/11\nB. 8/11\nC. 6/11\nD. 3/5"  # text with newlines: needs TSV quoting
                    answer = "B" if k % 3 else "8/11"  # gold as letter or as the option's text
                image = "1" if k == 7 else png_b64((k, 0, 0))  # row 7 reuses row 1's image (VLMEvalKit style)
                q = f'Question {k}: what fraction is shaded?\tSee the "figure".'
                rows.append([idx, q, choices, answer, g, c, image])
                plan[idx] = "right" if j == 0 else OUTCOME_1[c](g)
    return rows, plan


def write_fixture(path):
    rows, plan = fixture_rows()
    bad = [
        ["41", "short row", "", "B", "College", "Math"],  # 6 fields
        ["42", "bad base64", "", "3", "College", "Math", "!!!not-base64!!!"],
        ["43", "no answer", "", "", "College", "Math", png_b64()],
        ["5", "duplicate id", "", "3", "College", "Math", png_b64()],
        ["44", "not an image", "", "3", "College", "Math", base64.b64encode(b"GIF89a-garbage" * 20).decode()],
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "choices", "answer", "level", "category", "image"])
        w.writerows(rows[:20] + bad[:3] + rows[20:] + bad[3:])
    return plan


def fake_generate(plan, calls=None, fail_after_calls=None):
    """Deterministic 'model': realistic outputs in several styles, right/wrong/undecided per plan."""

    def gen(batch):
        if calls is not None:
            calls.append([it.id for it in batch])
            if fail_after_calls is not None and len(calls) > fail_after_calls:
                raise RuntimeError("simulated crash")
        outs = []
        for it in batch:
            kind, k = plan[it.id], int(it.id)
            if it.choices is None:  # free-form, gold 12 cm
                outs.append(
                    {
                        "right": "<think>scale 1:10</think><answer>0.12 m</answer>",
                        "wrong": "The final answer is 15 cm.",
                        "undecided": "It is hard to tell from the figure.",
                    }[kind]
                )
            elif kind == "right":
                outs.append(
                    [
                        "<think>8 of 11 shaded</think><answer>B</answer>",
                        "So the answer is 8/11.",
                        "Final answer: $\\boxed{B}$",
                    ][k % 3]
                )
            elif kind == "wrong":
                outs.append(["<answer>C</answer>", "The answer is A and B.", "**Answer:** D"][k % 3])
            else:
                outs.append("Option A: 3/11 is the unshaded part. Option B: 8/11 could be the shaded part.")
        return outs

    return gen


@pytest.fixture()
def bench(tmp_path):
    path = tmp_path / "bench.tsv"
    plan = write_fixture(path)
    items, report = load_bench(str(path))
    return SimpleNamespace(path=path, plan=plan, items=items, report=report)


def test_load_bench_counts_bad_rows(bench):
    assert len(bench.items) == 40
    assert bench.report.rows == 45 and bench.report.kept == 40
    assert dict(bench.report.skipped) == {
        "bad_field_count": 1,
        "bad_base64": 1,
        "empty_answer": 1,
        "duplicate_id": 1,
        "bad_image": 1,
    }
    it = bench.items[0]
    assert it.id == "1" and it.choices == CHOICES and it.answer == "B"
    assert bench.items[5].answer == "8/11"  # gold given as the option text (row 6)
    assert it.level == "Junior High School" and it.category == "Math"
    assert it.question.startswith("Question 1:") and "\t" in it.question  # quoted tab survived
    assert it.image_bytes.startswith(b"\x89PNG")
    assert bench.items[6].image_bytes == bench.items[0].image_bytes  # image given by reference to row 1
    ff = bench.items[2]  # row 3: the free-form Physics item
    assert ff.choices is None and ff.answer == "12 cm" and ff.category == "Physics"
    assert {(i.level, i.category) for i in bench.items} == {(g, c) for g in GRADES for c in CATEGORIES}
    prompt = it.prompt_text()
    assert "Choices:\nA. 3/11\nB. 8/11" in prompt and prompt.endswith("<answer> </answer> tags.")


def test_fixture_scores_as_expected(bench, tmp_path):
    records = evaluate(bench.items, fake_generate(bench.plan), tmp_path / "run", batch_size=8, progress=False)
    assert len(records) == 40
    s = write_reports(records, tmp_path / "run", n_boot=2000, seed=0)
    o = s["overall"]
    assert (o["n"], o["correct"], o["wrong"], o["undecided"]) == (40, 26, 9, 5)
    assert o["accuracy"] == pytest.approx(0.65)
    lo, hi = o["ci95"]
    assert 0.45 < lo < 0.65 < hi < 0.82
    by_cat = {c: (v["correct"], v["wrong"], v["undecided"]) for c, v in s["by_category"].items()}
    assert by_cat == {
        "Math": (4, 4, 0),
        "Physics": (4, 0, 4),
        "Chemistry": (6, 2, 0),
        "Biology": (8, 0, 0),
        "Deduction": (4, 3, 1),
    }
    by_lvl = {lv: (v["correct"], v["wrong"], v["undecided"]) for lv, v in s["by_level"].items()}
    assert by_lvl == {
        "Junior High School": (7, 2, 1),
        "High School": (7, 2, 1),
        "College": (6, 3, 1),
        "Social Test": (6, 2, 2),
    }
    assert s["levels"] == list(GRADES) and s["categories"] == list(CATEGORIES)
    cell = {(c["level"], c["category"]): c for c in s["cells"]}
    assert cell[("College", "Chemistry")]["accuracy"] == 0.5
    assert cell[("Social Test", "Deduction")]["undecided"] == 1
    # files
    md = (tmp_path / "run" / "scores.md").read_text()
    assert "| Grade \\ Category | Math | Physics | Chemistry | Biology | Deduction | All |" in md
    assert "**65.0%**" in md and "| Junior High School | 50.0 (2) | 50.0 (2) | 100.0 (2) | 100.0 (2) |" in md
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    total = next(r for r in rows if r["level"] == "All" and r["category"] == "All")
    assert (total["correct"], total["wrong"], total["undecided"]) == ("26", "9", "5")
    assert json.loads((tmp_path / "run" / "scores.json").read_text())["overall"]["correct"] == 26
    # per-item extraction is stored for display
    rec = {r["id"]: r for r in records}
    assert (
        rec["4"]["rule"] == "none" and rec["4"]["undecided"] and rec["4"]["extracted"] is None
    )  # Physics #2
    assert (rec["3"]["rule"], rec["3"]["extracted"], rec["3"]["correct"]) == ("answer_tag", "0.12 m", True)
    assert (rec["5"]["rule"], rec["5"]["extracted"], rec["5"]["correct"]) == ("boxed", "B", True)
    assert (rec["2"]["rule"], rec["2"]["extracted"], rec["2"]["correct"]) == ("phrase", "D", False)
    # the seeded bootstrap is reproducible
    assert summarize(records, n_boot=2000, seed=0)["overall"]["ci95"] == o["ci95"]


def test_killed_eval_resumes_without_rescoring(bench, tmp_path):
    out = tmp_path / "run"
    calls = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(
            bench.items,
            fake_generate(bench.plan, calls, fail_after_calls=2),
            out,
            batch_size=4,
            progress=False,
        )
    first = (out / "results.jsonl").read_text().splitlines()
    assert len(first) == 8  # two batches of 4 finished before the crash
    calls2 = []
    records = evaluate(bench.items, fake_generate(bench.plan, calls2), out, batch_size=4, progress=False)
    scored_again = {i for batch in calls2 for i in batch}
    assert scored_again.isdisjoint({json.loads(x)["id"] for x in first})
    assert len(scored_again) == 32
    lines = (out / "results.jsonl").read_text().splitlines()
    assert lines[:8] == first
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == len(set(ids)) == 40
    assert [r["id"] for r in records] == [it.id for it in bench.items]
    calls3 = []
    evaluate(bench.items, fake_generate(bench.plan, calls3), out, progress=False)
    assert calls3 == []  # nothing left to do


def test_torn_last_line_is_repaired(bench, tmp_path):
    out = tmp_path / "run"
    evaluate(bench.items[:5], fake_generate(bench.plan), out, progress=False)
    with open(out / "results.jsonl", "a") as f:
        f.write('{"id": "6", "output": "half-writ')  # killed in the middle of a write
    assert len(load_results(out)) == 5  # readers ignore the torn line
    records = evaluate(bench.items, fake_generate(bench.plan), out, limit=10, progress=False)
    assert [r["id"] for r in records] == [str(k) for k in range(1, 11)]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 10 and all(json.loads(x) for x in lines)


def test_resume_refuses_different_gold(bench, tmp_path):
    out = tmp_path / "run"
    evaluate(bench.items[:3], fake_generate(bench.plan), out, progress=False)
    bench.items[0].answer = "C"
    with pytest.raises(ValueError, match="different data file"):
        evaluate(bench.items[:3], fake_generate(bench.plan), out, progress=False)


def test_generate_fn_length_mismatch_is_an_error(bench, tmp_path):
    with pytest.raises(ValueError, match="generate_fn returned"):
        evaluate(bench.items[:4], lambda b: ["B"], tmp_path / "run", progress=False)


# ------------------------------------------------------------------------------------------------------ statistics


def test_mcnemar_exact_hand_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 2 * C(6,0) / 2^6
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 * (1 + 10) / 2^10
    assert mcnemar_exact(3, 12) == pytest.approx(2 * (1 + 15 + 105 + 455) / 2**15)
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)


def _recs(prefix, pattern):
    return [{"id": f"{prefix}{i}", "correct": bool(x)} for i, x in enumerate(pattern)]


def test_compare_paired(tmp_path):
    # 30 common items: 10 both right, 5 both wrong, 3 A-only right, 12 B-only right; plus unpaired items.
    a = [1] * 10 + [0] * 5 + [1] * 3 + [0] * 12
    b = [1] * 10 + [0] * 5 + [0] * 3 + [1] * 12
    ra = _recs("q", a) + _recs("only_a", [1, 1])
    rb = _recs("q", b) + _recs("only_b", [0])
    cmp = compare(ra, rb, n_boot=4000, seed=1)
    assert cmp["n_common"] == 30 and cmp["only_in_a"] == 2 and cmp["only_in_b"] == 1
    assert cmp["acc_a"] == pytest.approx(13 / 30) and cmp["acc_b"] == pytest.approx(22 / 30)
    assert cmp["diff"] == pytest.approx(0.3)
    assert (cmp["a_right_b_wrong"], cmp["a_wrong_b_right"], cmp["both_right"], cmp["both_wrong"]) == (
        3,
        12,
        10,
        5,
    )
    assert cmp["p_mcnemar"] == pytest.approx(1152 / 32768)
    lo, hi = cmp["ci"]
    assert 0.0 < lo < 0.3 < hi < 0.6  # se ~ 0.117 -> roughly 0.07..0.53
    assert sorted(cmp["flipped_ids"]["a_right_b_wrong"]) == ["q15", "q16", "q17"]
    text = format_comparison(cmp, "sft", "grpo")
    assert "+30.0 points" in text and "12 wrong->right, 3 right->wrong" in text
    # from files, as the CLI passes them
    for name, recs in (("a", ra), ("b", rb)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert compare(tmp_path / "a", str(tmp_path / "b" / "results.jsonl"), n_boot=4000, seed=1) == cmp


def test_bootstrap_matches_index_resampling():
    rng = np.random.default_rng(0)
    v = rng.integers(-1, 2, size=200).astype(float)
    idx = rng.integers(0, v.size, size=(20000, v.size))
    direct = v[idx].mean(axis=1)
    lo, hi = bootstrap_mean_ci(v, n_boot=20000, seed=3)
    d_lo, d_hi = np.quantile(direct, [0.025, 0.975])
    assert abs(lo - d_lo) < 0.01 and abs(hi - d_hi) < 0.01


# ------------------------------------------------------------------------------------------ VLMEvalKit-style layouts


def write_tsv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_vlmevalkit_layouts(tmp_path):
    img = png_b64()
    # MathVista: choices as a Python list literal, the letter in answer_option, grade/task for level/category.
    p = write_tsv(
        tmp_path / "mathvista.tsv",
        [
            "index",
            "image",
            "question",
            "answer",
            "question_type",
            "answer_type",
            "choices",
            "answer_option",
            "grade",
            "task",
            "precision",
        ],
        [
            [
                "1",
                img,
                "What fraction is blue?",
                "8/11",
                "multi_choice",
                "text",
                "['3/11', '8/11', '6/11', '3/5']",
                "B",
                "elementary school",
                "figure QA",
                "",
            ],
            ["2", img, "How many?", "4", "free_form", "integer", "", "", "high school", "math word", ""],
        ],
    )
    items, rep = load_bench(p)
    assert rep.kept == 2 and items[0].choices == CHOICES and items[0].answer == "B"
    assert (items[0].level, items[0].category) == ("elementary school", "figure QA")
    assert items[1].choices is None and items[1].meta["answer_type"] == "integer"
    # WeMath / MMBench: option columns A..D, answer letter.
    p = write_tsv(
        tmp_path / "wemath.tsv",
        ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "key"],
        [["7", img, "Which angle is acute?", "30°", "90°", "120°", "180°", "nan", "A", "2steps_1"]],
    )
    items, _ = load_bench(p)
    assert items[0].choices == ["30°", "90°", "120°", "180°"] and items[0].answer == "A"
    # MathVerse: options inside the question text, metadata dict for level/category.
    p = write_tsv(
        tmp_path / "mathverse.tsv",
        ["index", "image", "question", "answer", "metadata"],
        [
            [
                "3",
                img,
                "Find BC.\nChoices:\nA:2\nB:2√3\nC:√3\nD:2√2",
                "C",
                "{'subject': 'plane geometry', 'subfield': 'length', 'problem_version': 'Vision Only'}",
            ]
        ],
    )
    items, _ = load_bench(p)
    assert items[0].choices == ["2", "2√3", "√3", "2√2"]
    assert (items[0].level, items[0].category) == ("Vision Only", "length")
    from r1ov_jax.eval import score_answer

    assert score_answer("So BC = √3, the answer is C.", items[0].answer, items[0].choices).correct
    # MathVision: choices literal (may be empty), level as a number.
    p = write_tsv(
        tmp_path / "mathvision.tsv",
        ["index", "image", "question", "answer", "choices", "level", "category"],
        [
            ["9", img, "Which one?", "E", "['1', '2', '3', '4', '5']", "2", "metric geometry - angle"],
            ["10", img, "How many?", "6", "[]", "1", "counting"],
            ["11", img, "Broken", "B", "['1', '2'", "1", "counting"],
        ],
    )
    items, rep = load_bench(p)
    assert (
        [i.id for i in items] == ["9", "10"]
        and items[1].choices is None
        and dict(rep.skipped) == {"bad_choices": 1}
    )


def test_jsonl_and_records(tmp_path):
    p = tmp_path / "held_out.jsonl"
    p.write_text(
        json.dumps(
            {
                "id": "a1",
                "question": "How many cubes?",
                "answer": "3",
                "image": png_b64(),
                "level": "easy",
                "category": "scene",
            }
        )
        + "\n"
        + "{not json\n"
    )
    items, rep = load_bench(str(p))
    assert len(items) == 1 and items[0].answer == "3" and dict(rep.skipped) == {"bad_json": 1}
    rec = SimpleNamespace(
        id="g-1",
        images=[b"\x89PNG..."],
        question="Q?",
        answer="B",
        choices=["x", "y"],
        meta={"type": "chart"},
    )
    (it,) = items_from_records([rec])
    assert it.category == "chart" and it.choices == ["x", "y"] and it.image_bytes == b"\x89PNG..."
    with pytest.raises(ValueError, match="unknown benchmark format"):
        (tmp_path / "x.parquet").write_text("")
        load_bench(str(tmp_path / "x.parquet"))
    with pytest.raises(FileNotFoundError):
        load_bench(str(tmp_path / "missing.tsv"))


# ------------------------------------------------------------------------------------------------------------ judge


class _JudgeHandler(BaseHTTPRequestHandler):
    requests: ClassVar[list] = []
    reply = "B"
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            return
        data = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": type(self).reply}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    _JudgeHandler.requests, _JudgeHandler.reply, _JudgeHandler.status = [], "B", 200
    server = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_only_for_undecided(bench, tmp_path, judge_server):
    judge = OpenAIJudge(base_url=judge_server, model="judge-mini", api_key="k123", retries=0)
    items = bench.items[:10]  # JHS row: item ids 1..10; undecided: "4" (Physics item 1)
    records = evaluate(items, fake_generate(bench.plan), tmp_path / "run", judge=judge, progress=False)
    reqs = _JudgeHandler.requests
    assert len(reqs) == 1  # only the undecided item went to the judge
    assert reqs[0]["path"] == "/v1/chat/completions" and reqs[0]["auth"] == "Bearer k123"
    assert reqs[0]["body"]["model"] == "judge-mini" and reqs[0]["body"]["temperature"] == 0
    assert "Option A: 3/11" in reqs[0]["body"]["messages"][1]["content"]
    rec = {r["id"]: r for r in records}
    assert rec["4"]["rule"] == "judge" and rec["4"]["correct"] and not rec["4"]["undecided"]
    assert rec["4"]["judge_reply"] == "B"
    assert all(r["rule"] != "judge" for k, r in rec.items() if k != "4")


def test_judge_none_and_errors_leave_undecided(bench, tmp_path, judge_server):
    items = [bench.items[3]]  # undecided output
    _JudgeHandler.reply = "NONE"
    (r,) = evaluate(
        items,
        fake_generate(bench.plan),
        tmp_path / "a",
        progress=False,
        judge=OpenAIJudge(judge_server, "m", retries=0),
    )
    assert r["undecided"] and r["rule"] == "none" and r["judge_reply"] is None
    _JudgeHandler.status = 400
    (r,) = evaluate(
        items,
        fake_generate(bench.plan),
        tmp_path / "b",
        progress=False,
        judge=OpenAIJudge(judge_server, "m", retries=0),
    )
    assert r["undecided"] and "HTTP 400" in r["judge_error"]
    assert format_markdown(summarize([r], n_boot=100)).count("undecided") >= 1
