"""Async client for OpenAI-compatible chat endpoints (``POST {base}/chat/completions``, ``GET {base}/models``).

One :class:`RequestLimiter` is shared by every endpoint of a run, so ``--concurrency`` bounds all requests in
flight together (teacher and reasoner). A request is retried with exponential backoff and full jitter on 429,
5xx, timeouts and connection errors (``Retry-After`` is honoured when the server sends one, capped by the
backoff ceiling); a 4xx other than 429 is final. What still fails raises :class:`EndpointError` whose ``reason``
is the report's counter key (``http_500``, ``timeout``, ``connection``, ``bad_response``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import urllib.parse

import httpx

from r1ov_jax.errors import InvalidInputError, MissingInputError

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class EndpointError(Exception):
    """A request that did not give a usable response; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def api_base(url: str) -> str:
    """``http://host:port`` → ``http://host:port/v1``; a URL with a path is taken as the API base itself."""
    parsed = urllib.parse.urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInputError(f"endpoint {url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parsed.path.rstrip("/") or "/v1"
    return urllib.parse.urlunparse(parsed._replace(path=path, params="", query="", fragment=""))


@dataclasses.dataclass
class RequestLimiter:
    """At most ``concurrency`` requests in flight across every client holding this limiter; counts requests."""

    concurrency: int
    sent: int = 0  # HTTP attempts, retries included
    retries: int = 0

    def __post_init__(self):
        if self.concurrency < 1:
            raise InvalidInputError(f"--concurrency must be >= 1, got {self.concurrency}")
        self._sem = asyncio.Semaphore(self.concurrency)


@dataclasses.dataclass
class RetryPolicy:
    """``max_retries`` retries after the first attempt; the k-th waits uniform(0, min(cap, base * 2**k)) s."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    timeout: float = 120.0  # seconds per attempt (connect + read)

    def delay(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        if retry_after:
            try:  # the server's hint, but never past our own ceiling (a hostile header must not stall a run)
                return min(self.max_delay, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return rng.uniform(0.0, ceiling)  # full jitter: clients that failed together do not retry together


class ChatClient:
    """One endpoint; ``await chat(body)`` returns the parsed JSON of a 200 response with at least one choice."""

    def __init__(
        self,
        url: str,
        limiter: RequestLimiter,
        policy: RetryPolicy,
        *,
        api_key: str | None = None,
        http: httpx.AsyncClient,
        seed: int = 0,
    ):
        self.base = api_base(url)
        self.limiter, self.policy, self.http = limiter, policy, http
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._rng = random.Random(seed)

    async def default_model(self) -> str:
        """The first model ``GET {base}/models`` lists (what `--model` defaults to)."""
        try:
            out = await self._request("GET", "/models", None)
            return str(out["data"][0]["id"])
        except EndpointError as e:
            raise MissingInputError(
                f"endpoint {self.base}: cannot list models to pick a default ({e}); pass --model NAME"
            ) from None
        except (KeyError, IndexError, TypeError):
            raise MissingInputError(
                f"endpoint {self.base}: GET /models lists no model; pass --model NAME"
            ) from None

    async def chat(self, body: dict) -> dict:
        out = await self._request("POST", "/chat/completions", body)
        choices = out.get("choices") if isinstance(out, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EndpointError("bad_response", f"{self.base}: response has no choices: {str(out)[:200]}")
        return out

    async def _request(self, method: str, path: str, body: dict | None) -> dict:
        url = self.base + path
        last: EndpointError | None = None
        for attempt in range(self.policy.max_retries + 1):
            if attempt:
                self.limiter.retries += 1
            retry_after = None
            async with self.limiter._sem:  # held for the attempt only, never while backing off
                self.limiter.sent += 1
                try:
                    # httpx's timeout bounds each read; asyncio's bounds the whole attempt (a trickling server)
                    async with asyncio.timeout(self.policy.timeout):
                        resp = await self.http.request(
                            method,
                            url,
                            content=None if body is None else json.dumps(body).encode(),
                            headers=self.headers,
                            timeout=self.policy.timeout,
                        )
                except (httpx.TimeoutException, TimeoutError):
                    last = EndpointError("timeout", f"{url}: no response within {self.policy.timeout:g} s")
                except httpx.TransportError as e:
                    last = EndpointError("connection", f"{url}: {type(e).__name__}: {e}")
                else:
                    if resp.status_code == 200:
                        try:
                            return resp.json()
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            # a proxy's HTML error page with status 200: final, retrying gives the same page
                            raise EndpointError(
                                "bad_response",
                                f"{url}: 200 with a body that is not JSON: {resp.text[:200]!r}",
                            ) from None
                    last = EndpointError(
                        f"http_{resp.status_code}", f"{url}: HTTP {resp.status_code}: {resp.text[:200]}"
                    )
                    if resp.status_code not in RETRY_STATUS:
                        raise last
                    retry_after = resp.headers.get("retry-after")
            if attempt < self.policy.max_retries:
                await asyncio.sleep(self.policy.delay(attempt, retry_after, self._rng))
        assert last is not None
        raise last
