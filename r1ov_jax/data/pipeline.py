"""Grain input pipelines: ArrayRecord shards of Records → model batches for SFT, GRPO prompts and evaluation.

    ArrayRecordDataSource ─ map_with_index(decode → ImageProcessor → chat template → tokenize + loss mask
      → M-RoPE positions)      [bad rows become skip markers: counted per reason, logged, skipped downstream]
    ─ [process_index::process_count] ─ shuffle(seed) ─ repeat(num_epochs) ─ to_iter_dataset(ReadOptions)
    ─ PackedBatchIterDataset (SFT) | PromptBatchIterDataset (GRPO) ─ mp_prefetch(worker_count)

Everything before ``to_iter_dataset`` is a lazy, index-addressed ``MapDataset``, so the order is a pure function
of (seed, epoch, process) and each shuffle epoch is reshuffled (Grain folds the epoch into the seed). The batchers
keep their state tiny (the parent's state and skip counts), so ``iter(ds).get_state()`` is a small
JSON-serializable dict and ``set_state`` resumes mid-epoch to the identical next batch, with or without worker
processes (the worker count is part of the order: restore with the same ``worker_count``).

Batch formats (the SFT trainer and the GRPO learner consume them as they are):

* SFT (:func:`sft_dataset`): ``input_ids int32[B, S]``, ``segment_ids int32[B, S]`` (1..k per row for packed
  examples, 0 = padding), ``loss_mask bool[B, S]`` (assistant content + its ``<|im_end|>``), ``positions
  int32[3, B, S]`` (each example's own ``get_rope_index`` placed at its offset, 0 on padding), ``pixel_values
  float32[B, max_patches, C*T*P*P]`` and ``vision`` (per row: ``vision_geometry`` of the row's images in token
  order, padded by ``pad_vision``). The model scatters row b's i-th merged feature into row b's i-th
  ``<|image_pad|>``: images travel with their row, so sharding the batch shards the vision work.
* prompts (:func:`grpo_dataset`, :func:`prompt_batches`): ``{"inputs": {input_ids, segment_ids, positions,
  pixel_values, vision}, "answers", "choices", "ids"}``, prompts left-padded, ending in
  ``<|im_start|>assistant\\n``; no answer in the prompt.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from r1ov_jax.data.packing import (
    PackedBatchIterDataset,
    PromptBatchIterDataset,
    skipped_counts,
)
from r1ov_jax.data.record import Record, shard_paths
from r1ov_jax.processing.prompts import (
    FORMAT_SUFFIX,
    SYSTEM_PROMPT,
    PromptFormat,
    prompt_messages,
    tokenize_prompt,
)
from r1ov_jax.processing.image import ImageProcessor
from r1ov_jax.processing.positions import VisionGeometry, get_rope_index
from r1ov_jax.processing.tokenizer import Tokenizer
from r1ov_jax.errors import InvalidInputError, MissingInputError

log = logging.getLogger(__name__)

__all__ = [
    "default_pipeline_config",
    "grpo_dataset",
    "prompt_batches",
    "prompt_format",
    "record_messages",
    "sft_dataset",
    "skipped_counts",
]


def default_pipeline_config() -> ml_collections.ConfigDict:
    """Pipeline settings (the ``data`` block of the training configs).

    seq_len / batch_size: SFT rows and rows per batch (global). max_patches: static number of vision patches per
    SFT row (its images concatenated, then padded; a multiple of merge_size**2). min_pixels / max_pixels: image
    resize bounds (448x448 = 200704 keeps one image at 1024 patches). The patch, merge and window sizes are the
    model's (``VisionGeometry``), never set here. pack: first-fit packing (False: one example per
    row). shuffle / seed / num_epochs (None = repeat forever). worker_count: Grain worker processes (0 = in this
    process, with read_threads threads); worker_buffer_size: batches each worker prepares ahead.
    system_prompt / rl_suffix: chat text (sft_suffix: append rl_suffix to SFT prompts too). prompt_batch_size / max_prompt_len (None = longest in the batch) /
    max_prompt_patches (per prompt; None = the largest prompt of the batch) shape GRPO prompt batches.
    """
    return ml_collections.ConfigDict(
        {
            "seq_len": 1024,
            "batch_size": 8,
            "min_pixels": 3136,
            "max_pixels": 448 * 448,
            "max_patches": 1024,
            "pack": True,
            "shuffle": True,
            "seed": 0,
            "num_epochs": None,
            "worker_count": 0,
            "worker_buffer_size": 2,
            "read_threads": 2,
            "read_buffer_size": 16,
            "system_prompt": SYSTEM_PROMPT,
            "rl_suffix": FORMAT_SUFFIX,
            "sft_suffix": False,
            "prompt_batch_size": 8,
            "max_prompt_len": None,
            "max_prompt_patches": None,
        }
    )


# -------------------------------------------------------------------------------------------- record → example
def record_messages(
    rec: Record, *, rl_suffix: str | None = None, with_answer: bool, system: str | None = SYSTEM_PROMPT
) -> list[dict]:
    """Chat messages of a record (``processing.prompts.prompt_messages``): [system], user = its images then the
    question (+ lettered choices, + "\\n" + rl_suffix when given); assistant = ``rec.trace`` when ``with_answer``."""
    fmt = PromptFormat(system=system, suffix=rl_suffix)
    answer = rec.trace if with_answer else None
    return prompt_messages(len(rec.images), rec.question, rec.choices, fmt=fmt, answer=answer)


def prompt_format(cfg: ml_collections.ConfigDict, mode: str) -> PromptFormat:
    """The prompt format of the pipeline config for "sft" or "prompt" (GRPO/eval) examples."""
    suffix = cfg.rl_suffix if mode == "prompt" or cfg.get("sft_suffix", False) else None
    return PromptFormat(system=cfg.system_prompt, suffix=suffix)


def image_processor(
    cfg: ml_collections.ConfigDict, geometry: VisionGeometry, num_threads: int = 1
) -> ImageProcessor:
    """The image processor of a pipeline config and the model's geometry (also written into run dirs)."""
    return ImageProcessor(
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, patch_size=geometry.patch_size,
        temporal_patch_size=geometry.temporal_patch_size, merge_size=geometry.merge_size, num_threads=num_threads,
    )  # fmt: skip


