"""A small OpenAI-compatible endpoint on 127.0.0.1 for the `r1ov formalize` tests (stdlib http.server, a thread).

It answers honestly from what it is sent: as the teacher it decodes the image of a request and describes it
("Image size: W x H pixels. Mean color: …"); as the reasoner it reads that size back out of the description and
answers the question ("How wide …" → W, "How high …" → H; multiple choice → the option letter holding the value).
So every kept record's answer went through the image bytes, the teacher, the description and the reasoner.

Faults for the tests, chosen per request:
  * ``teacher_faults[width]`` for teacher requests on images of that width, ``reasoner_faults[tag]`` for reasoner
    requests whose question contains ``#tag``: one of ``"garbage"`` (text without tags), ``"empty"`` (no text),
    ``"500"`` (always 500), ``"hang"`` (sleep ``hang_s`` before answering), ``"notjson"`` (200 + HTML),
    ``"flaky"`` (the first ``flaky_failures`` attempts of each distinct request get 429 then 500, then a good
    answer), ``"noanswer"`` (reasoning without an <answer> block);
  * ``delay_s``: every answer takes this long (so requests overlap and the in-flight maximum means something);
  * ``hold_after``: once that many requests were let through, later ones wait until ``release()``; with
    ``drop_held`` they are then dropped unanswered (the client was killed meanwhile).

Counts: ``received`` / ``answered`` (sha256 of each request body, in order), ``max_in_flight``, ``attempts``.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import re
import threading
import time

import numpy as np
from PIL import Image

MODEL = "fake-vlm"


def _describe(data_url: str) -> str:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    h, w = arr.shape[:2]
    r, g, b = (int(round(v)) for v in arr.reshape(-1, 3).mean(0))
    return f"Image size: {w} x {h} pixels. Mean color: ({r}, {g}, {b})."


def _image_of(body: dict) -> tuple[str | None, int | None]:
    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    raw = base64.b64decode(url.split(",", 1)[1])
                    with Image.open(io.BytesIO(raw)) as im:
                        return url, im.size[0]
    return None, None


def _reason(prompt: str) -> str:
    m = re.search(r"Image size: (\d+) x (\d+) pixels", prompt)
    if not m:
        return "<think>\nThe description gives no size.\n</think>\n<answer>unknown</answer>"
    w, h = m.groups()
    value, what = (w, "width") if "wide" in prompt else (h, "height")
    steps = [f"The description gives an image {what} of {value} pixels."]
    options = re.findall(r"(?m)^([A-Z])\. (.*)$", prompt)
    answer = value
    for letter, text in options:
        if text.strip() == value:
            steps.append(f"That is option {letter}.")
            answer = letter
    return "<think>\n" + "\n".join(steps) + "\n</think>\n<answer>" + answer + "</answer>"


class FakeEndpoint:
    def __init__(self, *, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.teacher_faults: dict[int, str] = {}
        self.reasoner_faults: dict[str, str] = {}
        self.flaky_failures = 2
        self.hang_s = 5.0
        self.hold_after: int | None = None
        self.drop_held = True
        self.received: list[str] = []
        self.answered: list[str] = []
        self.attempts: dict[str, int] = {}
        self.dropped = 0
        self._admitted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._closing = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self):
        self._release.set()

    def reset_counts(self):
        with self._lock:
            self.received.clear()
            self.answered.clear()
            self.max_in_flight = 0
            self._admitted = 0

    # ------------------------------------------------------------------------------------------------ answering
    def _fault(self, body: dict) -> str | None:
        url, width = _image_of(body)
        if url is not None:
            return self.teacher_faults.get(width)
        prompt = body["messages"][-1]["content"]
        for tag, mode in self.reasoner_faults.items():
            if f"#{tag}" in prompt:
                return mode
        return None

    def _content(self, body: dict) -> str:
        url, _ = _image_of(body)
        last = body["messages"][-1]["content"]
        text = (
            last
            if isinstance(last, str)
            else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
        )
        if url is not None:
            return "chart" if "Which one of these kinds" in text else _describe(url)
        return _reason(text)

    def respond(self, raw: bytes) -> tuple[int, dict, bytes]:
        """(status, headers, body) for one chat request."""
        key = hashlib.sha256(raw).hexdigest()
        body = json.loads(raw)
        with self._lock:
            self.received.append(key)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            attempt = self.attempts[key]
            # decided on arrival, so no more than hold_after requests are ever let through
            hold = self.hold_after is not None and self._admitted >= self.hold_after
            self._admitted += not hold
        if hold:
            self._release.wait()
            if self.drop_held:
                with self._lock:
                    self.dropped += 1
                return -1, {}, b""
        if self.delay_s:
            time.sleep(self.delay_s)
        fault = self._fault(body)
        if fault == "500":
            return 500, {}, b'{"error": "boom"}'
        if fault == "flaky" and attempt <= self.flaky_failures:
            return (429, {"Retry-After": "0"}, b"slow down") if attempt % 2 else (503, {}, b"busy")
        if fault == "hang":
            self._closing.wait(self.hang_s)
        if fault == "notjson":
            return 200, {"Content-Type": "text/html"}, b"<html>gateway</html>"
        canned = {
            "garbage": "lorem ipsum dolor sit amet",
            "empty": "",
            "noanswer": "<think>\nI think it is wide.\n</think>\nIt is wide.",
        }
        content = canned[fault] if fault in canned else self._content(body)
        prompt_chars = len(raw)
        out = {
            "id": "chatcmpl-" + key[:12],
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 64,
                "completion_tokens": len(content) // 4,
                "total_tokens": prompt_chars // 64 + len(content) // 4,
            },
        }
        with self._lock:
            self.answered.append(key)
        return 200, {"Content-Type": "application/json"}, json.dumps(out).encode()

    def _handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, headers: dict, data: bytes):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {"Content-Type": "application/json"},
                        json.dumps({"data": [{"id": MODEL}]}).encode(),
                    )
                else:
                    self._send(404, {}, b"not found")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self._send(404, {}, b"not found")
                    return
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, headers, data = fake.respond(raw)
                    if status > 0:
                        self._send(status, headers, data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def log_message(self, *args):
                pass

        return Handler


def write_items(folder, items: list[dict]) -> str:
    """A JSONL input folder: each item ``{w, h, question?, answer?, choices?, image?, raw?}`` becomes one row
    (``raw``: a row written as given, for bad-input cases); images are solid PNGs of size w x h. Returns the folder."""
    import os

    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, it in enumerate(items):
        if "raw" in it:
            lines.append(it["raw"])
            continue
        name = it.get("image", f"img{i:03d}.png")
        if "w" in it:
            color = np.full((it["h"], it["w"], 3), (37 * i) % 256, np.uint8)
            Image.fromarray(color).save(os.path.join(folder, name))
        row = {"image": name, "question": it.get("question", "How wide is the image in pixels?")}
        row["answer"] = it.get("answer", str(it.get("w")))
        if "choices" in it:
            row["choices"] = it["choices"]
        lines.append(json.dumps(row))
    with open(os.path.join(folder, "items.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(folder)
