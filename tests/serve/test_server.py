"""`r1ov serve` as a real process on 127.0.0.1, driven by the official `openai` client (and raw HTTP for
malformed requests): greedy == `r1ov generate`, n choices, seeds, streaming == non-streaming, stop sequences,
32 concurrent clients == their sequential answers with batches > 1, 4xx per malformed kind, SIGTERM drains.

One server for the whole module (its start and compiles dominate); the SIGTERM test ends it and runs last.
"""

import base64
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from r1ov_jax.cli import main
from r1ov_jax.testing.demo_model import write_demo_hf_dir

MODEL = "demo"
LIMITS = dict(max_batch=8, max_new_tokens=64, max_prompt_tokens=256, max_image_pixels=250_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    write_demo_hf_dir(str(d), weight_scale=6.0)  # greedy output that depends on the prompt
    return d


@pytest.fixture(scope="module")
def server(model_dir):
    port = _free_port()
    log = open(model_dir / "server.log", "w+")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    cmd = [
        sys.executable,
        "-m",
        "r1ov_jax.cli",
        "serve",
        "--model",
        str(model_dir / "hf"),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        [*cmd, "--served-model-name", MODEL, "--max-image-bytes=200000", "--max-request-bytes=1000000",
         "--batch-buckets=8", *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"r1ov serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "r1ov serve did not come up in 180 s"
        time.sleep(0.3)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key="unused", max_retries=0, timeout=120)


def _png(size=(90, 120), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _user(text, image: bytes | None = None):
    parts = [{"type": "image_url", "image_url": {"url": _data_url(image)}}] if image is not None else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _metrics(server) -> dict:
    return httpx.get(f"{server[1]}/metrics").json()


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server[1]}/health").json()["status"] == "ok"


def test_image_prompt_greedy_equals_generate(client, model_dir, capsys):
    image = (model_dir / "x.png").read_bytes()
    question = "How many objects are there?"
    r = client.chat.completions.create(
        model=MODEL, messages=_user(question, image), temperature=0, max_tokens=12
    )
    (choice,) = r.choices
    assert main(
        ["generate", "--model", str(model_dir / "hf"), "--image", str(model_dir / "x.png"),
         "--prompt", question, "--max-new-tokens", "12"]
    ) == 0  # fmt: skip
    assert choice.message.content == capsys.readouterr().out[:-1]  # print's newline
    assert len(choice.message.content) > 0 and len(set(choice.message.content)) > 2  # not one repeated token

    from r1ov_jax import runs
    from r1ov_jax.rollout.chat import encode_prompts

    loaded = runs.load(str(model_dir / "hf"), require_tokenizer=True)
    inputs = encode_prompts(loaded.model, loaded.tokenizer, loaded.image_processor, [([image], question)])
    assert r.usage.prompt_tokens == int(inputs["segment_ids"].sum())  # image tokens included
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == ("length" if r.usage.completion_tokens == 12 else "stop")


def test_n_choices_and_seed(client):
    kw = dict(model=MODEL, messages=_user("Describe the scene."), temperature=1.0, max_tokens=10, n=4)
    r = client.chat.completions.create(**kw, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # four independent draws
    again = client.chat.completions.create(**kw, seed=7)
    assert [c.message.content for c in again.choices] == texts  # seed → reproducible
    other = client.chat.completions.create(**kw, seed=8)
    assert [c.message.content for c in other.choices] != texts
    assert 4 <= r.usage.completion_tokens <= 40  # summed over the choices
    greedy = client.chat.completions.create(**{**kw, "temperature": 0.0})
    assert len({c.message.content for c in greedy.choices}) == 1


def test_multi_turn_prompt_uses_the_chat_template(client, model_dir):
    from r1ov_jax.processing.chat import tokenize_conversation
    from r1ov_jax.processing.tokenizer import Tokenizer

    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "k"},
        {"role": "user", "content": "x"},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "B."}, *turns], temperature=0, max_tokens=4
    )
    tok = Tokenizer.from_pretrained(str(model_dir / "hf"))
    ids = tokenize_conversation(
        [{"role": "system", "content": "B."}, *turns], tok, add_generation_prompt=True, default_system=None
    )["input_ids"]
    assert r.usage.prompt_tokens == len(ids)
    # without a system message the model's default system turn is rendered, as `r1ov generate` does
    r2 = client.chat.completions.create(model=MODEL, messages=turns, temperature=0, max_tokens=4)
    default = tokenize_conversation(turns, tok, add_generation_prompt=True)["input_ids"]
    assert r2.usage.prompt_tokens == len(default) > len(ids)


