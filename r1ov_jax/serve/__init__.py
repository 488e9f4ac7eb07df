"""``r1ov serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batched in-framework sampler.

See docs/SERVE.md. ``serve_cli(args)`` is the CLI entry; :func:`build_app` gives the ASGI app for embedding.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.serve.engine import Engine, Limits
from r1ov_jax.serve.metrics import Metrics

__all__ = ["Limits", "build_app", "serve_cli"]

log = logging.getLogger("r1ov.serve")


def build_app(model_path: str, limits: Limits, *, model_name: str | None = None, max_request_bytes: int):
    """(ASGI app, served model name) for a run directory or HF folder."""
    from r1ov_jax import runs
    from r1ov_jax.serve.app import create_app

    limits.check()
    loaded = runs.load(model_path, require_tokenizer=True)
    # The system turn `r1ov generate` uses: the run's recorded one, else the template's default.
    engine = Engine(loaded, limits, Metrics(), default_system=loaded.prompt_format.system)
    name = model_name or os.path.basename(os.path.normpath(loaded.run_dir or model_path))
    return create_app(engine, name, max_request_bytes=max_request_bytes), name


def _server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after its graceful shutdown, which would end the process with
        status -15; a SIGTERM that drained cleanly is a normal exit here (status 0)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            original = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in original.items():
                    signal.signal(s, handler)

    return GracefulServer


def _int_list(text: str | None, flag: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InvalidInputError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve_cli(args) -> int:
    import uvicorn

    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    if args.max_request_bytes < 1:
        raise InvalidInputError(f"--max-request-bytes must be >= 1, got {args.max_request_bytes}")
    limits = Limits(
        max_batch=args.max_batch, max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
        max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels, max_queue=args.max_queue,
        batch_buckets=_int_list(args.batch_buckets, "--batch-buckets"),
        batch_window_s=args.batch_window_ms / 1e3,
    )  # fmt: skip
    sock = _bind(args.host, args.port)  # before the model loads: a taken port fails at once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, name = build_app(
        args.model, limits, model_name=args.served_model_name, max_request_bytes=args.max_request_bytes
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=None,
        access_log=False,
    )
    log.info(
        "serving %s as %r on http://%s:%d (max batch %d)",
        args.model,
        name,
        args.host,
        args.port,
        args.max_batch,
    )
    server = _server_class()(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1