class _Locator:
    """Global record index → "file:row" for error messages."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int]):
        self.paths = [os.path.basename(p) for p in paths]
        self.ends = list(np.cumsum(counts))

    def __call__(self, index: int) -> str:
        k = bisect.bisect_right(self.ends, index)
        start = self.ends[k - 1] if k else 0
        return f"{self.paths[k]}:{index - start}" if k < len(self.paths) else f"record {index}"


class _Example:
    """Picklable map function: serialized Record (or a Record) → example dict or skip marker.

    mode "sft": system + user(images, question) + assistant(trace) with the loss mask and per-example positions.
    mode "prompt": system + user(images, question, rl_suffix) + generation prompt.
    """

    def __init__(self, tokenizer: Tokenizer, cfg, mode: str, geometry: VisionGeometry, locate=None):
        if mode not in ("sft", "prompt"):
            raise InvalidInputError(f"mode must be 'sft' or 'prompt', got {mode!r}")
        self.tokenizer = tokenizer
        self.mode = mode
        self.locate = locate
        # One thread: parallelism comes from Grain's read threads / worker processes.
        self.image_processor = image_processor(cfg, geometry)
        # sft_suffix: SFT prompts end with the same instruction as GRPO/eval prompts (one prompt format end to end)
        self.fmt = prompt_format(cfg, mode)
        self.merge_size = geometry.merge_size
        self.patch_dim = geometry.patch_dim
        self.image_token_id = tokenizer.image_pad_id

    def __call__(self, index: int, item: bytes | Record) -> dict:
        where = self.locate(index) if self.locate is not None else f"record {index}"

        def skip(reason, error, rid=None):
            return {"skip": reason, "error": error, "id": rid, "where": where}

        try:
            rec = item if isinstance(item, Record) else Record.from_bytes(item)
        except ValueError as e:  # RecordError is a ValueError
            return skip("nan_answer" if "NaN" in str(e) else "bad_record", str(e))
        except Exception as e:  # noqa: BLE001 - whatever a damaged record raises, it costs that record only
            return skip("bad_record", f"{type(e).__name__}: {e}")
        if self.mode == "sft" and not (rec.trace or "").strip():
            return skip("no_trace", "SFT needs an assistant trace", rec.id)
        grid, pixels = np.zeros((0, 3), np.int64), np.zeros((0, self.patch_dim), np.float32)
        if rec.images:
            try:
                out = self.image_processor(list(rec.images))
            # PIL raises many exception types for corrupt data; the row is skipped, not the run.
            except Exception as e:  # noqa: BLE001
                return skip("bad_image", f"{type(e).__name__}: {e}", rec.id)
            grid, pixels = out["image_grid_thw"], out["pixel_values"]
        try:
            tok = tokenize_prompt(
                self.tokenizer, rec.question, rec.choices, image_grid_thw=grid if len(grid) else None,
                merge_size=self.merge_size, fmt=self.fmt, answer=rec.trace if self.mode == "sft" else None,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - ValueError/KeyError, RecursionError, ...: the row, not the run
            return skip("bad_text", f"{type(e).__name__}: {e}", rec.id)
        ex = {
            "input_ids": tok["input_ids"],
            "pixel_values": pixels,
            "grid": grid,
            "id": rec.id,
            "where": where,
        }
        if self.mode == "sft":
            ids = tok["input_ids"]
            positions, _ = get_rope_index(
                ids[None],
                grid if len(grid) else None,
                image_token_id=self.image_token_id,
                merge_size=self.merge_size,
            )
            ex.update(loss_mask=tok["loss_mask"], positions=positions[:, 0])
        else:
            ex.update(answer=rec.answer, choices=list(rec.choices) if rec.choices else None)
        return ex


# ------------------------------------------------------------------------------------------------- datasets
def _resolve_paths(paths: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = os.fspath(paths)
        paths = shard_paths(paths) if os.path.isdir(paths) else [paths]
        if not paths:
            raise MissingInputError(
                "no ArrayRecord shards (synth.array_record-*-of-*) in the given directory"
            )
    paths = [os.fspath(p) for p in paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingInputError(f"ArrayRecord file(s) not found: {missing}")
    if not paths:
        raise InvalidInputError("no ArrayRecord paths given")
    return paths


def _record_source(paths, tokenizer, cfg, mode, geometry, process_index, process_count) -> grain.IterDataset:
    """Shared front of both datasets, up to the iterator of processed examples (or skip markers)."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not 0 <= process_index < process_count:
        raise InvalidInputError(f"process_index must be in [0, {process_count}), got {process_index}")
    if cfg.num_epochs is not None and cfg.num_epochs < 1:
        raise InvalidInputError(f"num_epochs must be None (forever) or >= 1, got {cfg.num_epochs}")
    paths = _resolve_paths(paths)
    counts = []
    for p in paths:
        reader = ArrayRecordReader(p)
        counts.append(reader.num_records())
        reader.close()
    if sum(counts) < process_count:
        raise InvalidInputError(
            f"{sum(counts)} records in {paths} cannot be split over {process_count} processes"
        )
    source = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
    # Map on the source so the index is the global record index (for "file:row" in error messages).
    ds = source.map_with_index(_Example(tokenizer, cfg, mode, geometry, _Locator(paths, counts)))
    ds = ds[process_index::process_count]  # disjoint per-process shards, each reshuffled every epoch
    if cfg.shuffle:
        ds = ds.shuffle(seed=int(cfg.seed))
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=int(cfg.read_threads), prefetch_buffer_size=int(cfg.read_buffer_size))
    )
    # With worker processes only big arrays (pixel_values) travel through shared memory; the small ones are
    # cheaper to pickle than to give one shared-memory segment each.
    return grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(min_shm_size=1 << 20)
    )


