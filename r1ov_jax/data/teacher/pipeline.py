"""`r1ov formalize`: the paper's data pipeline on real images, through OpenAI-compatible endpoints.

Per item (one image, question, gold answer):
  detect     the teacher VLM names the image type (skipped with ``--image-type``)           → prompts.IMAGE_TYPES
  formalize  the teacher writes the type's formal description (table, netlist, OCR, …)    → Record.formal
  reason     the text-only reasoner solves description + question as <think>…</think><answer>…</answer>
  verify     role-play rewrite (``data.rewrite``), then the rewarded format and the answer against the gold
             (``data.filter.check`` → ``rewards.accuracy.verify_answer``, choices aware)
Kept items are written as ``synth.array_record-*`` shards (``Record.to_bytes``, the `r1ov synth` format), so
``r1ov sft --config.data.train=OUT`` trains on them unchanged; OUT/report.json holds the counts.

Determinism and resume: records are written in input order whatever order requests finish in (a reorder buffer
in front of the writer), the shards get their final names only when the run ends, and every 200 response is in
the on-disk cache (``cache.py``) before it is used. A run killed at any point and restarted with the same
arguments sends no request that was answered before and writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import glob
import json
import logging
import os
import tempfile
import time

import httpx

from r1ov_jax.data.filter import check
from r1ov_jax.data.importers import ImportReport
from r1ov_jax.data.reasoning import REASONER_SYSTEM, message_text, message_trace, reasoner_prompt
from r1ov_jax.data.record import SHARD_PREFIX, WRITER_OPTIONS, Record, RecordError, shard_paths
from r1ov_jax.data.rewrite import rewrite
from r1ov_jax.data.teacher.cache import ResponseCache, request_key
from r1ov_jax.data.teacher.client import ChatClient, api_base, EndpointError, RequestLimiter, RetryPolicy
from r1ov_jax.data.teacher.inputs import iter_inputs, resolve_input
from r1ov_jax.data.teacher.prompts import FALLBACK_TYPE, detect_messages, formalize_messages, image_types
from r1ov_jax.data.teacher.prompts import parse_type
from r1ov_jax.errors import InvalidInputError
from r1ov_jax.rewards.accuracy import extract_answer_block

log = logging.getLogger(__name__)

STAGES = ("detect", "formalize", "reason", "verify")
DETECT_MAX_TOKENS = 16
MAX_EXAMPLES = 20


@dataclasses.dataclass
class FormalizeOptions:
    """Everything a run depends on (the CLI flags). ``cache_dir`` defaults to OUT/cache."""

    input: str
    out: str
    teacher: str
    reasoner: str | None = None  # None: the teacher
    model: str | None = None  # None: the first model GET /models lists
    reasoner_model: str | None = None  # None: --model when the reasoner is the teacher, else its first model
    concurrency: int = 8
    image_type: str | None = None  # None: detected by the teacher
    timeout: float = 120.0
    max_retries: int = 4
    retry_delay: float = 0.5
    limit: int | None = None
    temperature: float = 0.0
    formal_max_tokens: int | None = None  # None: the server's default (servers cap max_tokens differently)
    reason_max_tokens: int | None = None
    cache_dir: str | None = None
    shard_size: int = 1024
    progress: bool = True
    api_key: str | None = None

    def validate(self) -> FormalizeOptions:
        checks = [
            (self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.timeout > 0, f"--timeout must be > 0 seconds, got {self.timeout}"),
            (self.max_retries >= 0, f"--max-retries must be >= 0, got {self.max_retries}"),
            (self.retry_delay >= 0, f"--retry-delay must be >= 0, got {self.retry_delay}"),
            (self.limit is None or self.limit >= 0, f"--limit must be >= 0, got {self.limit}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (
                all(m is None or m >= 1 for m in (self.formal_max_tokens, self.reason_max_tokens)),
                "--formal-max-tokens / --reason-max-tokens must be >= 1",
            ),
            (self.shard_size >= 1, f"shard size must be >= 1, got {self.shard_size}"),
            (
                self.image_type is None or self.image_type in image_types(),
                f"--image-type {self.image_type!r}: expected one of {image_types()}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInputError(msg)
        resolve_input(self.input)  # input and URLs before any request
        for url in (self.teacher, self.reasoner or self.teacher):
            api_base(url)
        return self


class ItemFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclasses.dataclass
class Answer:
    text: str
    message: dict
    usage: dict


@dataclasses.dataclass
class Tally:
    """The run's counts (report.json): per stage, failures per reason, requests and tokens."""

    read: int = 0
    detected: int = 0
    formalized: int = 0
    traced: int = 0
    verified: int = 0
    kept: int = 0
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed_by_stage: dict = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in STAGES}
    )
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    image_types: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    answered: int = 0  # requests the endpoints answered in this run
    from_cache: int = 0  # requests answered by the cache (a resumed run)
    shared: int = 0  # identical requests in flight at once: sent once, answer shared
    tokens: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # every answer used
    tokens_this_run: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )  # answered now
    examples: list = dataclasses.field(default_factory=list)
    models: dict = dataclasses.field(default_factory=dict)  # {"teacher": name, "reasoner": name}

    def fail(self, rec: Record, stage: str, reason: str, detail: str) -> None:
        self.failed[reason] += 1
        self.failed_by_stage[stage][reason] += 1
        where = f"{rec.meta.get('source')}:{rec.meta.get('row')}"
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {"id": rec.id, "where": where, "stage": stage, "reason": reason, "detail": detail[:300]}
            )
        log.info("formalize: %s (%s) failed at %s: %s: %s", rec.id, where, stage, reason, detail[:300])

    def postfix(self) -> dict:
        return {
            "formalized": self.formalized,
            "traced": self.traced,
            "kept": self.kept,
            "failed": sum(self.failed.values()),
        }


