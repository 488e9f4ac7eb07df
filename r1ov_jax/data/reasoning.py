"""Reasoning traces from the formal text: step 3 of the paper's pipeline (DeepSeek-R1 there; here a deterministic
solver per image type, or optionally any OpenAI-compatible chat endpoint as the teacher).

A trace is ``<think>\n…steps…\n</think>\n<answer>X</answer>`` — the format the GRPO format reward checks. For multiple
choice the steps end by matching the computed value to an option and X is the option letter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import urllib.error
import urllib.request

from r1ov_jax.data.record import Record, letter
from r1ov_jax.data.solvers import Solution, SolveError, solver_for
from r1ov_jax.processing.prompts import FORMAT_SUFFIX  # the teacher is asked for the format the rewards check

log = logging.getLogger(__name__)


def _same(value: str, choice: str) -> bool:
    a, b = value.strip(), choice.strip()
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return a.casefold() == b.casefold()


def pick_choice(value: str, choices: list[str]) -> int | None:
    """Index of the option equal to `value` (numerically when both parse as numbers), else None."""
    hits = [i for i, c in enumerate(choices) if _same(value, c)]
    return hits[0] if len(hits) == 1 else None


def solve_record(rec: Record) -> Solution:
    """Run the type's solver on the record's formal text and query program."""
    kind = rec.meta.get("type")
    query = rec.meta.get("query")
    if not kind or not isinstance(query, dict):
        raise SolveError(f"record {rec.id!r}: needs meta.type and meta.query for the deterministic solver")
    return solver_for(kind)(rec.formal, rec.question, query)


def format_trace(steps: list[str], answer: str) -> str:
    return "<think>\n" + "\n".join(steps) + "\n</think>\n<answer>" + answer + "</answer>"


def make_trace(rec: Record) -> str:
    """Deterministic step-by-step trace for a generated record (raises SolveError if it cannot be solved)."""
    sol = solve_record(rec)
    steps = list(sol.steps)
    if rec.choices:
        idx = pick_choice(sol.value, rec.choices)
        if idx is None:
            raise SolveError(
                f"record {rec.id!r}: computed value {sol.value!r} matches no option of {rec.choices}"
            )
        opts = ", ".join(f"{letter(i)}. {c}" for i, c in enumerate(rec.choices))
        steps.append(
            f"The result is {sol.value}. Among the options ({opts}), it matches option {letter(idx)}."
        )
        return format_trace(steps, letter(idx))
    steps.append(f"So the answer is {sol.value}.")
    return format_trace(steps, sol.value)


# ------------------------------------------------------------------------------------------------------ teacher
# What the paper's text-only reasoner sees: the formal description and the question (shared with `r1ov formalize`).
REASONER_SYSTEM = (
    "You are given a precise textual description of an image and a question about the image. "
    "Reason step by step, then give a short final answer (a number, a word, or an option letter)."
)


def reasoner_prompt(formal: str, question: str) -> str:
    """The reasoner's user turn; ``question`` as shown to a model (``Record.prompt_text``: stem + options)."""
    return f"Description of the image:\n{formal}\n\nQuestion: {question}\n\n{FORMAT_SUFFIX}"


def message_text(content) -> str:
    """A chat message's content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return content if isinstance(content, str) else ""


def message_trace(msg: dict) -> str:
    """A response message as one trace: reasoning models that return ``reasoning_content`` (DeepSeek-R1 style)
    get it wrapped in <think> tags in front of the content."""
    content = message_text(msg.get("content")).strip()
    thinking = message_text(msg.get("reasoning_content")).strip()
    if thinking and "<think>" not in content:
        content = f"<think>\n{thinking}\n</think>\n{content}"
    return content


@dataclasses.dataclass
class Teacher:
    """An OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``) used as the text-only reasoner.

    Off unless constructed. It sees what the paper's reasoner saw: the formal description and the question.
    Reasoning models that return ``reasoning_content`` (DeepSeek-R1 style) get it wrapped in <think> tags.
    """

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout: float = 60.0
    system_prompt: str = REASONER_SYSTEM

    def prompt(self, rec: Record) -> str:
        return reasoner_prompt(rec.formal, rec.prompt_text())

    def complete(self, messages: list[dict]) -> dict:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions", data=body, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise RuntimeError(f"teacher endpoint {self.base_url}: {e}") from e

    def trace(self, rec: Record) -> str:
        """The teacher's trace for `rec`, normalized to <think>…</think><answer>…</answer> where possible."""
        out = self.complete(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": self.prompt(rec)}]
        )
        try:
            msg = out["choices"][0]["message"]
            if not isinstance(msg, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(
                f"teacher endpoint {self.base_url}: unexpected response {str(out)[:200]}"
            ) from None
        return message_trace(msg)


def add_traces(records: list[Record], teacher: Teacher | None = None) -> tuple[list[Record], dict[str, int]]:
    """Attach traces: the deterministic solver where the record has a query program, else the teacher (if any).

    Returns (records with traces where one could be made, counts by source/failure)."""
    counts = {"solver": 0, "teacher": 0, "unsolved": 0}
    out = []
    for rec in records:
        trace = None
        if isinstance(rec.meta.get("query"), dict):
            try:
                trace = make_trace(rec)
                counts["solver"] += 1
            except (SolveError, KeyError, ValueError, ZeroDivisionError) as e:
                log.warning("solver failed on %s: %s", rec.id, e)
        if trace is None and teacher is not None:
            try:
                trace = teacher.trace(rec)
                counts["teacher"] += 1
            except RuntimeError as e:
                log.warning("teacher failed on %s: %s", rec.id, e)
        if trace is None:
            counts["unsolved"] += 1
        out.append(dataclasses.replace(rec, trace=trace) if trace is not None else rec)
    return out, counts
