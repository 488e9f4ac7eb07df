"""TFDS builder over generated and imported data, writing ArrayRecord files (no TensorFlow needed).

    builder = R1ovData(data_dir=DIR, sources={"train": ["synth_out/"], "test": ["bench.tsv"]})
    builder.download_and_prepare(file_format="array_record")
    ds = tfds.data_source("r1ov_data", data_dir=DIR)["train"]           # or builder.as_data_source()
    rec = example_to_record(ds[0])

Sources per split: a directory or ArrayRecord shard written by ``synth.synthesize``, an R1-Onevision ``.parquet``
file, or a Bench ``.tsv`` file. Each example keeps the whole Record serialized (``record``; images stay encoded
bytes) plus a few plain fields for filtering. The files are tf.train.Example protos in ArrayRecord: grain's
``ArrayRecordDataSource`` reads them directly and ``decode_raw`` turns one into a Record.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from r1ov_jax.data import importers
from r1ov_jax.data.record import Record
from r1ov_jax.data.record import read_records, shard_paths
from r1ov_jax.errors import InvalidInputError


def iter_source(path: str):
    """Records of one source path (synth output dir/shard, .parquet, .tsv), with a report for imports."""
    if os.path.isdir(path):
        if not shard_paths(path):
            raise InvalidInputError(f"{path}: directory has no synth shards")
        yield from read_records(path)
    elif path.endswith(".parquet"):
        yield from importers.iter_r1onevision_parquet(path)
    elif path.endswith(".tsv"):
        yield from importers.iter_bench_tsv(path)
    elif ".array_record" in os.path.basename(path):
        yield from read_records([path])
    else:
        raise InvalidInputError(
            f"{path}: unknown source (expected a synth directory/shard, .parquet or .tsv)"
        )


class R1ovData(tfds.core.GeneratorBasedBuilder):
    """Formalized image–question–trace records (generated and/or imported)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Serialized r1ov Records with type/level/category fields."}

    def __init__(self, *, sources: dict[str, Sequence[str]] | None = None, **kwargs):
        # `sources` is only needed to prepare; reading a prepared dataset works without it.
        self._sources = {k: list(v) for k, v in (sources or {}).items()}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "type": tfds.features.Text(),
                    "level": tfds.features.Text(),
                    "category": tfds.features.Text(),
                    "record": tfds.features.Tensor(shape=(), dtype=np.object_),  # Record.to_bytes()
                }
            ),
            homepage="https://arxiv.org/abs/2503.10615",
        )

    def _split_generators(self, dl_manager):
        if not self._sources:
            raise InvalidInputError("R1ovData needs sources={'split': [paths]} to prepare")
        return {split: self._generate_examples(paths) for split, paths in self._sources.items()}

    def _generate_examples(self, paths):
        seen = set()
        for path in paths:
            for rec in iter_source(path):
                key = rec.id if rec.id not in seen else f"{rec.id}@{path}"
                seen.add(key)
                yield (
                    key,
                    {
                        "id": rec.id,
                        "type": str(rec.meta.get("type", "")),
                        "level": str(rec.meta.get("level", "")),
                        "category": str(rec.meta.get("category", "")),
                        "record": rec.to_bytes(),
                    },
                )


def build(data_dir: str, sources: dict[str, Sequence[str]]) -> R1ovData:
    """Prepare the dataset under data_dir (ArrayRecord format) and return the builder."""
    b = R1ovData(data_dir=data_dir, sources=sources, file_format="array_record")
    b.download_and_prepare()
    return b


def example_to_record(example: dict) -> Record:
    """A decoded TFDS example (from ``tfds.data_source``) → Record."""
    return Record.from_bytes(example["record"])


def decode_raw(builder: tfds.core.DatasetBuilder, raw: bytes) -> Record:
    """One raw ArrayRecord entry (e.g. from grain's ArrayRecordDataSource over the builder's files) → Record."""
    return example_to_record(builder.info.features.deserialize_example_np(raw))


def array_record_files(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
    """The split's ArrayRecord file paths, for grain.sources.ArrayRecordDataSource."""
    info = builder.info.splits[split]
    return [os.fspath(p) for p in info.filepaths]
