"""Server counters for ``GET /metrics`` (JSON): requests, tokens, queue depth, batches, compiles, latency."""

from __future__ import annotations

import collections
import threading

import numpy as np

LATENCY_WINDOW = 10_000  # percentiles over the most recent requests


class Metrics:
    """Thread-safe: updated from the event loop, the request threads and the batching thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # "received", "ok", status codes as strings
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.batches = 0
        self.batch_rows = collections.Counter()  # rows decoded (n counts n) → batches
        self.batch_requests = collections.Counter()  # requests joined → batches
        self.shapes: set[tuple] = set()  # distinct compiled sampler shapes
        self._latency = collections.deque(maxlen=LATENCY_WINDOW)
        self._queue_wait = collections.deque(maxlen=LATENCY_WINDOW)
        self._sampler = collections.deque(maxlen=LATENCY_WINDOW)  # seconds per sampler call

    def received(self) -> None:
        with self._lock:
            self.requests["received"] += 1

    def finished(
        self, status: int, seconds: float, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        with self._lock:
            self.requests[str(status)] += 1
            if status == 200:
                self.prompt_tokens += prompt_tokens
                self.completion_tokens += completion_tokens
                self._latency.append(seconds)

    def batch(self, rows: int, requests: int, shape: tuple, queue_waits: list[float], seconds: float) -> None:
        with self._lock:
            self._sampler.append(seconds)
            self.batches += 1
            self.batch_rows[rows] += 1
            self.batch_requests[requests] += 1
            self.shapes.add(shape)
            self._queue_wait.extend(queue_waits)

    @staticmethod
    def _percentiles(values) -> dict:
        if not values:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None}
        a = np.asarray(values, np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return {"count": int(a.size), "p50": p50, "p90": p90, "p99": p99, "mean": float(a.mean())}

    def snapshot(self, queue_depth: int) -> dict:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "queue_depth": queue_depth,
                "batches": self.batches,
                "batch_rows": {str(k): v for k, v in sorted(self.batch_rows.items())},
                "batch_requests": {str(k): v for k, v in sorted(self.batch_requests.items())},
                "max_batch_rows": max(self.batch_rows, default=0),
                "compiles": len(self.shapes),
                "compiled_shapes": [list(s) for s in sorted(self.shapes)],
                "latency_s": self._percentiles(self._latency),
                "queue_wait_s": self._percentiles(self._queue_wait),
                "sampler_s": self._percentiles(self._sampler),
            }
