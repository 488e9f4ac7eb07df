"""The batcher alone (no model): requests join batches up to max_rows in arrival order, a full queue refuses,
a failing request fails alone, close() finishes what was queued."""

import threading
import time

import pytest

from r1ov_jax.serve.batcher import Batcher, Closed, QueueFull


class Recorder:
    """run_batch that doubles each payload, records batch compositions, and can be held or poisoned."""

    def __init__(self, poison=None):
        self.batches, self.poison, self.gate = [], poison, threading.Event()
        self.gate.set()

    def __call__(self, jobs):
        self.gate.wait()
        self.batches.append([j.payload for j in jobs])
        if any(j.payload == self.poison for j in jobs):
            raise RuntimeError("poisoned")
        return [j.payload * 2 for j in jobs]


def test_requests_join_batches_in_order_up_to_max_rows():
    run = Recorder()
    run.gate.clear()  # hold the first batch so the rest queue up behind it
    b = Batcher(run, max_rows=4, max_queue=64)
    first = b.submit(1, 0)
    time.sleep(0.2)  # the thread has taken request 0 and waits at the gate
    futures = [b.submit(rows, p) for p, rows in zip(range(1, 7), [2, 2, 1, 3, 1, 4])]
    assert b.depth == 6
    run.gate.set()
    assert first.result(5) == 0 and [f.result(5) for f in futures] == [2, 4, 6, 8, 10, 12]
    # rows per batch never exceed 4; a request that does not fit starts the next batch (order kept)
    assert run.batches == [[0], [1, 2], [3, 4], [5], [6]]
    b.close(5)


def test_full_queue_refuses_and_oversized_request_is_rejected():
    run = Recorder()
    run.gate.clear()
    b = Batcher(run, max_rows=2, max_queue=2)
    b.submit(1, 1)
    time.sleep(0.2)  # taken by the thread, held
    b.submit(1, 2), b.submit(1, 3)
    with pytest.raises(QueueFull):
        b.submit(1, 4)
    with pytest.raises(ValueError, match="never fits"):
        b.submit(3, 5)
    run.gate.set()
    b.close(5)


def test_failing_request_fails_alone():
    run = Recorder(poison=13)
    run.gate.clear()
    b = Batcher(run, max_rows=8, max_queue=64)
    hold = b.submit(1, 0)
    time.sleep(0.2)
    futures = {p: b.submit(1, p) for p in (11, 12, 13, 14)}
    run.gate.set()
    assert hold.result(5) == 0
    with pytest.raises(RuntimeError, match="poisoned"):
        futures[13].result(5)
    assert {p: f.result(5) for p, f in futures.items() if p != 13} == {11: 22, 12: 24, 14: 28}
    assert [11, 12, 13, 14] in run.batches  # tried together first, then one by one
    assert b.submit(1, 7).result(5) == 14  # and the batcher keeps serving
    b.close(5)


def test_close_finishes_queued_requests_then_refuses():
    run = Recorder()
    run.gate.clear()
    b = Batcher(run, max_rows=1, max_queue=64)
    futures = [b.submit(1, p) for p in range(5)]
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.1)
    with pytest.raises(Closed):
        b.submit(1, 9)
    run.gate.set()
    closer.join(5)
    assert not closer.is_alive() and [f.result(0) for f in futures] == [0, 2, 4, 6, 8]


def test_forming_batch_waits_for_announced_requests_only():
    run = Recorder()
    # a long window, so that "no wait" (< 1 s) cannot be confused with a wait on a loaded host
    b = Batcher(run, max_rows=8, max_queue=64, window_s=3.0)
    ctx = b.incoming()
    ctx.__enter__()  # a request is being prepared
    first = b.submit(1, 1)

    def late():
        time.sleep(0.1)
        b.submit(1, 2)
        ctx.__exit__(None, None, None)

    threading.Thread(target=late).start()
    assert first.result(5) == 2
    assert run.batches == [[1, 2]]  # the batch waited for the announced request
    start = time.perf_counter()
    assert b.submit(1, 3).result(5) == 6  # nothing announced: no wait
    assert time.perf_counter() - start < 1.0 and run.batches[-1] == [3]
    b.close(5)