def _usage(resp: dict) -> dict:
    u = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    out = {}
    for k in ("prompt_tokens", "completion_tokens"):
        v = u.get(k)
        out[k] = int(v) if isinstance(v, (int, float)) and v == v and v >= 0 else 0
    return out


class Endpoint:
    """A model behind a ChatClient, its answers cached on disk; identical concurrent requests are sent once."""

    def __init__(
        self, client: ChatClient, model: str, cache: ResponseCache, tally: Tally, temperature: float
    ):
        self.client, self.model, self.cache, self.tally, self.temperature = (
            client,
            model,
            cache,
            tally,
            temperature,
        )
        self._pending: dict[str, asyncio.Future] = {}

    async def ask(self, messages: list[dict], max_tokens: int | None) -> Answer:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if self.temperature > 0:
            body["seed"] = 0  # sampled answers reproducible where the server honours seeds
        key = request_key(body)
        resp = self.cache.get(key)
        if resp is not None:
            self.tally.from_cache += 1
        elif key in self._pending:
            self.tally.shared += 1
            resp = await asyncio.shield(self._pending[key])
        else:
            fut = asyncio.get_running_loop().create_future()
            self._pending[key] = fut
            try:
                resp = await self.client.chat(body)
                self.cache.put(key, resp)  # before it is used: a kill after this point never re-asks
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:
                fut.set_exception(e)
                fut.exception()  # mark retrieved: nobody else may be waiting
                raise
            else:
                fut.set_result(resp)
            finally:
                del self._pending[key]
            self.tally.answered += 1
            self.tally.tokens_this_run.update(_usage(resp))
        usage = _usage(resp)
        self.tally.tokens.update(usage)
        msg = resp["choices"][0].get("message")
        if not isinstance(msg, dict):
            raise EndpointError(
                "bad_response", f"{self.client.base}: choice has no message: {str(resp)[:200]}"
            )
        return Answer(message_text(msg.get("content")).strip(), msg, usage)


