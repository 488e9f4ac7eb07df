"""The OpenAI chat-completions wire format: request models, checks, errors and response bodies.

Only what ``POST /v1/chat/completions`` needs. Requests are validated with pydantic (the models FastAPI uses);
fields other clients send that we do not implement (``presence_penalty``, ``logprobs``, ``tools`` …) are
ignored, as most OpenAI-compatible servers do. Every error is an :class:`ApiError` rendered as OpenAI's
``{"error": {"message", "type", "code", "param"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1ov_jax.errors import InvalidInputError
from r1ov_jax.processing.image import ImageTooLargeError, open_checked

_DATA_URL = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
MAX_STOP_SEQUENCES = 4  # OpenAI's limit


class ApiError(Exception):
    """A request that fails with ``status``; ``code`` is a stable machine-readable reason."""

    def __init__(self, status: int, message: str, code: str, *, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    @property
    def type(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 → greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


def parse_request(body: bytes) -> ChatRequest:
    """The request, or ApiError 400 (not JSON) / 422 (JSON that is not a valid chat request)."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({e})", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(obj).__name__}", "invalid_json")
    try:
        req = ChatRequest.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(
            422, f"invalid request: {where}: {first['msg']} ({e.error_count()} error(s))", "invalid_request",
            param=where,
        ) from None  # fmt: skip
    if len(req.stops) > MAX_STOP_SEQUENCES:
        raise ApiError(422, f"stop: at most {MAX_STOP_SEQUENCES} sequences", "invalid_request", param="stop")
    return req


def decode_image_url(url: str, where: str, *, max_bytes: int, max_pixels: int) -> bytes:
    """Encoded image bytes of a ``data:image/...;base64,`` URL, checked: base64, size, header and pixel cap."""
    m = _DATA_URL.fullmatch(url.strip())
    if m is None:
        shown = url[:40] + ("…" if len(url) > 40 else "")
        raise ApiError(
            400, f"{where}: expected a data:image/<format>;base64,<data> URL, got {shown!r} (remote URLs are "
            "not fetched)", "invalid_image_url", param=where,
        )  # fmt: skip
    payload = m.group(2)
    if len(payload) * 3 // 4 > max_bytes:
        raise ApiError(413, f"{where}: image is over the server's {max_bytes}-byte limit", "image_too_large")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"{where}: invalid base64 ({e})", "invalid_base64", param=where) from None
    if not data:
        raise ApiError(400, f"{where}: the image is empty", "invalid_image", param=where)
    try:
        open_checked(data, max_pixels=max_pixels, where=where).close()
    except ImageTooLargeError as e:
        raise ApiError(413, str(e), "image_too_large", param=where) from None
    except InvalidInputError as e:
        raise ApiError(400, str(e), "invalid_image", param=where) from None
    return data


def to_hf_messages(
    req: ChatRequest, default_system: str | None, *, max_bytes: int, max_pixels: int
) -> tuple[list[dict], list[bytes]]:
    """OpenAI messages → HF-format messages for the chat template (``{"type": "image"}`` items in place) and
    the images' bytes in order. Without a system (or developer) message the model's own default system turn
    is prepended, as ``r1ov generate`` does."""
    messages, images = [], []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if isinstance(m.content, list):
            content = []
            for j, part in enumerate(m.content):
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                    continue
                if role != "user":
                    raise ApiError(
                        400, f"messages.{i}: only user messages may hold images", "invalid_request"
                    )
                where = f"messages.{i}.content.{j}.image_url"
                images.append(
                    decode_image_url(part.image_url.url, where, max_bytes=max_bytes, max_pixels=max_pixels)
                )
                content.append({"type": "image"})
        else:
            content = m.content or ""
        messages.append({"role": role, "content": content})
    if messages[0]["role"] != "system" and default_system is not None:
        messages.insert(0, {"role": "system", "content": default_system})
    return messages, images


# ----------------------------------------------------------------------------- responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(cid: str, model: str, choices: list[tuple[str, str]], usage_: dict) -> dict:
    """``choices``: (text, finish_reason) per choice."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage_,
    }


def chunk_body(cid: str, model: str, created: int, choices: list[dict], usage_: Any = None) -> dict:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body
