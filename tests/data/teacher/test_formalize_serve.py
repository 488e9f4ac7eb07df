"""`r1ov formalize` end to end against `r1ov serve` (teacher and reasoner), real processes on 127.0.0.1.

A random model never writes <answer> tags, so the fast test checks that the pipeline talks to the server and
counts ``no_answer``, and that the server's own metrics match the report and see no request of a rerun. The slow
test (R1OV_SLOW=1, a few minutes on 2 cores) first trains a tiny model with `r1ov sft` until it answers image
prompts and text-only prompts in the required format with 56, serves it, and checks kept records (gold 56), a
wrong gold counted, SIGKILL + restart against the server's request counts, and `r1ov sft` on the result.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from r1ov_jax.cli import main
from r1ov_jax.data.record import shard_paths
from r1ov_jax.data.teacher.pipeline import FormalizeOptions, formalize
from tests.data.teacher.fake_endpoint import write_items

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ENV = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model: str, log_path: str, max_new_tokens: int = 64):
    """`r1ov serve` in a subprocess; yields its base URL once /health answers; SIGTERM at the end."""
    port = _free_port()
    cmd = [sys.executable, "-m", "r1ov_jax.cli", "serve", "--model", model, "--port", str(port),
           "--max-batch", "4", "--max-new-tokens", str(max_new_tokens)]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, open(log_path).read()[-3000:]
            assert time.monotonic() < deadline, "r1ov serve did not come up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _metrics(url: str) -> dict:
    return httpx.get(url + "/metrics", timeout=10).json()


def _answered(url: str) -> int:
    return _metrics(url)["requests"].get("200", 0)


def _shard_bytes(out):
    return [open(p, "rb").read() for p in shard_paths(str(out))]


def _opts(inp, out, url, **kw):
    return FormalizeOptions(input=inp, out=str(out), teacher=url, progress=False, **kw)


def test_formalize_talks_to_r1ov_serve_and_counts_no_answer(tmp_path):
    from r1ov_jax.testing.demo_model import write_demo_hf_dir

    hf_dir = write_demo_hf_dir(str(tmp_path / "m"))
    inp = write_items(tmp_path / "in", [{"w": 40 + 9 * i, "h": 30 + 4 * i} for i in range(3)])
    with served(hf_dir, str(tmp_path / "serve.log"), max_new_tokens=16) as url:
        opts = _opts(inp, tmp_path / "out", url, concurrency=4, formal_max_tokens=16, reason_max_tokens=16)
        rep = formalize(opts)
        m = _metrics(url)
        assert rep["teacher"]["model"] == "hf"  # from GET /v1/models
        assert rep["read"] == rep["formalized"] == 3 and rep["kept"] == 0
        assert rep["failed"] == {"no_answer": 3}, rep["failure_examples"]
        assert m["requests"].get("200", 0) == rep["requests"]["answered"] == m["requests"]["received"]
        assert rep["requests"]["answered"] + rep["requests"]["shared"] == 9  # detect, formalize, reason x 3
        assert rep["tokens_this_run"]["prompt_tokens"] == m["prompt_tokens"]
        assert rep["tokens_this_run"]["completion_tokens"] == m["completion_tokens"]
        again = formalize(opts)  # the same run again: the cache answers, the server sees nothing
        assert _metrics(url)["requests"] == m["requests"]
        assert again["requests"]["answered"] == 0 and again["failed"] == rep["failed"]
        assert again["tokens"] == rep["tokens"]


def _train(data_dir, tok_dir, run_dir, steps):
    args = ["sft", "--config", os.path.join(REPO, "configs/tiny_cpu.py"), f"--config.data.train={data_dir}",
            f"--config.tokenizer.path={tok_dir}", f"--config.sft.train.steps={steps}",
            f"--config.sft.train.ckpt_every={steps}", "--config.sft.train.log_every=1",
            "--config.sft.train.eval_every=1000", "--out", str(run_dir)]  # fmt: skip
    assert main(args) == 0
    logged = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [x["train/loss"] for x in logged if "train/loss" in x]


FIXED_TRACE = "<think>\nThe image shows the number 56.\n</think>\n<answer>56</answer>"


def _write_overfit_set(out_dir: str, n: int = 48) -> None:
    import io

    import numpy as np
    from array_record.python.array_record_module import ArrayRecordWriter
    from PIL import Image

    from r1ov_jax.data.reasoning import reasoner_prompt
    from r1ov_jax.data.record import SHARD_PREFIX, WRITER_OPTIONS, Record
    from r1ov_jax.data.teacher.prompts import IMAGE_TYPES

    rng = np.random.default_rng(0)
    words = "what which how many image chart number show value item describe kind table".split()
    os.makedirs(out_dir, exist_ok=True)
    w = ArrayRecordWriter(os.path.join(out_dir, f"{SHARD_PREFIX}-00000-of-00001"), WRITER_OPTIONS)
    for i in range(n):
        q = " ".join(rng.choice(words, size=int(rng.integers(3, 9)))) + f" {i}?"
        if i % 2:  # what the teacher is sent: an image and an instruction
            q = [q, *(instr for _, instr in IMAGE_TYPES.values())][i % (len(IMAGE_TYPES) + 1)]
            buf = io.BytesIO()
            size = (int(rng.integers(30, 90)), int(rng.integers(30, 90)))
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
            images = [buf.getvalue()]
        else:  # what the reasoner is sent: a description and the question, no image
            desc = ["<answer>56</answer>", f"Image size: {i} x {2 * i} pixels.", q][i % 3]
            q, images = reasoner_prompt(desc, q), []
        rec = Record(id=f"o{i}", images=images, formal="", question=q, answer="56", trace=FIXED_TRACE)
        w.write(rec.to_bytes())
    w.close()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("R1OV_SLOW"), reason="a few minutes on CPU: set R1OV_SLOW=1")
def test_formalize_end_to_end_against_r1ov_serve_with_sigkill_resume(tmp_path):
    from r1ov_jax.processing.tokenizer import make_test_tokenizer

    # 1. A model that answers every prompt in the required format with 56: overfit on image prompts (like the
    #    teacher's) and text-only prompts built by the reasoner's prompt builder (like the reasoner's).
    make_test_tokenizer(tmp_path / "tok")
    _write_overfit_set(str(tmp_path / "train"))
    losses = _train(tmp_path / "train", tmp_path / "tok", tmp_path / "run", steps=100)
    assert losses[-1] < 0.1 * losses[0]

    items = [
        {"w": 40 + 7 * i, "h": 30 + 5 * i, "question": f"Item {i}: what number?", "answer": "56"}
        for i in range(6)
    ]
    items[5]["answer"] = "57"  # the model says 56: wrong_answer
    inp = write_items(tmp_path / "in", items)
    flags = ["--formal-max-tokens", "48", "--reason-max-tokens", "48", "--concurrency", "1", "--no-progress"]
    with served(str(tmp_path / "run"), str(tmp_path / "serve.log")) as url:
        # 2. Uninterrupted reference run.
        start = _answered(url)
        ref = formalize(
            _opts(inp, tmp_path / "ref", url, concurrency=1, formal_max_tokens=48, reason_max_tokens=48)
        )
        unique = _answered(url) - start
        assert ref["kept"] == 5 and ref["failed"] == {"wrong_answer": 1}, ref["failure_examples"]
        assert unique == ref["requests"]["answered"] == 18
        # 3. Killed halfway: freeze it, let the server finish what it holds, count, then SIGKILL.
        out = str(tmp_path / "out")
        cmd = [
            sys.executable,
            "-m",
            "r1ov_jax.cli",
            "formalize",
            "--input",
            inp,
            "--out",
            out,
            "--teacher",
            url,
            *flags,
        ]
        start = _answered(url)
        proc = subprocess.Popen(cmd, env=ENV, cwd=REPO)
        cache = os.path.join(out, "cache")
        deadline = time.monotonic() + 300
        while len(glob.glob(f"{cache}/*/*.json")) < 8:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        while (m := _metrics(url))["queue_depth"] or m["requests"]["received"] != sum(
            v for k, v in m["requests"].items() if k != "received"
        ):
            time.sleep(0.1)
        cached = len(glob.glob(f"{cache}/*/*.json"))
        first = _answered(url) - start
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not shard_paths(out) and 8 <= cached < unique
        # 4. Restarted: only the requests the cache lacks reach the server.
        start = _answered(url)
        done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        second = _answered(url) - start
    print(f"server answered: uninterrupted {unique}; killed run {first} ({cached} cached); restart {second}")
    assert second == unique - cached  # nothing the killed run had received was asked again
    assert first - cached in (0, 1)  # at --concurrency 1, at most the one request the kill cut off
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "ref")
    # 5. `r1ov sft` trains on what the served teacher produced.
    losses = _train(out, tmp_path / "tok", tmp_path / "run2", steps=2)
    assert len(losses) == 2 and all(x == x for x in losses)
