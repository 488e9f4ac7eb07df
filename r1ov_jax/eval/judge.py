"""Optional judge: an OpenAI-compatible chat endpoint that *extracts* the final answer of undecided outputs.

Off by default. The judge only reads the final answer out of an output our rules could not decide; correctness is
still decided by the deterministic verifier, so a judge cannot grade generously. Standard library only (urllib).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from r1ov_jax.rewards.answers import LETTERS

SYSTEM = (
    "You read a model's response to an exam question and report the final answer the response commits to. "
    "Reply with the answer only: the option letter for multiple choice, otherwise the final value or expression. "
    "If the response does not commit to one final answer, reply NONE."
)


@dataclass
class OpenAIJudge:
    """Answer extractor behind `POST {base_url}/chat/completions`.

    Args:
      base_url: e.g. "http://127.0.0.1:8000/v1" (vLLM, SGLang, llama.cpp server, OpenAI).
      model: model name sent in the request.
      api_key: bearer token; default: the environment variable named by `api_key_env`, if set.
      timeout_s / retries: per-request timeout and retries on network errors and HTTP 429/5xx.
      max_output_chars: the response is cut to its last this-many characters (the final answer is at the end).
    """

    base_url: str
    model: str
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 2
    max_output_chars: int = 6000

    def _messages(self, item, output: str) -> list[dict]:
        q = item.question
        if item.choices:
            q += "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        tail = output[-self.max_output_chars :]
        user = f"Question:\n{q}\n\nResponse:\n{tail}\n\nFinal answer (or NONE):"
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def chat(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 64})
        headers = {"Content-Type": "application/json"}
        key = self.api_key or os.environ.get(self.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        last = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=body.encode("utf-8"), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                last = e
                if e.code != 429 and e.code < 500:
                    raise RuntimeError(f"judge endpoint {url} answered HTTP {e.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise RuntimeError(f"judge endpoint {url} returned an unexpected body ({e})") from None
            time.sleep(min(8.0, 0.5 * 2**attempt))
        raise RuntimeError(f"judge endpoint {url} unreachable after {self.retries + 1} tries: {last}")

    def extract(self, item, output: str) -> str | None:
        """The final answer the judge reads in `output`, or None when it reports none."""
        reply = self.chat(self._messages(item, output)).strip()
        if not reply or reply.strip(" .").upper() in {"NONE", "NULL", "N/A"}:
            return None
        return reply[:200]
