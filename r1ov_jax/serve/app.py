"""FastAPI routes: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

A request is read (body size cap), parsed, prepared in a worker thread (base64, image checks, processing and
tokenization stay off the event loop), queued for the batcher and awaited. Every failure is answered with an
OpenAI-style JSON error; a failure inside one request never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from r1ov_jax.serve.batcher import Batcher, Closed, QueueFull
from r1ov_jax.serve.engine import Engine
from r1ov_jax.serve.metrics import Metrics
from r1ov_jax.serve.protocol import (
    ApiError,
    ChatRequest,
    chunk_body,
    completion_body,
    completion_id,
    parse_request,
    usage,
)

log = logging.getLogger(__name__)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body of {declared} bytes exceeds the {limit}-byte limit", "request_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the {limit}-byte limit", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(engine: Engine, model_name: str, *, max_request_bytes: int) -> FastAPI:
    """The ASGI app; the batcher starts with the app's lifespan and is drained when it ends (graceful stop)."""
    metrics: Metrics = engine.metrics
    created = int(time.time())
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = Batcher(
            engine.run_batch, max_rows=engine.limits.max_batch, max_queue=engine.limits.max_queue,
            window_s=engine.limits.batch_window_s,
        )  # fmt: skip
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests; the queue is empty unless they were cancelled
            await run_in_threadpool(state["batcher"].close)

    app = FastAPI(title="r1ov serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return error(ApiError(404, f"no route {request.method} {request.url.path}", "not_found"))

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        return error(
            ApiError(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")
        )

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "r1ov"}],
        }

    @app.get("/metrics")
    async def get_metrics():
        batcher = state.get("batcher")
        snapshot = metrics.snapshot(queue_depth=batcher.depth if batcher else 0)
        snapshot["preparing"] = batcher.preparing if batcher else 0
        return snapshot

    async def complete(req: ChatRequest):
        batcher: Batcher = state["batcher"]
        with batcher.incoming():
            prepared = await run_in_threadpool(engine.prepare, req)
            try:
                future = batcher.submit(prepared.n, prepared)
            except QueueFull as e:
                raise ApiError(503, f"server overloaded: {e}; retry later", "queue_full") from None
            except Closed as e:
                raise ApiError(503, str(e), "shutting_down") from None
        sampled = await asyncio.wrap_future(future)
        return prepared, engine.finish(prepared, sampled)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        start = time.perf_counter()
        metrics.received()
        try:
            req = parse_request(await _read_body(request, max_request_bytes))
            if req.model != model_name:
                raise ApiError(
                    404,
                    f"model {req.model!r} not found; this server has {model_name!r}",
                    "model_not_found",
                    param="model",
                )
            prepared, choices = await complete(req)
        except ApiError as e:
            metrics.finished(e.status, time.perf_counter() - start)
            return error(e)
        except Exception as e:  # noqa: BLE001 - a bug or a sampler failure: this request only
            log.exception("chat completion failed")
            metrics.finished(500, time.perf_counter() - start)
            return error(ApiError(500, f"internal error: {type(e).__name__}: {e}", "internal_error"))
        completion = sum(len(c.tokens) for c in choices)
        use = usage(prepared.prompt_tokens, completion)
        metrics.finished(200, time.perf_counter() - start, prepared.prompt_tokens, completion)
        cid = completion_id()
        if not req.stream:
            return completion_body(cid, model_name, [(c.text, c.finish_reason) for c in choices], use)
        with_usage = req.stream_options is not None and req.stream_options.include_usage
        return StreamingResponse(
            _stream(cid, choices, use if with_usage else None), media_type="text/event-stream"
        )

    def _stream(cid: str, choices, use):
        # The whole completion is sampled in one compiled loop, so the chunks follow its token boundaries.
        created_at = int(time.time())

        def chunk(i, delta, reason=None):
            choice = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
            return _sse(chunk_body(cid, model_name, created_at, [choice]))

        for i, c in enumerate(choices):
            yield chunk(i, {"role": "assistant", "content": ""})
            for piece in engine.stream_pieces(c):
                yield chunk(i, {"content": piece})
            yield chunk(i, {}, c.finish_reason)
        if use is not None:
            yield _sse(chunk_body(cid, model_name, created_at, [], usage_=use))
        yield b"data: [DONE]\n\n"

    return app