def _with_workers(ds: grain.IterDataset, cfg) -> grain.IterDataset:
    if cfg.worker_count <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():
        # grain <= 0.2.18 reads an absl flag when starting workers and raises UnparsedFlagAccessError in programs
        # that do not run under absl.app (google/grain#1355, fixed upstream by #1362). Use the flag defaults.
        flags.FLAGS.mark_as_parsed()
    # Whole batches are built in the workers (packing included); Grain interleaves the workers' batches in a fixed
    # order and checkpoints each worker's state.
    return ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=int(cfg.worker_count), per_worker_buffer_size=int(cfg.worker_buffer_size)
        )
    )


def sft_dataset(
    paths: str | Sequence[str],
    tokenizer: Tokenizer,
    cfg: ml_collections.ConfigDict,
    *,
    geometry: VisionGeometry,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """SFT batches (format in the module docstring) from ArrayRecord shards of Records.

    Args:
      paths: a directory written by ``synthesize`` / the TFDS builder, one shard path, or a list of paths.
      tokenizer: gives the ids (and ``<|image_pad|>`` / pad ids).
      cfg: :func:`default_pipeline_config` (or a config with the same fields).
      geometry: the model's vision geometry (``model.cfg.vision.geometry()``).
      process_index, process_count: this host's disjoint share of the records (``jax.process_index()``/``count``).
    Returns:
      A Grain ``IterDataset``; ``it = iter(ds)`` yields numpy batch dicts and has ``get_state()``/``set_state()``.
    """
    ds = _record_source(paths, tokenizer, cfg, "sft", geometry, process_index, process_count)
    ds = PackedBatchIterDataset(
        ds, batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_patches=cfg.max_patches, pack=cfg.pack,
        pad_id=tokenizer.pad_id, geometry=geometry,
    )  # fmt: skip
    return _with_workers(ds, cfg)


def _prompt_batcher(ds, tokenizer, cfg, batch_size, geometry):
    return PromptBatchIterDataset(
        ds, batch_size=batch_size, pad_id=tokenizer.pad_id, image_token_id=tokenizer.image_pad_id,
        max_prompt_len=cfg.max_prompt_len, max_patches=cfg.max_prompt_patches, geometry=geometry,
    )  # fmt: skip


def grpo_dataset(
    paths: str | Sequence[str],
    tokenizer: Tokenizer,
    cfg: ml_collections.ConfigDict,
    *,
    geometry: VisionGeometry,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """GRPO prompt batches of ``cfg.prompt_batch_size`` prompts (format in the module docstring).

    Prompt = system + user(images, question, choices, "\\n" + rl_suffix) + ``<|im_start|>assistant\\n``; gold
    answers and choices travel beside it for the rewards. Checkpointable like :func:`sft_dataset`.
    """
    ds = _record_source(paths, tokenizer, cfg, "prompt", geometry, process_index, process_count)
    return _with_workers(_prompt_batcher(ds, tokenizer, cfg, int(cfg.prompt_batch_size), geometry), cfg)


def prompt_batches(
    records: Iterable[Record],
    tokenizer: Tokenizer,
    cfg: ml_collections.ConfigDict,
    batch_size: int,
    *,
    geometry: VisionGeometry,
) -> Iterator[dict]:
    """Prompt batches (the GRPO format) of a finite list of Records, in order, no shuffle (for evaluation).

    Bad records are counted, logged and skipped; ``ids`` says which records each batch holds. The last batch may
    hold fewer than ``batch_size`` prompts.
    """
    records = list(records)
    ds = grain.MapDataset.source(records).map_with_index(_Example(tokenizer, cfg, "prompt", geometry))
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=int(cfg.read_threads), prefetch_buffer_size=int(cfg.read_buffer_size))
    )
    it = iter(_prompt_batcher(ds, tokenizer, cfg, int(batch_size), geometry))
    yield from it
    counts = skipped_counts(it)
    if counts:
        log.warning(
            "prompt_batches: skipped %d of %d records: %s", sum(counts.values()), len(records), counts
        )
