"""The body of a symbolic-check worker process (see `r1ov_jax.rewards.budget`). Run as ``python -m
r1ov_jax.rewards._symbolic_worker READ_FD WRITE_FD``. Nothing here evaluates model text as code.

Protocol on the pipe: the worker sends ("ready",) once, then for each request (pred, gold) it sends ("stage",
"pred") after the gold parsed and ("stage", "verify") after the prediction parsed, then ("result", equal, gold_ok,
pred_ok). A worker stuck in C (a huge big-integer power) is killed by the parent; the last stage it reported says
which string was to blame.
"""

from __future__ import annotations

import functools
import logging


def _as_latex(s: str) -> str:
    return s if ("$" in s or "\\(" in s or "\\[" in s) else f"${s}$"


@functools.lru_cache(maxsize=4096)
def _parse(s: str):
    from math_verify import parse

    return tuple(parse(_as_latex(s), parsing_timeout=None))


def check(pred: str, gold: str, report=lambda stage: None) -> tuple[bool, bool, bool]:
    """(equal, gold parsed, pred parsed) by math-verify, without any timeout of its own."""
    from math_verify import verify

    try:
        g = _parse(gold)
    except Exception:  # noqa: BLE001 - a parse failure means "not shown equal"
        g = ()
    report("pred")
    try:
        p = _parse(pred)
    except Exception:  # noqa: BLE001
        p = ()
    if not g or not p:
        return False, bool(g), bool(p)
    report("verify")
    try:
        return bool(verify(list(g), list(p), timeout_seconds=None)), True, True
    except Exception:  # noqa: BLE001
        return False, True, True


def _quiet():
    class _F(logging.Filter):
        def filter(self, record):
            return "Timeout is disabled" not in record.getMessage()

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_F())


def main(conn, send_conn=None) -> None:
    """Worker loop: serve (pred, gold) requests from ``conn`` until it closes; replies go to ``send_conn``."""
    import signal

    send_conn = conn if send_conn is None else send_conn
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    _quiet()
    import math_verify  # noqa: F401 - load before saying ready

    send_conn.send(("ready",))
    while True:
        try:
            pred, gold = conn.recv()
        except (EOFError, OSError):
            return
        equal, g_ok, p_ok = check(pred, gold, lambda stage: send_conn.send(("stage", stage)))
        send_conn.send(("result", equal, g_ok, p_ok))


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
