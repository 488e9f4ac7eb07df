"""Reasoning traces, role-play rewrite, quality filter, and the optional teacher endpoint."""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import threading

import pytest

from r1ov_jax.data.filter import check, filter_records
from r1ov_jax.data.formalize import GENERATORS, generate
from r1ov_jax.data.reasoning import Teacher, add_traces, make_trace
from r1ov_jax.data.rewrite import rewrite, rewrite_text
from r1ov_jax.rewards.format import format_reward

FORMAL_WORDS = re.compile(
    r"(?i)\bcsv\b|netlist|description|object list|plotting code|\bthe text\b|\bthe report\b"
)


@pytest.fixture(scope="module")
def traced():
    recs = [generate(kind, seed) for seed in range(43) for kind in sorted(GENERATORS)]  # 301 mixed items
    recs, counts = add_traces(recs)
    return [rewrite(r) for r in recs], counts


def test_traces_verify_against_gold(traced):
    recs, counts = traced
    assert counts["solver"] + counts["unsolved"] == len(recs) >= 300
    kept, stats = filter_records(recs)
    assert stats["seen"] == len(recs)
    assert stats["kept"] >= 0.99 * len(recs), stats
    assert sum(stats["rejected"].values()) == len(recs) - len(kept)


def test_traces_show_real_work(traced):
    recs, _ = traced
    for r in recs:
        assert format_reward(r.trace) == 1.0, r.trace
        think = r.trace.split("</think>")[0]
        assert len(think.strip().splitlines()) >= 3, r.trace  # data line(s), computation, conclusion
    # Intermediate values, not just the answer: e.g. circuit reductions and shoelace sums appear.
    joined = "\n".join(r.trace for r in recs)
    assert "∥" in joined and "Shoelace" in joined and "KCL at node" in joined and "Sum =" in joined


def _perturb(rec):
    """A wrong answer of the same kind as the gold."""
    if rec.choices:
        wrong = "B" if rec.answer != "B" else "C"
    elif re.fullmatch(r"-?\d+(\.\d+)?", rec.answer):
        wrong = str(round(float(rec.answer) + 1 + abs(float(rec.answer)) / 2, 2))
    elif rec.answer in ("Yes", "No"):
        wrong = "No" if rec.answer == "Yes" else "Yes"
    elif re.fullmatch(r"\d\d:\d\d", rec.answer):
        wrong = "23:59"
    else:
        wrong = "Z" if len(rec.answer) == 1 else rec.answer + "x"
    return dataclasses.replace(
        rec, trace=re.sub(r"<answer>.*</answer>", f"<answer>{wrong}</answer>", rec.trace)
    )


def test_filter_rejects_perturbed_answers_and_bad_format(traced):
    recs, _ = traced
    bad = [_perturb(r) for r in recs]
    kept, stats = filter_records(bad)
    assert kept == [] and stats["rejected"]["wrong_answer"] == len(recs)
    r0 = recs[0]
    assert check(dataclasses.replace(r0, trace=None)) == "no_trace"
    assert check(dataclasses.replace(r0, trace=r0.trace.replace("<think>", ""))) == "bad_format"
    assert check(dataclasses.replace(r0, trace=r0.trace + " trailing")) == "bad_format"
    assert check(r0) is None


def test_rewrite_removes_references_to_the_formal_text(traced):
    recs, _ = traced
    raw = [dataclasses.replace(r, trace=make_trace(r)) for r in recs]
    assert sum(bool(FORMAL_WORDS.search(r.trace)) for r in raw) > 100  # the solvers do cite the formal text
    for r, new in zip(raw, recs):
        assert not FORMAL_WORDS.search(new.trace), new.trace
        assert r.trace.split("</think>")[1] == new.trace.split("</think>")[1]  # answer untouched
        assert re.findall(r"\d+", r.trace) == re.findall(r"\d+", new.trace)  # numbers untouched
    s = rewrite_text(
        "According to the description, the netlist lists R1. From the CSV data we read 5.", "circuit"
    )
    assert (
        s
        == "Looking at the circuit diagram, the circuit diagram shows R1. From the circuit diagram we read 5."
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list = []
    fail = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        if _Handler.fail:
            self.send_response(500)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        n = len(
            re.findall(r"^\d+\. ", user, re.MULTILINE)
        )  # count objects in the formal description it was sent
        out = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": f"<answer>{n}</answer>",
                        "reasoning_content": f"The list has {n} objects.",
                    }
                }
            ]
        }
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_teacher_against_local_openai_compatible_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        teacher = Teacher(
            base_url=f"http://127.0.0.1:{server.server_port}/v1", model="tiny", api_key="k", timeout=5
        )
        rec = generate("scene", 1, level=0)
        rec = dataclasses.replace(
            rec, meta={k: v for k, v in rec.meta.items() if k != "query"}
        )  # like imported data
        out, counts = add_traces([rec], teacher=teacher)
        assert counts == {"solver": 0, "teacher": 1, "unsolved": 0}
        path, auth, body = _Handler.seen[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "tiny"
        assert (
            rec.formal in body["messages"][-1]["content"] and rec.question in body["messages"][-1]["content"]
        )
        n = len(re.findall(r"^\d+\. ", rec.formal, re.MULTILINE))
        assert out[0].trace == f"<think>\nThe list has {n} objects.\n</think>\n<answer>{n}</answer>"
        assert format_reward(out[0].trace) == 1.0
        _Handler.fail = True
        out, counts = add_traces([rec], teacher=teacher)
        assert counts["unsolved"] == 1 and out[0].trace is None
    finally:
        _Handler.fail = False
        server.shutdown()
        server.server_close()
