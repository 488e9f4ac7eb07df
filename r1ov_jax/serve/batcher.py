"""A bounded request queue drained by one background thread that joins requests into sampler batches.

Requests that arrive while a batch decodes wait in the queue; the next batch takes as many as fit in
``max_rows`` (a request with ``n`` choices takes ``n`` rows), in arrival order (waiting a few ms for requests
still being prepared). One thread owns the model, so
JAX sees one call at a time. A batch that raises is retried request by request, so only the request that fails
gets the error. :meth:`Batcher.close` stops accepting, finishes everything queued, then joins the thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class Closed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclasses.dataclass
class Job:
    rows: int  # sampler rows this request needs (its n)
    payload: Any  # what run_batch reads
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    enqueued: float = dataclasses.field(default_factory=time.perf_counter)


class Batcher:
    """``run_batch(jobs) -> results`` (one per job, in order) runs on the batching thread.

    A batch starts with the oldest request and takes the queued ones up to ``max_rows``; while requests
    announced with :meth:`incoming` are still being prepared it waits up to ``window_s`` for them."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Job]], list],
        *,
        max_rows: int,
        max_queue: int,
        window_s: float = 0.0,
    ):
        if max_rows < 1 or max_queue < 1 or window_s < 0:
            raise ValueError(
                f"need max_rows, max_queue >= 1 and window_s >= 0, got {max_rows}, {max_queue}, {window_s}"
            )
        self.run_batch, self.max_rows, self.window_s = run_batch, max_rows, window_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._closing = threading.Event()
        self._carry: Job | None = None  # taken from the queue but did not fit the previous batch
        self._incoming = 0  # requests announced by `incoming()` and not yet submitted
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="r1ov-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return self._queue.qsize() + (self._carry is not None)

    @property
    def preparing(self) -> int:
        return self._incoming

    @contextlib.contextmanager
    def incoming(self):
        """Announces a request that will be submitted when it is prepared (a forming batch may wait for it)."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def submit(self, rows: int, payload: Any) -> concurrent.futures.Future:
        if rows > self.max_rows:
            raise ValueError(f"a request of {rows} rows never fits a batch of {self.max_rows}")
        if self._closing.is_set():
            raise Closed("the server is shutting down")
        job = Job(rows, payload)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are queued already") from None
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Stops taking requests, finishes the queued ones, joins the thread."""
        self._closing.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ batching thread
    def _next_batch(self) -> list[Job]:
        first = self._carry
        self._carry = None
        while first is None:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return []
        batch, rows = [first], first.rows
        deadline = time.perf_counter() + self.window_s
        while rows < self.max_rows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                # Requests still being prepared (image decoding, tokenization) would otherwise wait a whole
                # batch: wait for them a little; with none announced, start at once.
                left = deadline - time.perf_counter()
                if self._incoming == 0 or left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=min(0.002, left))
                except queue.Empty:
                    continue
            if rows + job.rows > self.max_rows:
                self._carry = job  # first in line for the next batch
                break
            batch.append(job)
            rows += job.rows
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        try:
            results = self.run_batch(batch)
        except Exception as e:  # noqa: BLE001 - isolate the failing request below
            if len(batch) == 1:
                log.exception("request failed in the sampler")
                batch[0].future.set_exception(e)
                return
            log.warning("a batch of %d requests failed (%s); retrying them one by one", len(batch), e)
            for job in batch:
                try:
                    (result,) = self.run_batch([job])
                except Exception as e1:  # noqa: BLE001
                    log.exception("request failed in the sampler")
                    job.future.set_exception(e1)
                else:
                    job.future.set_result(result)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)
