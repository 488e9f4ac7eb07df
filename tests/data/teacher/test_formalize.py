"""`r1ov formalize` against a fake OpenAI-compatible endpoint on 127.0.0.1 (tests/data/teacher/fake_endpoint.py)."""

from __future__ import annotations

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from r1ov_jax.cli import main
from r1ov_jax.data.record import read_records, shard_paths
from r1ov_jax.data.teacher.cache import ResponseCache, request_key
from r1ov_jax.data.teacher.client import RetryPolicy
from r1ov_jax.data.teacher.pipeline import FormalizeOptions, canonical_trace, formalize
from r1ov_jax.data.teacher.prompts import parse_type
from tests.data.teacher.fake_endpoint import FakeEndpoint, write_items

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _good(n, start=30):
    return [{"w": start + i, "h": 20 + (i % 5)} for i in range(n)]


def _run(fake, inp, out, **kw):
    kw.setdefault("concurrency", 4)
    return formalize(FormalizeOptions(input=inp, out=str(out), teacher=fake.url, progress=False, **kw))


def _shard_bytes(out):
    return [open(p, "rb").read() for p in shard_paths(str(out))]


def test_pipeline_keeps_verified_items_in_input_order_and_counts_bad_rows(tmp_path):
    items = _good(5) + [
        {"w": 41, "h": 22, "answer": "40"},  # wrong gold: the reasoner's 41 must not verify
        {"w": 42, "h": 23, "question": "How high is the image in pixels?", "answer": "23"},
        {"w": 43, "h": 24, "choices": ["12", "43", "50"], "answer": "B"},  # multiple choice, gold letter
        {"w": 44, "h": 25, "choices": ["44", "12"], "answer": "44"},  # gold as the option's text
        {"image": "missing.png", "question": "q?", "answer": "1"},
        {"raw": '{"image": "img000.png", "question": "", "answer": "3"}'},
        {"raw": '{"image": "img000.png", "question": "q?", "answer": " "}'},
        {"raw": "{not json"},
    ]
    inp = write_items(tmp_path / "in", items)
    with open(os.path.join(inp, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing decodable
    with open(os.path.join(inp, "items.jsonl"), "a") as f:
        f.write(json.dumps({"image": "broken.png", "question": "q?", "answer": "1"}) + "\n")
    with FakeEndpoint(delay_s=0.02) as fake:
        rep = _run(fake, inp, tmp_path / "out", concurrency=3)
    assert rep["rows"] == 14 and rep["read"] == 9
    assert rep["rows_skipped"] == {
        "missing_image": 1, "empty_question": 1, "empty_answer": 1, "bad_json": 1, "bad_image": 1,
    }  # fmt: skip
    rows = {e[0]: e[1] for e in rep["input"]["examples"]}
    assert rows == {
        10: "missing_image",
        11: "empty_question",
        12: "empty_answer",
        13: "bad_json",
        14: "bad_image",
    }
    assert (rep["detected"], rep["formalized"], rep["traced"], rep["kept"]) == (9, 9, 9, 8)
    assert rep["failed"] == {"wrong_answer": 1} and rep["failed_by_stage"]["verify"] == {"wrong_answer": 1}
    assert rep["failure_examples"][0]["where"] == "items.jsonl:6"
    assert rep["requests"] == {"answered": 27, "from_cache": 0, "shared": 0}
    assert rep["tokens"]["total_tokens"] == rep["tokens_this_run"]["total_tokens"] > 0
    assert 2 <= fake.max_in_flight <= 3
    recs = list(read_records(str(tmp_path / "out")))
    assert [r.meta["row"] for r in recs] == [1, 2, 3, 4, 5, 7, 8, 9]  # input order, whatever finished first
    by_row = {r.meta["row"]: r for r in recs}
    assert by_row[7].answer == "23" and by_row[7].trace.endswith("<answer>23</answer>")
    assert by_row[8].trace.endswith("<answer>B</answer>") and by_row[9].trace.endswith("<answer>A</answer>")
    r = recs[0]
    assert r.formal.startswith("Image size: 30 x 20 pixels.")  # the teacher saw the image bytes
    assert "description" not in r.trace and "The chart shows an image width of 30" in r.trace  # role-play
    assert r.meta["type"] == "chart" and r.meta["teacher"] == r.meta["reasoner"] == "fake-vlm"
    assert set(r.meta["usage"]) == {"detect", "formalize", "reason"}
    assert (
        sum(u["prompt_tokens"] + u["completion_tokens"] for x in recs for u in x.meta["usage"].values())
        < (rep["tokens"]["total_tokens"])
    )  # the wrong-answer item's tokens count in the report too


def test_endpoint_faults_are_counted_per_reason_and_the_run_finishes(tmp_path):
    """Garbage, empty text, 500 forever, hanging past the timeout, non-JSON 200s, answers without <answer>;
    a flaky endpoint (429, then 503, then success) is retried with backoff and the item kept."""
    tags = ["garbage", "empty", "500", "hang", "notjson", "noanswer", "flaky"]
    items = _good(3) + [
        {"w": 60 + i, "h": 20, "question": f"How wide is the image in pixels? #{t}"}
        for i, t in enumerate(tags)
    ]
    items += [{"w": 90, "h": 20}, {"w": 91, "h": 20}]  # teacher faults by image width
    inp = write_items(tmp_path / "in", items)
    with FakeEndpoint() as fake:
        fake.reasoner_faults = {t: t for t in tags}
        fake.teacher_faults = {90: "500", 91: "flaky"}
        fake.hang_s = 3.0
        t0 = time.perf_counter()
        rep = _run(fake, inp, tmp_path / "out", timeout=0.5, max_retries=2, retry_delay=0.01)
        seconds = time.perf_counter() - t0
    assert rep["failed"] == {
        "no_answer": 2, "empty_response": 1, "http_500": 2, "timeout": 1, "bad_response": 1,
    }, rep["failed"]  # fmt: skip
    assert rep["failed_by_stage"]["detect"] == {"http_500": 1}  # the width-90 item fails at its first request
    assert rep["failed_by_stage"]["reason"] == {
        "no_answer": 2, "empty_response": 1, "http_500": 1, "timeout": 1, "bad_response": 1,
    }  # fmt: skip
    assert rep["kept"] == 5 and rep["read"] == 12  # 3 good + reasoner-flaky + teacher-flaky
    # two 500-forever requests and the hanging one: 2 retries each; three flaky requests: 2 failures each
    assert rep["notes"]["retries"] == 2 * 2 + 2 + 3 * 2
    assert seconds < 2 * 3.0  # three 0.5 s attempts, not the 3 s hang
    recs = list(read_records(str(tmp_path / "out")))
    assert sorted(r.answer for r in recs) == ["30", "31", "32", "66", "91"]


def test_retry_delays_grow_with_jitter_and_respect_retry_after():
    rng = random.Random(0)
    p = RetryPolicy(base_delay=0.5, max_delay=4.0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0]):
        delays = [p.delay(attempt, None, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling and max(delays) > 0.8 * ceiling  # full jitter
    assert p.delay(0, "3", rng) == 3.0 and p.delay(0, "3600", rng) == 4.0  # honoured, capped
    assert 0 <= p.delay(0, "soon", rng) <= 0.5


def test_concurrency_bound_holds_across_teacher_and_reasoner(tmp_path):
    inp = write_items(tmp_path / "in", _good(12))
    with FakeEndpoint(delay_s=0.05) as fake:
        rep = _run(fake, inp, tmp_path / "out", concurrency=2)
    assert rep["kept"] == 12 and fake.max_in_flight == 2


def test_cache_key_and_atomic_entries(tmp_path):
    def body(img="data:image/png;base64,AAAA", model="m", t=0.0):
        part = {"type": "image_url", "image_url": {"url": img}}
        return {"model": model, "messages": [{"role": "user", "content": [part]}], "temperature": t}

    keys = {
        request_key(body()),
        request_key(body(img="data:image/png;base64,AAAB")),
        request_key(body(model="n")),
    }
    keys.add(request_key(body(t=0.5)))
    assert len(keys) == 4 and request_key(body()) == request_key(json.loads(json.dumps(body())))
    cache = ResponseCache(str(tmp_path / "c"))
    k = request_key(body())
    assert cache.get(k) is None
    cache.put(k, {"choices": [1]})
    os.makedirs(tmp_path / "c" / "zz", exist_ok=True)
    (tmp_path / "c" / "zz" / "half.tmp").write_text('{"cho')  # what a kill mid-write leaves
    again = ResponseCache(str(tmp_path / "c"))
    assert again.get(k) == {"choices": [1]} and len(again) == 1
    assert not glob.glob(str(tmp_path / "c" / "*" / "*.tmp"))


def test_trace_normalization_and_type_parsing():
    assert (
        canonical_trace({"content": "<think>a</think> <answer>5</answer> bye"})
        == "<think>\na\n</think>\n<answer>5</answer>"
    )
    assert canonical_trace({"content": "<answer>5</answer>", "reasoning_content": "r"}).startswith(
        "<think>\nr\n"
    )
    assert canonical_trace({"content": "steps</think>\n<answer>5</answer>"}).startswith("<think>\nsteps\n")
    for msg, reason in [({"content": ""}, "empty_response"), ({"content": "5"}, "no_answer"),
                        ({"content": "<answer>5</answer>"}, "no_reasoning")]:  # fmt: skip
        with pytest.raises(Exception) as e:
            canonical_trace(msg)
        assert e.value.reason == reason
    assert parse_type("Chart.") == "chart" and parse_type("a flowchart") == "diagram"
    assert parse_type("It is a photo") == "scene" and parse_type("???") is None


def test_cli_flags_and_input_errors(tmp_path, capsys):
    base = ["formalize", "--out", str(tmp_path / "o"), "--teacher", "http://127.0.0.1:9/v1", "--no-progress"]
    assert main([*base, "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path)]) == 2  # a folder without a JSONL
    assert "exactly one *.jsonl" in capsys.readouterr().err
    inp = write_items(tmp_path / "in", _good(1))
    assert main([*base, "--input", inp, "--image-type", "painting"]) == 2
    assert "--image-type 'painting'" in capsys.readouterr().err
    assert main([*base, "--input", inp, "--concurrency", "0"]) == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["1"], "picture": ["x"]}), tmp_path / "x.parquet")
    with FakeEndpoint() as fake:  # found by the reader, inside the running pipeline
        assert main([*base[:4], fake.url, "--no-progress", "--input", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) ['conversations', 'image']" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--input", inp, "--teacher", "127.0.0.1:8000"]) == 2
    assert "expected an http(s) URL" in capsys.readouterr().err
    with FakeEndpoint() as fake:  # --image-type skips detection: two requests per item
        base[4] = fake.url
        assert main([*base, "--input", inp, "--image-type", "table", "--model", "x"]) == 0
        assert len(fake.answered) == 2
    out = capsys.readouterr().out
    assert "kept 1" in out and "wrote 1 records" in out
    (rec,) = read_records(str(tmp_path / "o"))
    assert rec.meta["type"] == "table" and rec.meta["type_from"] == "given" and rec.meta["teacher"] == "x"


def _cli(inp, out, url, *extra):
    return [sys.executable, "-m", "r1ov_jax.cli", "formalize", "--input", inp, "--out", out, "--teacher", url,
            "--concurrency", "2", "--no-progress", *extra]  # fmt: skip


def test_sigkill_and_restart_repeats_no_request_and_writes_the_same_output(tmp_path):
    inp = write_items(tmp_path / "in", _good(10))
    env = {**os.environ, "PYTHONPATH": REPO}
    with FakeEndpoint(delay_s=0.01) as fake:
        ref = _run(fake, inp, tmp_path / "ref", concurrency=2)
        assert ref["kept"] == 10
        fake.reset_counts()
        fake.attempts.clear()
        fake.hold_after = 13  # answer 13 of the 30 requests, then hold the rest until the process is dead
        out = str(tmp_path / "out")
        proc = subprocess.Popen(_cli(inp, out, fake.url), env=env, cwd=REPO)
        cache = os.path.join(out, "cache")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            len(fake.answered) == 13 and len(glob.glob(f"{cache}/*/*.json")) == 13
        ):
            assert proc.poll() is None, "formalize ended before it was killed"
            time.sleep(0.02)
        assert len(glob.glob(f"{cache}/*/*.json")) == 13
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        fake.release()  # the held requests are dropped unanswered
        assert not shard_paths(out)  # a killed run leaves no final shards
        first = set(fake.answered)
        fake.hold_after = None
        fake.reset_counts()
        done = subprocess.run(
            _cli(inp, out, fake.url), env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert not first & set(fake.received)  # nothing answered before the kill was asked again
        assert len(fake.answered) == 30 - 13
        assert all(n == 1 for n in collections.Counter(first | set(fake.answered)).values())
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["requests"]["from_cache"] == 13 and rep["kept"] == 10
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "ref")  # same bytes as the uninterrupted run
    assert rep["tokens"] == ref["tokens"]


