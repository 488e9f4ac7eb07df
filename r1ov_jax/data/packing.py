"""Checkpointable Grain transformations that turn processed examples into model batches.

Used by ``r1ov_jax.data.pipeline``; the example dicts come from its ``map`` stage:

* SFT example: ``input_ids int32[L]``, ``loss_mask bool[L]``, ``positions int32[3, L]`` (M-RoPE of the example
  alone), ``pixel_values float32[n, C*T*P*P]`` (n may be 0), ``grid int64[k, 3]`` (one row per image, in token
  order), ``id``, ``where`` (``file:row``).
* prompt example: ``input_ids``, ``pixel_values``, ``grid``, ``answer``, ``choices``, ``id``, ``where``.
* a bad row: ``{"skip": reason, "error": message, "id", "where"}``. The batchers count these per reason (the
  counts are part of the iterator state, so they survive checkpoints and can be read back from worker
  processes with :func:`skipped_counts`), log them and go on.

Why our own packer and not ``grain.experimental.FirstFitPackIterDataset``: each row also has a static budget of
vision patches (``max_patches``: the row's images travel with it), and the images must be emitted in the token
order of their ``<|image_pad|>`` runs, which Grain's packers know nothing about.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from grain._src.python.ipc import shared_memory_array

from r1ov_jax.processing.positions import VisionGeometry, vision_inputs
from r1ov_jax.processing.prompts import assemble_prompt_batch

log = logging.getLogger(__name__)

SKIP_KEY = "r1ov_skipped"  # key of the per-reason counts inside iterator states


# ----------------------------------------------------------------------------------------------- batch assembly
def assemble_packed_batch(
    rows: Sequence[Sequence[dict]],
    *,
    seq_len: int,
    pad_id: int,
    max_patches: int,
    geometry: VisionGeometry,
    alloc: Callable[[tuple, Any], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The SFT batch of ``rows`` (each a list of examples laid out left to right, then right-padded).

    Returns ``input_ids int32[B, S]`` (pad_id on padding), ``segment_ids int32[B, S]`` (1..k per row, 0 padding),
    ``loss_mask bool[B, S]``, ``positions int32[3, B, S]`` (each segment's own M-RoPE positions; 0 on padding),
    ``pixel_values float32[B, max_patches, patch_dim]`` and ``vision`` (per-row padded geometry): each row's
    images, its segments' images in token order, travel with the row (``positions.vision_inputs``).
    """
    b = len(rows)
    input_ids = np.full((b, seq_len), pad_id, np.int32)
    segment_ids = np.zeros((b, seq_len), np.int32)
    loss_mask = np.zeros((b, seq_len), np.bool_)
    positions = np.zeros((3, b, seq_len), np.int32)
    vision_rows = []
    for r, row in enumerate(rows):
        chunks, grids = [], []
        vision_rows.append((chunks, grids))
        offset = 0
        for k, ex in enumerate(row, start=1):
            n = len(ex["input_ids"])
            if offset + n > seq_len:
                raise ValueError(f"row {r}: examples need {offset + n} tokens but seq_len is {seq_len}")
            span = slice(offset, offset + n)
            input_ids[r, span] = ex["input_ids"]
            segment_ids[r, span] = k
            loss_mask[r, span] = ex["loss_mask"]
            positions[:, r, span] = ex["positions"]
            if len(ex["grid"]):
                chunks.append(ex["pixel_values"])
                grids.append(ex["grid"])
            offset += n
    pixel_values, vision = vision_inputs(
        vision_rows, patches_per_row=max_patches, geometry=geometry, alloc=alloc
    )
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "loss_mask": loss_mask,
        "positions": positions,
        "pixel_values": pixel_values,
        "vision": vision,
    }


# --------------------------------------------------------------------------------------------- skip accounting
class _SkipCounter:
    """Per-reason counts; the first LOG_EACH rows of a reason are logged one by one, then every LOG_EVERY-th."""

    LOG_EACH, LOG_EVERY = 20, 1000

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, reason: str, where: str, rid: str | None, error: str) -> None:
        n = self.counts[reason] = self.counts.get(reason, 0) + 1
        if n <= self.LOG_EACH or n % self.LOG_EVERY == 0:
            log.warning(
                "%s (record %r): skipped, %s: %s [%d %s so far]", where, rid, reason, error, n, reason
            )


