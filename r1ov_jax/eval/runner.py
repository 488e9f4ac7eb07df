"""Resumable evaluation driver: generate -> extract/verify -> one fsync'ed JSONL line per item.

`evaluate(items, generate_fn, out_dir)` appends to `out_dir/results.jsonl`. A killed run (crash, SIGKILL,
pre-emption) loses at most the batch in flight: on restart, ids already in the file are skipped, a torn last line
is cut off, and no item is ever scored twice. A lock file stops two processes writing the same results at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from r1ov_jax.eval.bench import BenchItem
from r1ov_jax.eval.extract import score_answer
from r1ov_jax.errors import InvalidInputError, MissingInputError

try:  # POSIX advisory lock; without fcntl (Windows) the lock is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)
RESULTS_FILE = "results.jsonl"


def load_results(path: str | os.PathLike) -> list[dict]:
    """Records of a results.jsonl (or of `DIR/results.jsonl`). A torn last line is ignored, not an error."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise MissingInputError(f"results file not found: {p}")
    records = []
    with open(p, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines):  # last line without newline: a write cut short
                break
            raise InvalidInputError(f"{p}:{n}: not a JSON line") from None
        if not isinstance(rec, dict) or "id" not in rec or "correct" not in rec:
            raise InvalidInputError(f"{p}:{n}: not a results record (needs at least 'id' and 'correct')")
        records.append(rec)
    return records


def _repair_and_read(path: Path) -> dict[str, dict]:
    """Read finished records; truncate a torn last line (no newline) so that appends start on a fresh line."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: dropping a partial last line (%d bytes) left by an interrupted run",
                path,
                len(data) - end,
            )
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    for n, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InvalidInputError(
                f"{path}:{n}: corrupt line in the middle of the results file; fix or remove it"
            ) from None
        done.setdefault(str(rec["id"]), rec)
    return done


def score_item(item: BenchItem, output: str, judge=None) -> dict:
    """The results record for one item: deterministic extraction, plus the judge for undecided items if given."""
    s = score_answer(output, item.answer, item.choices)
    rec = {
        "id": item.id,
        "output": output,
        "extracted": s.extracted,
        "rule": s.rule,
        "correct": bool(s.correct),
        "undecided": bool(s.undecided),
        "level": item.level,
        "category": item.category,
        "answer": item.answer,
        "span": s.span,
    }
    if judge is not None and s.undecided:
        try:
            reply = judge.extract(item, output)
        except Exception as e:  # noqa: BLE001 - a judge failure leaves the item undecided, never crashes the eval
            rec["judge_error"] = f"{type(e).__name__}: {e}"
            return rec
        rec["judge_reply"] = reply
        if reply is not None:
            js = score_answer(f"<answer>{reply}</answer>", item.answer, item.choices)
            if not js.undecided:
                rec.update(extracted=js.extracted, rule="judge", correct=bool(js.correct), undecided=False)
    return rec


def evaluate(
    items: Sequence[BenchItem],
    generate_fn: Callable[[list[BenchItem]], list[str]],
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    judge=None,
) -> list[dict]:
    """Score `items` with outputs from `generate_fn`, appending to `out_dir/results.jsonl`; resumable.

    Args:
      items: benchmark items (see `load_bench`). Duplicate ids are scored once.
      generate_fn: list of items -> list of output strings, same length and order (the caller owns prompting,
        sampling and decoding; `BenchItem.prompt_text()` gives the paper's prompt).
      out_dir: directory for results.jsonl (created). Existing records there are kept and their ids skipped.
      limit: evaluate only the first `limit` items (the same prefix on every resume).
      batch_size: items per `generate_fn` call; each item's line is flushed and fsync'ed as soon as it is scored.
      progress: show a progress bar on stderr.
      judge: optional `OpenAIJudge` (or any object with `.extract(item, output) -> str | None`), asked only for
        items the deterministic extractor leaves undecided.
    Returns:
      The records of the selected items, in item order (earlier runs' records included).
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    selected, seen = [], set()
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            selected.append(it)
    if limit is not None:
        selected = selected[: max(0, int(limit))]

    lock = open(out / ".results.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RuntimeError(f"{path} is being written by another evaluation process") from None
        done = _repair_and_read(path)
        by_id = {it.id: it for it in selected}
        for rid, rec in done.items():
            it = by_id.get(rid)
            if it is not None and "answer" in rec and str(rec["answer"]) != str(it.answer):
                raise InvalidInputError(
                    f"{path}: item {rid!r} was scored against gold {rec['answer']!r} but the data now says "
                    f"{it.answer!r}; use a fresh --out directory for a different data file"
                )
        todo = [it for it in selected if it.id not in done]
        bar = _progress(len(selected), len(selected) - len(todo), progress)
        with open(path, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                batch = list(todo[start : start + batch_size])
                outputs = generate_fn(batch)
                if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
                    raise InvalidInputError(
                        f"generate_fn returned {type(outputs).__name__} of length "
                        f"{len(outputs) if hasattr(outputs, '__len__') else '?'} for a batch of {len(batch)}"
                    )
                for it, text in zip(batch, outputs):
                    rec = score_item(it, "" if text is None else str(text), judge)
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    done[it.id] = rec
                    bar.update(1)
        bar.close()
    finally:
        lock.close()
    return [done[it.id] for it in selected if it.id in done]


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, initial=initial, desc="eval", unit="item", file=sys.stderr, dynamic_ncols=True)