def _stream_texts(stream) -> tuple[dict, dict, object]:
    texts, reasons, usage = {}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                reasons[c.index] = c.finish_reason
    return texts, reasons, usage


def test_streaming_equals_non_streaming(client, model_dir):
    image = (model_dir / "x.png").read_bytes()
    for kw in (
        dict(messages=_user("What is shown?", image), temperature=0, max_tokens=12),
        dict(messages=_user("Count the cubes."), temperature=0.8, top_p=0.9, seed=3, n=2, max_tokens=12),
    ):
        full = client.chat.completions.create(model=MODEL, **kw)
        stream = client.chat.completions.create(
            model=MODEL, stream=True, stream_options={"include_usage": True}, **kw
        )
        texts, reasons, usage = _stream_texts(stream)
        assert texts == {c.index: c.message.content for c in full.choices}
        assert reasons == {c.index: c.finish_reason for c in full.choices}
        assert usage.completion_tokens == full.usage.completion_tokens
        assert usage.prompt_tokens == full.usage.prompt_tokens
    # the raw wire format: `data: {json}` events ending with `data: [DONE]`
    body = {"model": MODEL, "messages": _user("hi"), "max_tokens": 3, "temperature": 0, "stream": True}
    lines = [ln for ln in httpx.post(f"{client.base_url}chat/completions", json=body).text.split("\n") if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_stop_sequences_truncate(client):
    kw = dict(model=MODEL, messages=_user("Tell me more."), temperature=0, max_tokens=16)
    full = client.chat.completions.create(**kw)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(**kw, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    streamed, reasons, _ = _stream_texts(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert streamed[0] == cut.choices[0].message.content and reasons[0] == "stop"


def test_32_concurrent_clients_match_sequential_answers(client, server):
    def request(i):
        image = _png(seed=i) if i % 2 else None
        sampled = dict(temperature=1.0, seed=i) if i % 3 == 0 else dict(temperature=0)
        r = client.chat.completions.create(
            model=MODEL, messages=_user(f"Q{i}: how many?", image), max_tokens=8 + i % 5, **sampled
        )
        return r.choices[0].message.content, r.usage.completion_tokens

    sequential = [request(i) for i in range(32)]
    before = _metrics(server)
    barrier = threading.Barrier(32)

    def concurrent(i):
        barrier.wait()
        return request(i)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(concurrent, range(32)))
    assert answers == sequential
    after = _metrics(server)
    new_rows = {int(k): v - before["batch_rows"].get(k, 0) for k, v in after["batch_rows"].items()}
    assert max(k for k, v in new_rows.items() if v > 0) > 1  # the server batched them
    assert after["batches"] - before["batches"] < 32
    assert after["requests"]["200"] - before["requests"]["200"] == 32
    assert after["completion_tokens"] - before["completion_tokens"] == sum(n for _, n in answers)
    # shape buckets, not one compile per request: the mixed batches reuse the shapes of the lone requests
    # (text prompts fall in the 48-token bucket, image prompts in the 64-token one)
    assert after["compiles"] - before["compiles"] <= 1, after["compiled_shapes"]
    assert after["compiles"] <= 8, after["compiled_shapes"]
    assert after["latency_s"]["p50"] > 0 and after["latency_s"]["p99"] >= after["latency_s"]["p50"]
    assert after["queue_depth"] == 0


def _malformed(model_dir):
    big = _png(size=(300, 400), seed=1)  # 120,000 px but ~360 kB: over --max-image-bytes
    assert len(big) > 200_000
    buf = io.BytesIO()
    Image.new("RGB", (700, 400)).save(buf, format="PNG")
    wide = buf.getvalue()  # 280,000 px (a few kB): over --max-image-pixels
    good = dict(model=MODEL, max_tokens=2)
    user = lambda url: {**good, "messages": [{"role": "user", "content": [  # noqa: E731
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]}  # fmt: skip
    return [
        ("bad json", b'{"model": "demo", "messages": [', 400, "invalid_json"),
        ("not an object", b"[1, 2]", 400, "invalid_json"),
        ("no messages", {"model": MODEL}, 422, "invalid_request"),
        ("bad role", {**good, "messages": [{"role": "robot", "content": "x"}]}, 422, "invalid_request"),
        ("bad temperature", {**good, "messages": _user("x"), "temperature": 7}, 422, "invalid_request"),
        ("bad base64", user("data:image/png;base64,@@@not-base64@@@"), 400, "invalid_base64"),
        ("not an image", user(_data_url(b"hello, not a png")), 400, "invalid_image"),
        ("truncated image", user(_data_url(_png()[:200])), 400, "invalid_image"),
        ("remote url", user("https://example.com/cat.png"), 400, "invalid_image_url"),
        ("too many bytes", user(_data_url(big)), 413, "image_too_large"),
        ("too many pixels", user(_data_url(wide)), 413, "image_too_large"),
        ("body too large", {**good, "messages": _user("x" * 1_100_000)}, 413, "request_too_large"),
        ("prompt too long", {**good, "messages": _user("cube " * 400)}, 400, "context_length_exceeded"),
        (
            "max_tokens too large",
            {**good, "messages": _user("x"), "max_tokens": 65},
            400,
            "max_tokens_too_large",
        ),
        ("n too large", {**good, "messages": _user("x"), "n": 9}, 400, "n_too_large"),
        ("unknown model", {**good, "model": "gpt-9", "messages": _user("x")}, 404, "model_not_found"),
        (
            "image in system turn",
            {
                **good,
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "image_url", "image_url": {"url": _data_url(_png())}}],
                    },
                    *_user("x"),
                ],
            },
            400,
            "invalid_request",
        ),  # fmt: skip
    ]