def skipped_counts(state_or_iterator: Any) -> dict[str, int]:
    """Bad / oversized examples skipped so far, per reason, summed over worker processes.

    Accepts an iterator of :func:`~r1ov_jax.data.pipeline.sft_dataset` / ``grpo_dataset`` (with or without worker
    processes) or one of their ``get_state()`` values. Counts cover the batches already delivered.
    """
    state = state_or_iterator.get_state() if hasattr(state_or_iterator, "get_state") else state_or_iterator
    total: dict[str, int] = {}

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == SKIP_KEY and isinstance(v, dict):
                    for reason, n in v.items():
                        total[reason] = total.get(reason, 0) + int(n)
                else:
                    walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(state)
    return total


# ------------------------------------------------------------------------------------------------- SFT packing
class _PackedBatchIterator(grain.DatasetIterator):
    """Greedy first-fit packing into one open batch of ``batch_size`` rows.

    Each example goes into the first row with room for its tokens and its vision patches (at most ``max_patches``
    per row: the row's static patch buffer). The first example that fits nowhere closes the batch and opens the next one. State = the
    parent's state *before* that carried-over example (plus the skip counts), so a restored iterator re-reads it
    and rebuilds exactly the same batches; nothing else is ever buffered across ``__next__`` calls.
    """

    def __init__(self, parent: grain.DatasetIterator, spec: dict, alloc):
        super().__init__(parent)
        self._spec = spec
        self._alloc = alloc
        self._pending: dict | None = None
        self._pending_state: Any = None
        self._skips = _SkipCounter()

    def _next_valid(self) -> tuple[dict, Any] | None:
        s = self._spec
        while True:
            state = self._parent.get_state()
            try:
                ex = next(self._parent)
            except StopIteration:
                return None
            if "skip" in ex:
                self._skips.add(ex["skip"], ex["where"], ex.get("id"), ex["error"])
                continue
            n, p = len(ex["input_ids"]), int(ex["pixel_values"].shape[0])
            if n > s["seq_len"]:
                self._skips.add("too_long", ex["where"], ex["id"], f"{n} tokens > seq_len {s['seq_len']}")
                continue
            if p > s["max_patches"]:
                self._skips.add(
                    "too_many_patches",
                    ex["where"],
                    ex["id"],
                    f"{p} vision patches > max_patches {s['max_patches']}",
                )
                continue
            return ex, state

    def __next__(self) -> dict:
        s = self._spec
        rows: list[list[dict]] = [[] for _ in range(s["batch_size"])]
        used = [0] * s["batch_size"]
        patches = [0] * s["batch_size"]
        while True:
            if self._pending is None:
                got = self._next_valid()
                if got is None:
                    break
                self._pending, self._pending_state = got
            ex = self._pending
            n, p = len(ex["input_ids"]), int(ex["pixel_values"].shape[0])
            for r in range(s["batch_size"]):
                room = used[r] + n <= s["seq_len"] and patches[r] + p <= s["max_patches"]
                if room if s["pack"] else used[r] == 0:
                    rows[r].append(ex)
                    used[r] += n
                    patches[r] += p
                    self._pending = None
                    break
            else:
                break  # no row has room: this example opens the next batch
        if not any(used):
            raise StopIteration
        return assemble_packed_batch(
            rows, seq_len=s["seq_len"], pad_id=s["pad_id"], max_patches=s["max_patches"], geometry=s["geometry"],
            alloc=self._alloc,
        )  # fmt: skip

    def get_state(self) -> dict:
        parent = self._pending_state if self._pending is not None else self._parent.get_state()
        return {"parent": copy.deepcopy(parent), SKIP_KEY: dict(self._skips.counts)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._pending, self._pending_state = None, None
        self._skips.counts = {str(k): int(v) for k, v in state.get(SKIP_KEY, {}).items()}


class PackedBatchIterDataset(grain.IterDataset):
    """SFT batches (see :func:`assemble_packed_batch`) from processed examples; ``pack=False`` puts one example
    per row. Oversized examples are skipped and counted ("too_long", "too_many_patches"), never truncated."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        batch_size: int,
        seq_len: int,
        max_patches: int,
        pack: bool,
        pad_id: int,
        geometry: VisionGeometry,
    ):
        super().__init__(parent)
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        unit = geometry.unit
        if max_patches < unit or max_patches % unit:
            raise ValueError(
                f"max_patches (per row) must be a positive multiple of {unit}, got {max_patches}"
            )
        self._spec = {
            "batch_size": int(batch_size), "seq_len": int(seq_len), "max_patches": int(max_patches),
            "pack": bool(pack), "pad_id": int(pad_id), "geometry": geometry,
        }  # fmt: skip
        self._shared_memory = False

    def enable_shared_memory_output(self) -> None:
        """Called by ``mp_prefetch``: build ``pixel_values`` straight in shared memory (no extra copy)."""
        self._shared_memory = True

    def __iter__(self) -> _PackedBatchIterator:
        alloc = None
        if self._shared_memory:
            alloc = lambda shape, dtype: shared_memory_array.SharedMemoryArray(shape, dtype=dtype)
        return _PackedBatchIterator(self._parent.__iter__(), self._spec, alloc)

    def __str__(self) -> str:
        return f"PackedBatchIterDataset({self._spec})"


# --------------------------------------------------------------------------------------------- prompt batches
class _PromptBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, spec: dict):
        super().__init__(parent)
        self._spec = spec
        self._skips = _SkipCounter()

    def __next__(self) -> dict:
        s = self._spec
        batch: list[dict] = []
        while len(batch) < s["batch_size"]:
            try:
                ex = next(self._parent)
            except StopIteration:
                break
            if "skip" in ex:
                self._skips.add(ex["skip"], ex["where"], ex.get("id"), ex["error"])
                continue
            n, p = len(ex["input_ids"]), int(ex["pixel_values"].shape[0])
            if s["max_prompt_len"] is not None and n > s["max_prompt_len"]:
                self._skips.add(
                    "too_long", ex["where"], ex["id"], f"{n} tokens > max_prompt_len {s['max_prompt_len']}"
                )
                continue
            if s["max_patches"] is not None and p > s["max_patches"]:
                self._skips.add(
                    "too_many_patches",
                    ex["where"],
                    ex["id"],
                    f"{p} vision patches > max_prompt_patches {s['max_patches']}",
                )
                continue
            batch.append(ex)
        if not batch:
            raise StopIteration
        return assemble_prompt_batch(
            batch, pad_id=s["pad_id"], image_token_id=s["image_token_id"], max_prompt_len=s["max_prompt_len"],
            max_patches=s["max_patches"], geometry=s["geometry"],
        )  # fmt: skip

    def get_state(self) -> dict:
        return {"parent": copy.deepcopy(self._parent.get_state()), SKIP_KEY: dict(self._skips.counts)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._skips.counts = {str(k): int(v) for k, v in state.get(SKIP_KEY, {}).items()}


class PromptBatchIterDataset(grain.IterDataset):
    """Batches of ``batch_size`` prompts (see :func:`assemble_prompt_batch`); the last one may be smaller when the
    stream ends. With ``max_patches`` set, every prompt may use at most ``max_patches`` patches (others are
    skipped as "too_many_patches"): its row of the static vision buffer."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        batch_size: int,
        pad_id: int,
        image_token_id: int,
        max_prompt_len: int | None,
        max_patches: int | None,
        geometry: VisionGeometry,
    ):
        super().__init__(parent)
        if batch_size < 1:
            raise ValueError(f"prompt batch_size must be positive, got {batch_size}")
        if max_patches is not None and (max_patches < geometry.unit or max_patches % geometry.unit):
            raise ValueError(
                f"max_prompt_patches={max_patches} (per prompt) must be a positive multiple of {geometry.unit}"
            )
        self._spec = {
            "batch_size": int(batch_size), "pad_id": int(pad_id), "image_token_id": int(image_token_id),
            "max_prompt_len": None if max_prompt_len is None else int(max_prompt_len),
            "max_patches": None if max_patches is None else int(max_patches), "geometry": geometry,
        }  # fmt: skip

    def __iter__(self) -> _PromptBatchIterator:
        return _PromptBatchIterator(self._parent.__iter__(), self._spec)

    def __str__(self) -> str:
        return f"PromptBatchIterDataset({self._spec})"
