"""Grain pipeline: loss mask, per-segment positions, image order, packing isolation through the model, budgets,
bad rows, exact resume (shuffle, epoch boundary, worker processes), GRPO / eval prompt batches.

Expected values are recomputed here from the Records with the processing functions directly
(ImageProcessor, tokenize_conversation, get_rope_index, vision_geometry), never read back from the pipeline.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from r1ov_jax.data import pipeline
from r1ov_jax.data.pipeline import default_pipeline_config, record_messages, skipped_counts
from r1ov_jax.data.record import Record
from r1ov_jax.data.record import read_records, shard_paths
from r1ov_jax.data.synth import synthesize
from r1ov_jax.processing.chat import tokenize_conversation
from r1ov_jax.processing.image import ImageProcessor
from r1ov_jax.processing.positions import VisionGeometry, get_rope_index, pad_vision, vision_geometry
from r1ov_jax.processing.tokenizer import make_test_tokenizer

NUM = 24
ASSISTANT = "<|im_start|>assistant\n"
GEO = VisionGeometry(window_size=56)  # the model's vision geometry (model.cfg.vision.geometry())


def sft_dataset(*args, **kw):
    return pipeline.sft_dataset(*args, geometry=GEO, **kw)


def grpo_dataset(*args, **kw):
    return pipeline.grpo_dataset(*args, geometry=GEO, **kw)


def prompt_batches(*args, **kw):
    return pipeline.prompt_batches(*args, geometry=GEO, **kw)


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("synth"))
    rep = synthesize(d, NUM, types=["table", "scene", "chart"], progress=False, shard_size=10, seed=3)
    assert rep["num_written"] == NUM and len(shard_paths(d)) == 3
    return d


@pytest.fixture(scope="module")
def records(data_dir):
    return list(read_records(data_dir))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_test_tokenizer(tmp_path_factory.mktemp("tok"))


def small_cfg(**kw):
    cfg = default_pipeline_config()
    cfg.update(
        min_pixels=28 * 28, max_pixels=140 * 140, seq_len=512, batch_size=2, max_patches=256,
        read_threads=1, read_buffer_size=4, prompt_batch_size=3,
    )  # fmt: skip
    cfg.update(kw)
    return cfg


def processor(cfg):
    return ImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, num_threads=1)


def expected_example(rec, tok, cfg):
    """What one record should become, computed without the pipeline."""
    vis = processor(cfg)(rec.images)
    grid = vis["image_grid_thw"]
    messages = [
        {"role": "user", "content": [{"type": "image"}] * len(rec.images) + [{"type": "text", "text": rec.prompt_text()}]},
        {"role": "assistant", "content": rec.trace},
    ]  # fmt: skip
    t = tokenize_conversation(messages, tok, grid, default_system="You are a helpful assistant.")
    pos, _ = get_rope_index(t["input_ids"][None], grid, image_token_id=tok.image_pad_id)
    return {**t, "positions": pos[:, 0], "pixel_values": vis["pixel_values"], "grid": grid, "id": rec.id}


@pytest.fixture(scope="module")
def expected(records, tok):
    cfg = small_cfg()
    return {r.id: expected_example(r, tok, cfg) for r in records}


def segments(batch):
    """(row, segment id, token slice) of every packed example, row-major."""
    out = []
    for r, row in enumerate(batch["segment_ids"]):
        for k in range(1, int(row.max()) + 1):
            idx = np.flatnonzero(row == k)
            assert idx.size and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "segments are contiguous"
            out.append((r, k, slice(int(idx[0]), int(idx[-1]) + 1)))
    return out


def match(batch, expected):
    """The expected example of each segment, found by its token ids (ids identify records here)."""
    by_ids = {tuple(e["input_ids"].tolist()): e for e in expected.values()}
    assert len(by_ids) == len(expected)
    return [(r, k, sl, by_ids[tuple(batch["input_ids"][r, sl].tolist())]) for r, k, sl in segments(batch)]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            if key == "vision":
                for g in x[key]:
                    np.testing.assert_array_equal(x[key][g], y[key][g], err_msg=g)
            else:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def json_state(it):
    return json.loads(json.dumps(it.get_state()))  # the trainers save it as JSON


# ------------------------------------------------------------------------------------------------- SFT format
def test_sft_batches_mask_positions_images(data_dir, tok, expected, records):
    cfg = small_cfg(shuffle=False, num_epochs=1)
    batches = list(iter(sft_dataset(data_dir, tok, cfg)))
    seen = []
    for batch in batches:
        b, s = cfg.batch_size, cfg.seq_len
        assert batch["input_ids"].shape == (b, s) and batch["input_ids"].dtype == np.int32
        assert batch["segment_ids"].dtype == np.int32 and batch["loss_mask"].dtype == np.bool_
        assert batch["positions"].shape == (3, b, s) and batch["positions"].dtype == np.int32
        assert (
            batch["pixel_values"].shape == (b, cfg.max_patches, 1176)
            and batch["pixel_values"].dtype == np.float32
        )
        pad = batch["segment_ids"] == 0
        assert not batch["loss_mask"][pad].any() and not batch["positions"][:, pad].any()
        assert (batch["input_ids"][pad] == tok.pad_id).all()
        chunks, grids = [[] for _ in range(b)], [[] for _ in range(b)]
        for r, _, sl, e in match(batch, expected):
            seen.append(e["id"])
            # loss mask = exactly the assistant tokens: the trace and its <|im_end|>
            np.testing.assert_array_equal(batch["loss_mask"][r, sl], e["loss_mask"])
            assert (
                tok.decode(batch["input_ids"][r, sl][e["loss_mask"]])
                == next(x.trace for x in records if x.id == e["id"]) + "<|im_end|>"
            )
            # positions of a segment = get_rope_index of the example alone, restarting at 0
            np.testing.assert_array_equal(batch["positions"][:, r, sl], e["positions"])
            assert batch["positions"][:, r, sl.start].tolist() == [0, 0, 0]
            chunks[r].append(e["pixel_values"])
            grids[r].append(e["grid"])
        # each row's images travel with the row, in the order of its <|image_pad|> runs, then zero padding
        for r in range(b):
            if not chunks[r]:
                assert not batch["pixel_values"][r].any() and not batch["vision"]["full_segments"][r].any()
                continue
            pv = np.concatenate(chunks[r])
            n = len(pv)
            np.testing.assert_array_equal(batch["pixel_values"][r, :n], pv)
            assert not batch["pixel_values"][r, n:].any()
            assert (batch["input_ids"][r] == tok.image_pad_id).sum() == n // 4
            geo = vision_geometry(
                np.concatenate(grids[r]), merge_size=2, window_size=GEO.window_size, patch_size=14
            )
            _, want = pad_vision(pv, geo, cfg.max_patches)
            for key, value in want.items():
                np.testing.assert_array_equal(batch["vision"][key][r], value, err_msg=key)
    assert sorted(seen) == sorted(r.id for r in records), "one epoch = every record exactly once"
    assert any(batch["segment_ids"].max() >= 2 for batch in batches), "some rows are packed"
    assert len(batches) < NUM / cfg.batch_size, "packing uses fewer rows than one example per row"


def test_pack_false_one_example_per_row(data_dir, tok, expected):
    cfg = small_cfg(shuffle=False, num_epochs=1, pack=False, batch_size=3)
    batches = list(iter(sft_dataset(data_dir, tok, cfg)))
    assert all(b["segment_ids"].max() <= 1 for b in batches)
    ids = [e["id"] for b in batches for *_, e in match(b, expected)]
    assert sorted(ids) == sorted(expected)
    # the patch budget never lets more images into a row than fit
    assert all(((b["input_ids"] == tok.image_pad_id).sum(1) * 4 <= cfg.max_patches).all() for b in batches)


def test_budgets_skip_and_count(data_dir, tok, expected):
    lengths = {i: len(e["input_ids"]) for i, e in expected.items()}
    patches = {i: len(e["pixel_values"]) for i, e in expected.items()}
    seq_len = int(np.median(list(lengths.values())))
    max_patches = sorted(set(patches.values()))[-2] // 4 * 4
    too_long = {i for i in expected if lengths[i] > seq_len}
    too_many = {i for i in expected if i not in too_long and patches[i] > max_patches}
    assert too_long and too_many, "the fixture must exercise both budgets"
    cfg = small_cfg(shuffle=False, num_epochs=1, seq_len=seq_len, max_patches=max_patches)
    it = iter(sft_dataset(data_dir, tok, cfg))
    batches = list(it)
    ids = [e["id"] for b in batches for *_, e in match(b, expected)]
    assert sorted(ids) == sorted(set(expected) - too_long - too_many)
    assert skipped_counts(it) == {"too_long": len(too_long), "too_many_patches": len(too_many)}
    for b in batches:
        assert ((b["input_ids"] == tok.image_pad_id).sum(1) * 4 <= max_patches).all()
        assert all((row > 0).sum() <= seq_len for row in b["segment_ids"])


def test_packed_segments_isolated_through_model(data_dir, tok, expected):
    """Logits of each packed segment equal those of its example run alone (no attention across segments)."""
    import jax
    from flax import nnx

    from r1ov_jax.models.qwen2_5_vl import Qwen25VL
    from r1ov_jax.models.qwen2_5_vl.config import tiny

    model = Qwen25VL(
        tiny(vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
             vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    forward = nnx.jit(lambda m, x: m.forward(**x))
    cfg = small_cfg(shuffle=False, num_epochs=1)
    batch = next(b for b in sft_dataset(data_dir, tok, cfg) if b["segment_ids"].max() >= 2)  # a packed row
    pieces = match(batch, expected)
    inputs = {k: batch[k] for k in ("input_ids", "segment_ids", "positions", "pixel_values", "vision")}
    logits = np.asarray(forward(model, jax.tree.map(np.asarray, inputs)))
    assert np.isfinite(logits).all()
    for r, _, sl, e in pieces:
        alone = model.prepare_inputs(e["input_ids"][None], None, e["pixel_values"], e["grid"])
        ref = np.asarray(forward(model, alone))[0]
        np.testing.assert_allclose(logits[r, sl], ref, atol=1e-4, rtol=0)
    # Control: with one segment id per row a later segment attends to the earlier one and its logits move.
    merged = np.asarray(
        forward(model, {**inputs, "segment_ids": (batch["segment_ids"] > 0).astype(np.int32)})
    )
    r, _, sl, e = next(p for p in pieces if p[1] == 2)
    ref = np.asarray(
        forward(model, model.prepare_inputs(e["input_ids"][None], None, e["pixel_values"], e["grid"]))
    )
    assert np.abs(merged[r, sl] - ref[0]).max() > 1e-3


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_mid_epoch_and_across_epochs(data_dir, tok, shuffle):
    cfg = small_cfg(shuffle=shuffle, num_epochs=None)
    it = iter(sft_dataset(data_dir, tok, cfg))
    states, batches = [], []
    for _ in range(16):  # ~2 epochs of 24 records at 2-3 records per batch
        states.append(json_state(it))
        batches.append(next(it))
    consumed = [s["parent"]["next_index"] for s in states]
    assert max(consumed) > NUM, "the run must cross an epoch boundary"
    boundary = next(i for i, c in enumerate(consumed) if c > NUM) - 1
    for k in sorted({3, boundary - 1, boundary}):
        fresh = iter(sft_dataset(data_dir, tok, cfg))
        fresh.set_state(states[k])
        assert_same_batches(take(fresh, 3), batches[k : k + 3])
    if shuffle:  # each epoch is reshuffled
        first = [tuple(b["input_ids"][0, :64]) for b in batches[:2]]
        unshuffled = iter(sft_dataset(data_dir, tok, small_cfg(shuffle=False)))
        assert first != [tuple(b["input_ids"][0, :64]) for b in take(unshuffled, 2)]


def test_worker_processes_same_examples_and_resume(data_dir, tok, expected):
    cfg0 = small_cfg(shuffle=False, num_epochs=1)
    ids0 = sorted(e["id"] for b in sft_dataset(data_dir, tok, cfg0) for *_, e in match(b, expected))
    cfg = small_cfg(shuffle=True, num_epochs=None, worker_count=2, worker_buffer_size=1)
    it = iter(sft_dataset(data_dir, tok, cfg))
    try:
        take(it, 2)
        state = json_state(it)
        after = take(it, 3)
    finally:
        it.close()
    fresh = iter(sft_dataset(data_dir, tok, cfg))
    try:
        fresh.set_state(state)
        assert_same_batches(take(fresh, 3), after)
    finally:
        fresh.close()
    one_epoch = iter(sft_dataset(data_dir, tok, small_cfg(shuffle=False, num_epochs=1, worker_count=2)))
    try:
        ids2 = sorted(e["id"] for b in one_epoch for *_, e in match(b, expected))
    finally:
        one_epoch.close()
    assert ids2 == ids0 == sorted(expected)


def test_process_sharding_is_disjoint(data_dir, tok, expected):
    cfg = small_cfg(num_epochs=1)
    shares = [
        {e["id"] for b in sft_dataset(data_dir, tok, cfg, process_index=p, process_count=2) for *_, e in match(b, expected)}
        for p in range(2)
    ]  # fmt: skip
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(expected)
    with pytest.raises(ValueError, match="process_index"):
        sft_dataset(data_dir, tok, cfg, process_index=2, process_count=2)


# ------------------------------------------------------------------------------------------------- bad rows
def test_bad_records_counted_and_skipped(tmp_path, records, tok, expected, caplog):
    good = records[:5]
    bad_image = Record(
        **{**records[5].to_dict(), "id": "bad-image", "images": [b"\x89PNG\r\n\x1a\n" + b"\0" * 40]}
    )
    no_trace = Record(**{**records[6].to_dict(), "id": "no-trace", "trace": None})
    path = str(tmp_path / "mixed.array_record")
    w = ArrayRecordWriter(path, "group_size:1")
    rows = [good[0].to_bytes(), b"definitely not a record", good[1].to_bytes(), bad_image.to_bytes()]
    rows += [no_trace.to_bytes(), *(r.to_bytes() for r in good[2:])]
    for row in rows:
        w.write(row)
    w.close()
    it = iter(sft_dataset([path], tok, small_cfg(shuffle=False, num_epochs=1)))
    with caplog.at_level(logging.WARNING, logger="r1ov_jax.data.packing"):
        ids = [e["id"] for b in it for *_, e in match(b, expected)]
    assert sorted(ids) == sorted(r.id for r in good)
    assert skipped_counts(it) == {"bad_record": 1, "bad_image": 1, "no_trace": 1}
    text = caplog.text
    assert "mixed.array_record:1" in text and "bad_record" in text  # file:row of the undecodable row
    assert "mixed.array_record:3" in text and "'bad-image'" in text and "bad_image" in text


def test_config_and_path_errors(tmp_path, data_dir, tok):
    with pytest.raises(ValueError, match="max_patches"):
        sft_dataset(data_dir, tok, small_cfg(max_patches=130))
    with pytest.raises(FileNotFoundError, match="nope"):
        sft_dataset([str(tmp_path / "nope")], tok, small_cfg())
    with pytest.raises(FileNotFoundError, match="no ArrayRecord shards"):
        sft_dataset(str(tmp_path), tok, small_cfg())


# ------------------------------------------------------------------------------------------------- prompts
def check_prompt_batch(batch, recs, tok, cfg, length=None):
    inputs = batch["inputs"]
    ids, seg = inputs["input_ids"], inputs["segment_ids"]
    b = len(recs)
    assert ids.shape[0] == b and ids.dtype == np.int32 and seg.dtype == np.int32
    if length is not None:
        assert ids.shape[1] == length
    assert batch["ids"] == [r.id for r in recs]
    assert batch["answers"] == [r.answer for r in recs]
    assert batch["choices"] == [r.choices for r in recs]
    chunks, grids = [], []
    for i, rec in enumerate(recs):
        valid = seg[i] == 1
        first = int(np.argmax(valid))
        assert valid[first:].all() and not valid[:first].any(), "left-padded"
        assert (ids[i, :first] == tok.pad_id).all()
        text = tok.decode(ids[i, first:])
        assert text.endswith(ASSISTANT) and text.count(ASSISTANT) == 1
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        assert f"{rec.prompt_text()}\n{cfg.rl_suffix}<|im_end|>" in text
        assert rec.trace not in text and "<think>" not in text.replace("<think> </think>", "")
        vis = processor(cfg)(rec.images)
        want = tokenize_conversation(
            record_messages(rec, rl_suffix=cfg.rl_suffix, with_answer=False), tok, vis["image_grid_thw"],
            add_generation_prompt=True,
        )["input_ids"]  # fmt: skip
        np.testing.assert_array_equal(ids[i, first:], want)
        chunks.append(vis["pixel_values"])
        grids.append(vis["image_grid_thw"])
    grid = np.concatenate(grids)
    pos, _ = get_rope_index(ids, grid, seg, image_token_id=tok.image_pad_id)
    np.testing.assert_array_equal(inputs["positions"], pos)
    # one row of patches per prompt, padded to the per-prompt budget (or the largest prompt of the batch)
    width = cfg.max_prompt_patches or max(-(-len(c) // 4) * 4 for c in chunks)
    assert inputs["pixel_values"].shape == (b, width, 1176)
    for i, (pv, g) in enumerate(zip(chunks, grids)):
        np.testing.assert_array_equal(inputs["pixel_values"][i, : len(pv)], pv)
        assert not inputs["pixel_values"][i, len(pv) :].any()
        _, geo = pad_vision(
            pv, vision_geometry(g, merge_size=2, window_size=GEO.window_size, patch_size=14), width
        )
        for key, value in geo.items():
            np.testing.assert_array_equal(inputs["vision"][key][i], value, err_msg=key)


def test_grpo_prompts(data_dir, tok, records):
    by_id = {r.id: r for r in records}
    cfg = small_cfg(shuffle=True, num_epochs=None, max_prompt_len=160, max_prompt_patches=88)
    it = iter(grpo_dataset(data_dir, tok, cfg))
    batches, states = [], []
    for _ in range(10):  # crosses the epoch boundary (24 records, 3 per batch, some skipped)
        states.append(json_state(it))
        batches.append(next(it))
    for batch in batches:
        check_prompt_batch(batch, [by_id[i] for i in batch["ids"]], tok, cfg, length=160)
    skipped = skipped_counts(it)
    assert skipped.get("too_long") and skipped.get("too_many_patches"), skipped
    delivered = sum(len(b["ids"]) for b in batches)
    assert sum(skipped.values()) + delivered == json_state(it)["parent"]["next_index"]
    fresh = iter(grpo_dataset(data_dir, tok, cfg))
    fresh.set_state(states[6])
    for a, b in zip(take(fresh, 4), batches[6:]):
        assert a["ids"] == b["ids"] and a["answers"] == b["answers"]
        assert_same_batches([a["inputs"]], [b["inputs"]])


def test_prompt_batches_in_order(records, tok):
    cfg = small_cfg()
    bad = Record(**{**records[2].to_dict(), "id": "broken", "images": [b"\x89PNG\r\n\x1a\n" + b"\1" * 30]})
    recs = records[:2] + [bad] + records[2:8]
    out = list(prompt_batches(recs, tok, cfg, batch_size=3))
    want = [r.id for r in records[:8]]
    assert [b["ids"] for b in out] == [want[0:3], want[3:6], want[6:8]]
    for b in out:
        check_prompt_batch(b, [next(r for r in records if r.id == i) for i in b["ids"]], tok, cfg)
        assert b["inputs"]["input_ids"].shape[1] == max(int(s.sum()) for s in b["inputs"]["segment_ids"])


def test_config_defaults():
    cfg = default_pipeline_config()
    for key in ("seq_len", "batch_size", "min_pixels", "max_pixels", "max_patches", "pack", "shuffle", "seed",
                "num_epochs", "worker_count", "worker_buffer_size", "system_prompt", "rl_suffix",
                "prompt_batch_size"):  # fmt: skip
        assert key in cfg, key
    for key in (
        "patch_size",
        "merge_size",
        "temporal_patch_size",
        "window_size",
    ):  # the model's (VisionGeometry)
        assert key not in cfg, key
    assert cfg.num_epochs is None and cfg.max_patches % 4 == 0
    assert cfg.rl_suffix.startswith("Output the thinking process in <think> </think>")
