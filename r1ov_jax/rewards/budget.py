"""Time budgets for verifying answers, enforced in any thread or process.

Two pieces:

* **Budgets** (`time_budget(seconds)`): a deadline held in a context variable, so it follows the calling thread
  (and asyncio task). Budgets nest — the earliest deadline wins — so `compute_rewards` gives each GRPO group one
  budget and each answer inside it another, and every symbolic check takes at most what is left of both.
  Defaults (`r1ov_jax.rewards.accuracy`): ``ANSWER_BUDGET_S`` = 1.0 s per answer, ``GROUP_BUDGET_S`` = 2.0 s per
  GRPO group, ``SYMBOLIC_TIMEOUT_S`` = 1.0 s per math-verify call; environment variables ``R1OV_ANSWER_BUDGET_S``,
  ``R1OV_GROUP_BUDGET_S``, ``R1OV_SYMBOLIC_TIMEOUT_S`` change them for a process. When a budget is spent, only the
  cheap checks (option letters, strings, numbers) still run; symbolic checks answer "not shown equal".
* **A bounded pool of worker processes** (`symbolic_check`): math-verify runs in a worker, the caller waits on a
  pipe with a hard timeout and kills the worker when it is exceeded (a thread cannot be stopped — a big-integer
  power inside C holds the GIL for minutes — but a process can). ``R1OV_REWARD_WORKERS`` sets the pool size
  (default min(2, CPUs)); 0, or workers that cannot start, run the check in the calling thread, bounded by
  ``setitimer`` on the main thread and only by the static input filter elsewhere.

Failed parses and timeouts are cached: a string that did not parse, or that a worker had to be killed over, is
never sent again; a pair's verdict is remembered.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import math
import os
import queue
import threading
import time

log = logging.getLogger(__name__)

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("r1ov_reward_deadline", default=None)


def env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@contextlib.contextmanager
def time_budget(seconds: float | None):
    """Within the block, `remaining()` counts down from ``seconds`` (or what an enclosing budget has left, if less).
    None: no new limit."""
    if seconds is None:
        yield
        return
    new = time.monotonic() + max(0.0, float(seconds))
    cur = _DEADLINE.get()
    token = _DEADLINE.set(new if cur is None else min(cur, new))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float:
    """Seconds left of the innermost budget (inf outside any)."""
    d = _DEADLINE.get()
    return math.inf if d is None else d - time.monotonic()


# ------------------------------------------------------------------------------------------------- caches
class _LRU:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key, default=None):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return default

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.data.clear()


_PAIRS = _LRU(65536)  # (pred, gold) -> bool, definitive verdicts only
_BAD = _LRU(65536)  # strings that did not parse or hung a worker -> reason
_STRIKES = _LRU(65536)  # gold -> verify timeouts it took part in


def clear_caches() -> None:
    _PAIRS.clear()
    _BAD.clear()
    _STRIKES.clear()


# ------------------------------------------------------------------------------------------------- worker pool
_STARTUP_TIMEOUT_S = 30.0  # the first worker imports sympy; that wait is not charged to answers' budgets


class WorkerStartError(RuntimeError):
    """A symbolic-check worker process exited before it was ready."""


class _Worker:
    """``python -m r1ov_jax.rewards._symbolic_worker`` talking over a pair of pipes (multiprocessing Connections).

    A plain subprocess, not multiprocessing.Process: that would re-import the caller's ``__main__`` in the child."""

    def __init__(self):
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "r1ov_jax.rewards._symbolic_worker", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env, close_fds=True,
            )  # fmt: skip
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.ready = False
        self.lock = threading.Lock()

    def send(self, obj) -> None:
        self.send_conn.send(obj)

    def wait_ready(self, timeout: float) -> bool:
        if self.ready:
            return True
        with self.lock:
            if not self.ready and self.conn.poll(max(0.0, timeout)):
                try:
                    self.ready = self.conn.recv() == ("ready",)
                except (EOFError, OSError):
                    raise WorkerStartError(f"worker exited with code {self.proc.poll()}") from None
        return self.ready

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        for c in (self.conn, self.send_conn):
            with contextlib.suppress(Exception):
                c.close()
        with contextlib.suppress(Exception):
            self.proc.wait(1.0)