def canonical_trace(msg: dict) -> str:
    """The reasoner's message as ``<think>\\n…\\n</think>\\n<answer>…</answer>``, or ItemFailed with the reason.

    Reasoning models return the thinking apart (``reasoning_content``), or omit the opening <think>, or add text
    after </answer>; the reasoning and the answer are kept verbatim, stray text outside them is dropped."""
    text = message_trace(msg)
    if not text:
        raise ItemFailed("empty_response", "the reasoner returned no text")
    answer = extract_answer_block(text)
    if not answer:
        raise ItemFailed("no_answer", f"no <answer>…</answer> block in {text[:200]!r}")
    if "</think>" in text:
        think = text.split("</think>", 1)[0]
        think = think.split("<think>", 1)[1] if "<think>" in think else think
    else:
        think = text[: text.rfind("<answer>")].replace("<think>", "")
    think = think.strip()
    if not think:
        raise ItemFailed("no_reasoning", f"an answer without reasoning: {text[:200]!r}")
    return f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"


def _strip_think(text: str) -> str:
    """A VLM that thinks aloud before its description: keep the description."""
    return text.split("</think>", 1)[1] if "</think>" in text else text


class OrderedShardWriter:
    """Kept records in input order into shards of ``shard_size``; final names only at ``close``."""

    def __init__(self, out_dir: str, shard_size: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writer_cls, self.out_dir, self.shard_size = ArrayRecordWriter, out_dir, shard_size
        for stale in glob.glob(os.path.join(out_dir, f".{SHARD_PREFIX}-*.tmp")):  # a killed run's
            os.remove(stale)
        self.pending: dict[int, bytes | None] = {}
        self.next = 0  # the first index not yet written
        self.tmp: list[str] = []
        self.counts: list[int] = []
        self._w = None
        self.progress = asyncio.Event()

    def put(self, i: int, data: bytes | None) -> None:
        self.pending[i] = data
        while self.next in self.pending:
            d = self.pending.pop(self.next)
            self.next += 1
            if d is not None:
                self._write(d)
        self.progress.set()

    def _open(self):
        path = os.path.join(self.out_dir, f".{SHARD_PREFIX}-{len(self.tmp):05d}.tmp")
        self.tmp.append(path)
        self.counts.append(0)
        self._w = self._writer_cls(path, WRITER_OPTIONS)

    def _write(self, data: bytes) -> None:
        if self._w is None or self.counts[-1] >= self.shard_size:
            if self._w is not None:
                self._w.close()
            self._open()
        self._w.write(data)
        self.counts[-1] += 1

    def close(self) -> list[dict]:
        if self._w is None:
            self._open()  # no record kept: still one (empty) shard, like `r1ov synth`
        self._w.close()
        for old in shard_paths(self.out_dir):
            os.remove(old)
        n, shards = len(self.tmp), []
        for k, (tmp, count) in enumerate(zip(self.tmp, self.counts)):
            name = f"{SHARD_PREFIX}-{k:05d}-of-{n:05d}"
            os.replace(tmp, os.path.join(self.out_dir, name))
            shards.append({"path": name, "records": count})
        return shards


class Formalizer:
    def __init__(self, opts: FormalizeOptions, teacher: Endpoint, reasoner: Endpoint, tally: Tally):
        self.opts, self.teacher, self.reasoner, self.tally = opts, teacher, reasoner, tally

    async def item(self, rec: Record) -> bytes | None:
        """The serialized kept record, or None (the failure counted in the tally)."""
        t, stage, usage = self.tally, "detect", {}
        image = rec.images[0]
        try:
            if self.opts.image_type:
                kind, kind_from = self.opts.image_type, "given"
            else:
                ans = await self.teacher.ask(detect_messages(image), DETECT_MAX_TOKENS)
                usage["detect"] = ans.usage
                kind, kind_from = parse_type(ans.text), "teacher"
                if kind is None:
                    t.notes["type_undetected"] += 1  # the generic description prompt still works
                    kind = FALLBACK_TYPE
                t.detected += 1
            stage = "formalize"
            ans = await self.teacher.ask(formalize_messages(image, kind), self.opts.formal_max_tokens)
            usage["formalize"] = ans.usage
            formal = _strip_think(ans.text).strip()
            if not formal:
                raise ItemFailed("empty_description", "the teacher returned an empty description")
            t.formalized += 1
            stage = "reason"
            messages = [
                {"role": "system", "content": REASONER_SYSTEM},
                {"role": "user", "content": reasoner_prompt(formal, rec.prompt_text())},
            ]
            ans = await self.reasoner.ask(messages, self.opts.reason_max_tokens)
            usage["reason"] = ans.usage
            trace = canonical_trace(ans.message)
            t.traced += 1
            stage = "verify"
            meta = {
                **rec.meta,
                "type": kind,
                "type_from": kind_from,
                "teacher": self.teacher.model,
                "reasoner": self.reasoner.model,
                "usage": usage,
            }
            out = rewrite(dataclasses.replace(rec, formal=formal, trace=trace, meta=meta))
            why = await asyncio.to_thread(check, out)  # symbolic checks may take up to their 1 s budget
            if why is not None:
                pred = extract_answer_block(out.trace)
                raise ItemFailed(why, f"answer {pred!r}, gold {rec.answer!r}")
            t.verified += 1
            try:
                data = out.to_bytes()
            except RecordError as e:
                raise ItemFailed("invalid_record", str(e)) from None
            t.kept += 1
            t.image_types[kind] += 1
            return data
        except EndpointError as e:
            t.fail(rec, stage, e.reason, str(e))
        except ItemFailed as e:
            t.fail(rec, stage, e.reason, str(e))
        return None


async def _run(opts: FormalizeOptions, tally: Tally, report: ImportReport) -> list[dict]:
    limiter = RequestLimiter(opts.concurrency)
    policy = RetryPolicy(max_retries=opts.max_retries, base_delay=opts.retry_delay, timeout=opts.timeout)
    cache = ResponseCache(opts.cache_dir or os.path.join(opts.out, "cache"))
    limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
    async with httpx.AsyncClient(limits=limits) as http:
        t_client = ChatClient(opts.teacher, limiter, policy, api_key=opts.api_key, http=http, seed=1)
        r_url = opts.reasoner or opts.teacher
        r_client = ChatClient(r_url, limiter, policy, api_key=opts.api_key, http=http, seed=2)
        t_model = opts.model or await t_client.default_model()
        if opts.reasoner_model:
            r_model = opts.reasoner_model
        elif r_client.base == t_client.base or opts.model:
            r_model = t_model
        else:
            r_model = await r_client.default_model()
        teacher = Endpoint(t_client, t_model, cache, tally, opts.temperature)
        reasoner = teacher if (r_client.base, r_model) == (t_client.base, t_model) else None
        reasoner = reasoner or Endpoint(r_client, r_model, cache, tally, opts.temperature)
        formalizer = Formalizer(opts, teacher, reasoner, tally)
        writer = OrderedShardWriter(opts.out, opts.shard_size)
        records = iter_inputs(opts.input, report)
        n_workers = 2 * opts.concurrency  # an item has one request in flight at a time
        window = 8 * opts.concurrency  # items read but not yet written: bounds the reorder buffer
        queue: asyncio.Queue = asyncio.Queue(maxsize=n_workers)
        bar = _progress(opts)

        async def produce():
            i = 0
            while opts.limit is None or i < opts.limit:
                while i - writer.next >= window:
                    writer.progress.clear()
                    await writer.progress.wait()
                rec = await asyncio.to_thread(next, records, None)  # decoding images off the event loop
                if rec is None:
                    break
                tally.read += 1
                await queue.put((i, rec))
                i += 1
            for _ in range(n_workers):
                await queue.put(None)

        async def work():
            while (job := await queue.get()) is not None:
                i, rec = job
                writer.put(i, await formalizer.item(rec))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tally.postfix(), refresh=False)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(produce())
                for _ in range(n_workers):
                    tg.create_task(work())
        except ExceptionGroup as group:  # e.g. a UserError from the reader: the CLI prints it as one line
            raise group.exceptions[0] from None
        finally:
            if bar is not None:
                bar.close()
        shards = writer.close()
    tally.notes["http_attempts"] = limiter.sent
    tally.notes["retries"] = limiter.retries
    tally.models = {"teacher": t_model, "reasoner": r_model}
    return shards