def test_malformed_requests_get_4xx_and_server_keeps_serving(client, server, model_dir):
    url = f"{server[1]}/v1/chat/completions"
    for name, body, status, code in _malformed(model_dir):
        if isinstance(body, bytes):
            r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        else:
            r = httpx.post(url, json=body)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"], name
        ok = client.chat.completions.create(model=MODEL, messages=_user("still there?"), max_tokens=2)
        assert ok.choices[0].message.content is not None, name
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=_user("x"))
    with pytest.raises(openai.BadRequestError, match="invalid base64"):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}],
                }
            ],  # fmt: skip
        )
    assert httpx.get(f"{server[1]}/v1/nothing").json()["error"]["code"] == "not_found"


def test_sigterm_finishes_in_flight_request_and_exits_0(client, server):
    proc, _ = server
    received = _metrics(server)["requests"]["received"]
    result = {}

    def slow_request():  # a new token bucket (a fresh compile) keeps it in flight for seconds
        result["r"] = client.chat.completions.create(
            model=MODEL, messages=_user("Long answer, please."), temperature=0, max_tokens=64
        )

    t = threading.Thread(target=slow_request)
    t.start()
    while _metrics(server)["requests"]["received"] == received:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert result["r"].choices[0].message.content and result["r"].usage.completion_tokens >= 1
    assert proc.wait(60) == 0
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=_user("x"), max_tokens=2)