class SymbolicPool:
    """At most ``size`` worker processes; each request gets one worker for at most its timeout."""

    def __init__(self, size: int):
        self.size = size
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._live = 0
        self._ever_ready = False
        self._all: set[_Worker] = set()
        self.kills = 0

    def _spawn(self) -> _Worker | None:
        with self._lock:
            if self._live >= self.size:
                return None
            self._live += 1
        try:
            w = _Worker()
            with self._lock:
                self._all.add(w)
            return w
        except Exception:
            with self._lock:
                self._live -= 1
            raise

    def warm_up(self) -> None:
        """Start every worker now (returns at once; they get ready in the background)."""
        while True:
            w = self._spawn()
            if w is None:
                return
            self._idle.put(w)

    def _acquire(self, deadline: float) -> _Worker | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        w = self._spawn()
        if w is not None:
            return w
        try:
            return self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def _lost(self, w: _Worker, respawn: bool = True) -> None:
        w.kill()
        with self._lock:
            self._live -= 1
            self._all.discard(w)
        if respawn:  # start the replacement now: it imports sympy while other work goes on
            with contextlib.suppress(Exception):
                nw = self._spawn()
                if nw is not None:
                    self._idle.put(nw)

    def ensure_ready(self, timeout: float = _STARTUP_TIMEOUT_S) -> bool:
        """Blocks (up to ``timeout``) until some worker is ready: after start-up, and after kills while the
        replacements import sympy. Returns at once when one is ready."""
        self.warm_up()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                workers = list(self._all)
            if any(w.wait_ready(0) for w in workers):
                self._ever_ready = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def run(self, pred: str, gold: str, timeout: float):
        """("ok", (equal, gold_ok, pred_ok)) | ("timeout", stage) | ("busy", None) | ("error", None)."""
        deadline = time.monotonic() + timeout
        w = self._acquire(deadline)
        if w is None:
            return "busy", None
        try:
            if not w.wait_ready(deadline - time.monotonic()):
                self._idle.put(w)  # still starting: keep it, this check goes without
                return "busy", None
            self._ever_ready = True
            w.send((pred, gold))
            stage = "gold"
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not w.conn.poll(left):
                    self.kills += 1
                    self._lost(w)  # stuck (possibly inside C): only killing the process stops it
                    return "timeout", stage
                msg = w.conn.recv()
                if msg[0] == "stage":
                    stage = msg[1]
                    continue
                self._idle.put(w)
                return "ok", tuple(msg[1:])
        except WorkerStartError:
            self._lost(w, respawn=False)
            raise  # workers cannot start here: the caller falls back to in-process checks
        except (EOFError, OSError):
            self._lost(w)
            return "error", None

    def close(self) -> None:
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            self._lost(w, respawn=False)


_POOL: SymbolicPool | None = None
_POOL_LOCK = threading.Lock()
_POOL_FAILED = False


def pool_size() -> int:
    try:
        return int(os.environ.get("R1OV_REWARD_WORKERS", min(2, os.cpu_count() or 1)))
    except ValueError:
        return 1


def get_pool() -> SymbolicPool | None:
    """The process's worker pool, or None where workers are off or cannot be started (then run in-process)."""
    global _POOL, _POOL_FAILED
    if _POOL_FAILED:
        return None
    if _POOL is not None:
        return _POOL
    with _POOL_LOCK:
        if _POOL is None and not _POOL_FAILED:
            if pool_size() <= 0:
                _POOL_FAILED = True
            else:
                _POOL = SymbolicPool(pool_size())
    return _POOL


def warm_up(wait: bool = False) -> None:
    """Start the symbolic workers (in the background; ``wait``: until one is ready, once per process). Budgets
    measure wall time, so callers with budgets (compute_rewards) wait first, and sympy's import is not charged."""
    global _POOL_FAILED
    p = get_pool()
    if p is None:
        return
    try:
        p.ensure_ready() if wait else p.warm_up()
    except Exception as e:  # noqa: BLE001
        log.warning("symbolic reward workers unavailable (%s: %s); checking in-process", type(e).__name__, e)
        _POOL_FAILED = True


def shutdown() -> None:
    """Stop the workers (they are daemonic and also stop with this process)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
        _POOL = None


def symbolic_check(pred: str, gold: str, timeout: float, in_process) -> bool:
    """math-verify equivalence under a hard ``timeout`` (seconds), cached. ``in_process(pred, gold, timeout)`` is
    the fallback where no worker pool can run."""
    global _POOL_FAILED
    cached = _PAIRS.get((pred, gold))
    if cached is not None:
        return cached
    if _BAD.get(pred) or _BAD.get(gold):
        return False
    if timeout <= 0.005:
        return False  # budget spent: not shown equal, and nothing is cached
    pool = get_pool()
    if pool is None:
        return bool(in_process(pred, gold, timeout))
    try:
        status, info = pool.run(pred, gold, timeout)
    except Exception as e:  # noqa: BLE001 - cannot start processes here: fall back for good
        log.warning("symbolic reward workers unavailable (%s: %s); checking in-process", type(e).__name__, e)
        _POOL_FAILED = True
        return bool(in_process(pred, gold, timeout))
    if status == "ok":
        equal, g_ok, p_ok = info
        if not g_ok:
            _BAD.put(gold, "unparsed")
        if not p_ok:
            _BAD.put(pred, "unparsed")
        _PAIRS.put((pred, gold), bool(equal))
        return bool(equal)
    if status == "timeout":
        # the stage a killed worker last reported names the culprit; "verify" blames the pair
        if info == "gold":
            _BAD.put(gold, "timeout")
        elif info == "pred":
            _BAD.put(pred, "timeout")
        elif info == "verify":
            # stuck comparing: blame the prediction (model text, the usual culprit) and count a strike against
            # the gold, which is blamed too at its second strike
            _PAIRS.put((pred, gold), False)
            _BAD.put(pred, "timeout")
            strikes = _STRIKES.get(gold, 0) + 1
            _STRIKES.put(gold, strikes)
            if strikes >= 2:
                _BAD.put(gold, "timeout")
    return False