def _progress(opts: FormalizeOptions):
    if not opts.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=opts.limit, desc="formalize", unit="item", mininterval=0.5)


def _write_json(path: str, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def formalize(opts: FormalizeOptions) -> dict:
    """Run the pipeline; returns the report (also written to OUT/report.json)."""
    opts.validate()
    os.makedirs(opts.out, exist_ok=True)
    tally, report = Tally(), ImportReport(opts.input)
    start = time.perf_counter()
    shards = asyncio.run(_run(opts, tally, report))
    tokens = {k: tally.tokens.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
    tokens["total_tokens"] = sum(tokens.values())
    this_run = {k: tally.tokens_this_run.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
    this_run["total_tokens"] = sum(this_run.values())
    out = {
        "input": report.to_dict(),
        "out_dir": os.path.abspath(opts.out),
        "teacher": {"url": opts.teacher, "model": tally.models["teacher"]},
        "reasoner": {"url": opts.reasoner or opts.teacher, "model": tally.models["reasoner"]},
        "rows": report.rows,
        "rows_skipped": dict(report.skipped),
        "read": tally.read,
        "detected": tally.detected,
        "formalized": tally.formalized,
        "traced": tally.traced,
        "verified": tally.verified,
        "kept": tally.kept,
        "failed": dict(tally.failed),
        "failed_by_stage": {s: dict(c) for s, c in tally.failed_by_stage.items()},
        "failure_examples": tally.examples,
        "image_types_kept": dict(tally.image_types),
        "notes": dict(tally.notes),
        "requests": {"answered": tally.answered, "from_cache": tally.from_cache, "shared": tally.shared},
        "tokens": tokens,
        "tokens_this_run": this_run,
        "shards": shards,
        "seconds": round(time.perf_counter() - start, 3),
    }
    _write_json(os.path.join(opts.out, "report.json"), out)
    return out


def summary_lines(rep: dict) -> list[str]:
    """The printed summary: one line per topic."""

    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    skipped = sum(rep["rows_skipped"].values())
    lines = [
        f"read {rep['read']} items from {rep['rows']} rows ({skipped} rows skipped: {counts(rep['rows_skipped'])})",
        f"formalized {rep['formalized']}, traced {rep['traced']}, verified {rep['verified']}, kept {rep['kept']}",
        f"failed {sum(rep['failed'].values())}: {counts(rep['failed'])}",
        f"requests answered {rep['requests']['answered']} (from cache {rep['requests']['from_cache']}, "
        f"retries {rep['notes'].get('retries', 0)}); tokens {rep['tokens']['prompt_tokens']} prompt + "
        f"{rep['tokens']['completion_tokens']} completion ({rep['tokens_this_run']['total_tokens']} this run)",
        f"wrote {rep['kept']} records in {len(rep['shards'])} shard(s) to {rep['out_dir']} (report.json)",
    ]
    if rep["input"]["examples"]:
        row, reason, detail = rep["input"]["examples"][0]
        lines.insert(1, f"  e.g. {rep['input']['path']} row {row}: {reason}: {detail[:200]}")
    return lines