def test_records_feed_the_sft_pipeline(tmp_path):
    from r1ov_jax.data.pipeline import default_pipeline_config, sft_dataset
    from r1ov_jax.processing.positions import VisionGeometry
    from r1ov_jax.processing.tokenizer import make_test_tokenizer

    inp = write_items(tmp_path / "in", _good(4))
    with FakeEndpoint() as fake:
        assert _run(fake, inp, tmp_path / "out")["kept"] == 4
    tok = make_test_tokenizer(tmp_path / "tok")
    cfg = default_pipeline_config()
    cfg.seq_len, cfg.batch_size, cfg.max_patches, cfg.shuffle, cfg.pack = 256, 2, 64, False, False
    cfg.min_pixels, cfg.max_pixels, cfg.worker_count = 28 * 28 * 4, 28 * 28 * 16, 0
    batch = next(iter(sft_dataset(str(tmp_path / "out"), tok, cfg, geometry=VisionGeometry(window_size=56))))
    assert batch["input_ids"].shape == (2, 256) and batch["loss_mask"].any()
    ids = [int(t) for t, m in zip(batch["input_ids"][0], batch["loss_mask"][0]) if m]
    text = tok.decode(ids)
    assert "<answer>30</answer>" in text and "The chart shows" in text


def _png_b64(w, h):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (9, 99, 199)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_parquet_and_bench_tsv_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = lambda q, a: [
        {"from": "human", "value": f"<image>\n{q}"},
        {"from": "gpt", "value": f"<think>x</think>\n\n{a}"},
    ]  # noqa: E731
    table = pa.table({
        "id": ["p1", "p2", "p3"],
        "image": [_png_b64(33, 20), "not base64!", _png_b64(35, 20)],
        "conversations": [conv("How wide is the image in pixels?", "33"), conv("q", "1"), conv("How wide is it?", "35")],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "r1ov.parquet")
    tsv = ["index\tquestion\tchoices\tanswer\tlevel\tcategory\timage"]
    tsv += [f"0\tHow wide is the image in pixels?\t['12', '36']\tB\tCollege\tMath\t{_png_b64(36, 20)}"]
    tsv += ["1\tHow wide is the image in pixels?\t\t\tCollege\tMath\t" + _png_b64(37, 20)]  # no gold answer
    tsv += ["2\tHow wide is the image in pixels?\t\t37\tCollege\tMath\t0"]  # VLMEvalKit: row 0's image
    (tmp_path / "bench.tsv").write_text("\n".join(tsv) + "\n")
    with FakeEndpoint() as fake:
        par = _run(fake, str(tmp_path / "r1ov.parquet"), tmp_path / "po")
        ben = _run(fake, str(tmp_path / "bench.tsv"), tmp_path / "bo")
    assert (par["rows"], par["read"], par["kept"], par["rows_skipped"]) == (3, 2, 2, {"bad_base64": 1})
    assert [r.id for r in read_records(str(tmp_path / "po"))] == [
        "p1",
        "p3",
    ]  # the dataset's response is replaced
    assert all(r.trace.startswith("<think>\nThe chart shows") for r in read_records(str(tmp_path / "po")))
    assert (ben["rows"], ben["read"], ben["rows_skipped"]) == (3, 2, {"empty_answer": 1})
    assert ben["kept"] == 1 and ben["failed"] == {"wrong_answer": 1}  # row 2 shows row 0's 36 px image
    (rec,) = read_records(str(tmp_path / "bo"))
    assert rec.choices == ["12", "36"] and rec.meta["level"] == "College" and rec.meta["category"] == "Math"
