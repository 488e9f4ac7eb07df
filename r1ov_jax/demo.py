"""``r1ov demo``: the whole R1-Onevision recipe on a tiny CPU config, from nothing, in minutes.

synthesize formalization data (exact ground truth) → train a sentencepiece tokenizer on it → SFT a tiny
Qwen2.5-VL from scratch on the reasoning traces → GRPO from the SFT checkpoint with format + accuracy rewards
→ the fair baseline: the SFT run continued (same optimizer state and data stream) for about GRPO's wall time →
evaluate all three on held-out generated items (per type) → paired tests (GRPO vs SFT-continued, GRPO vs SFT)
→ export the GRPO model to an HF folder → plots + summary.json.

SFT-continued runs ``demo.sft_continued_ratio`` × ``rl.train.steps`` more SFT steps (the ratio of a GRPO step's
time to an SFT step's, measured on this machine, so the run stays deterministic); the summary reports both wall
times. ``sft_continued_ratio = None`` matches the GRPO wall time measured in this run instead (not
deterministic).
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import tempfile
import time

import ml_collections

from r1ov_jax import runs
from r1ov_jax.train.checkpoint import save_json_atomic


def default_demo_config() -> ml_collections.ConfigDict:
    """The demo's recipe: ``configs/tiny_cpu.py`` (installed as ``r1ov_configs.tiny_cpu``)."""
    from r1ov_configs.tiny_cpu import get_config

    return get_config()


def _records_texts(paths):
    from r1ov_jax.data.record import read_records

    for rec in read_records(paths):
        yield rec.prompt_text()
        if rec.trace:
            yield rec.trace


def chance_baselines(train_dir: str, heldout_dir: str) -> dict:
    """Accuracy of guessing: uniformly among the distinct gold answers of the same question template seen in
    training (``chance_accuracy``), and always the most frequent one (``majority_accuracy``, the best a model
    that ignores the image could do)."""
    from r1ov_jax.data.record import read_records, shard_paths
    from r1ov_jax.rewards import verify_answer

    def template(rec):
        q = rec.meta.get("query")
        return (
            json.dumps(q[-1] if isinstance(q, list) and q else rec.meta.get("type"), sort_keys=True)[:80]
            if q is not None
            else rec.meta.get("type", "")
        )

    answers = collections.defaultdict(collections.Counter)
    for rec in read_records(shard_paths(train_dir)):
        answers[template(rec)][str(rec.answer)] += 1
    chance, majority, n = 0.0, 0.0, 0
    for rec in read_records(shard_paths(heldout_dir)):
        n += 1
        seen = answers.get(template(rec))
        if rec.choices:
            chance += 1.0 / len(rec.choices)
        elif seen:
            chance += 1.0 / len(seen)
        if seen:
            majority += float(verify_answer(seen.most_common(1)[0][0], str(rec.answer), rec.choices))
    return {"chance_accuracy": chance / max(n, 1), "majority_accuracy": majority / max(n, 1)}


def _eval(run_dir: str, heldout_dir: str, swapped_dir: str, out_dir: str, cfg) -> dict:
    from r1ov_jax.eval.model_eval import evaluate_model
    from r1ov_jax.eval.runner import load_results
    from r1ov_jax.rewards import format_reward

    loaded = runs.load(run_dir)

    def evaluate(data_dir, results_dir):
        return evaluate_model(
            loaded.model,
            loaded.tokenizer,
            loaded.image_processor,
            data_dir,
            results_dir,
            batch_size=cfg.demo.eval_batch_size,
            max_new_tokens=cfg.demo.eval_max_new_tokens,
            fmt=loaded.prompt_format,  # the format the run recorded: the one it was trained with
        )

    summary = evaluate(heldout_dir, out_dir)
    # the same items, questions and golds with another item's pictures: what accuracy survives owes nothing
    # to reading the image
    swapped_results = os.path.join(out_dir, "swapped_images")
    evaluate(swapped_dir, swapped_results)
    recs = load_results(out_dir)
    acc = sum(r["correct"] for r in recs) / max(len(recs), 1)
    fmt = sum(format_reward(r["output"]) for r in recs) / max(len(recs), 1)
    # held-out reward with the training weights (format + accuracy), comparable between SFT and GRPO
    w = dict(cfg.rl.grpo.reward_weights or cfg.rl.rewards)
    swapped = load_results(swapped_results)
    reliance = image_reliance(loaded.model, loaded.tokenizer, heldout_dir, swapped_dir, cfg.pipeline)
    reliance["accuracy_swapped_images"] = sum(r["correct"] for r in swapped) / max(len(swapped), 1)
    reliance["accuracy_swapped_per_type"] = _per_type(swapped)
    reliance["own_vs_swapped_images"] = _paired(swapped_results, out_dir)
    return {
        "accuracy": acc,
        "format_rate": fmt,
        "reward": w.get("format", 0) * fmt + w.get("accuracy", 0) * acc,
        "undecided": sum(bool(r.get("undecided")) for r in recs) / max(len(recs), 1),
        "n": len(recs),
        "ci95": summary["overall"].get("ci95"),
        "per_type": _per_type(recs),
        "image_reliance": reliance,
    }


def _per_type(recs) -> dict:
    """Accuracy by formalization type (the generator; ids are "<type>-<seed>")."""
    per_type = collections.defaultdict(list)
    for r in recs:
        per_type[str(r["id"]).rsplit("-", 1)[0]].append(bool(r["correct"]))
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(per_type.items())}


def swap_images(data_dir: str, out_dir: str) -> str:
    """The records of ``data_dir`` written to ``out_dir`` with each item's images swapped for those of another
    item whose images have the same sizes (a rotation within each size group), so that batches pack exactly as
    before and only the pixels change."""
    import io

    from array_record.python.array_record_module import ArrayRecordWriter
    from PIL import Image

    from r1ov_jax.data.record import SHARD_PREFIX, WRITER_OPTIONS, read_records, shard_paths

    recs = list(read_records(shard_paths(data_dir)))
    groups = collections.defaultdict(list)
    for i, rec in enumerate(recs):
        if rec.images:
            groups[tuple(Image.open(io.BytesIO(im)).size for im in rec.images)].append(i)
    for idx in groups.values():
        images = [recs[i].images for i in idx]
        for j, i in enumerate(idx):
            recs[i].images = images[(j + 1) % len(idx)]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{SHARD_PREFIX}-00000-of-00001")
    writer = ArrayRecordWriter(path, WRITER_OPTIONS)
    for rec in recs:
        writer.write(rec.to_bytes())
    writer.close()
    return out_dir


def image_reliance(
    model, tokenizer, data_dir: str, swapped_dir: str, pipeline, num_batches: int = 16
) -> dict:
    """Held-out SFT loss (token mean over the first ``num_batches`` packed batches) on ``data_dir`` and on
    ``swapped_dir`` (:func:`swap_images` of it: each item with another item's images of the same size). A model
    that reads its images predicts the image-dependent tokens (object lists, chart values) worse from the wrong
    picture; a gap near 0 means it answers from the text alone, whatever its accuracy. (Blank images would not
    tell: an all-zero image is out of distribution, so even a model that only notices *that* an image is there
    gets worse on it.)"""
    import itertools

    from r1ov_jax.data.pipeline import sft_dataset
    from r1ov_jax.train.sft import eval_step

    p = ml_collections.ConfigDict(pipeline.to_dict())
    p.shuffle, p.num_epochs, p.worker_count = False, 1, 0
    geometry = model.cfg.vision.geometry()
    out = {}
    for key, path in (("loss", data_dir), ("loss_swapped_images", swapped_dir)):
        total, tokens = 0.0, 0.0
        for batch in itertools.islice(iter(sft_dataset(path, tokenizer, p, geometry=geometry)), num_batches):
            aux = eval_step(model, batch)
            total += float(aux["loss"]) * float(aux["tokens"])
            tokens += float(aux["tokens"])
        out[key] = total / max(tokens, 1.0)
    return {**out, "gap": out["loss_swapped_images"] - out["loss"]}


def run_demo(cfg: ml_collections.ConfigDict, out: str, progress: bool = True) -> dict:
    from r1ov_jax.hf import peft
    from r1ov_jax.data.record import shard_paths
    from r1ov_jax.data.synth import synthesize
    from r1ov_jax.processing.tokenizer import train_sentencepiece
    from r1ov_jax.train import recipes
    from r1ov_jax.train.metrics import plot_metrics

    t0 = time.perf_counter()
    d = cfg.demo
    os.makedirs(out, exist_ok=True)
    timings = {}
    data = {k: os.path.join(out, "data", k) for k in ("train", "heldout", "rl")}
    for key, num, seed in (
        ("train", d.train_items, d.seed),
        ("heldout", d.heldout_items, d.heldout_seed),
        ("rl", d.rl_items, d.rl_seed),
    ):
        if not shard_paths(data[key]):
            synthesize(
                data[key],
                num,
                types=list(d.types),
                levels=list(d.levels) or None,
                workers=d.workers,
                seed=seed,
                progress=progress,
            )
    timings["synth_s"] = time.perf_counter() - t0

    tok_prefix = os.path.join(out, "tokenizer", "sp")
    if not os.path.exists(tok_prefix + ".model"):
        os.makedirs(os.path.dirname(tok_prefix), exist_ok=True)
        train_sentencepiece(_records_texts(shard_paths(data["train"])), tok_prefix, d.vocab_size)
    cfg.tokenizer.path = tok_prefix + ".model"
    cfg.data.train, cfg.data.eval, cfg.data.rl = data["train"], data["heldout"], data["rl"]
    timings["tokenizer_s"] = time.perf_counter() - t0 - timings["synth_s"]

    sft_dir, grpo_dir = os.path.join(out, "sft"), os.path.join(out, "grpo")
    sftc_dir = os.path.join(out, "sft_continued")
    t = time.perf_counter()
    if _preempted(recipes.run_sft_stage(cfg, sft_dir, progress=progress)):
        return {"preempted": True, "stage": "sft", "run_dir": sft_dir}
    timings["sft_s"] = time.perf_counter() - t
    cfg.rl.init_from = sft_dir
    t = time.perf_counter()
    if _preempted(recipes.run_grpo_stage(cfg, grpo_dir, progress=progress)):
        return {"preempted": True, "stage": "grpo", "run_dir": grpo_dir}
    timings["grpo_s"] = time.perf_counter() - t

    # The fair baseline: the same SFT run resumed from its last checkpoint (optimizer state, data position) for
    # about the wall time GRPO took. Its cosine schedule spans the longer run, so the rate rises again briefly.
    sft_steps = int(cfg.sft.train.steps)
    ratio = d.get("sft_continued_ratio")
    if ratio is None:
        extra = math.ceil(timings["grpo_s"] / (timings["sft_s"] / sft_steps))
    else:
        extra = max(1, round(float(ratio) * int(cfg.rl.train.steps)))
    if os.path.isdir(sftc_dir):
        shutil.rmtree(sftc_dir)
    shutil.copytree(sft_dir, sftc_dir)
    cfg.sft.train.steps = sft_steps + extra
    t = time.perf_counter()
    if _preempted(recipes.run_sft_stage(cfg, sftc_dir, progress=progress)):
        return {"preempted": True, "stage": "sft_continued", "run_dir": sftc_dir}
    timings["sft_continued_s"] = time.perf_counter() - t
    cfg.sft.train.steps = sft_steps

    t = time.perf_counter()
    eval_dirs = {k: os.path.join(out, "eval", k) for k in ("sft", "sft_continued", "grpo")}
    run_dirs = {"sft": sft_dir, "sft_continued": sftc_dir, "grpo": grpo_dir}
    # the held-out items with each other's images, written once for the three evaluations
    with tempfile.TemporaryDirectory() as swapped:
        swap_images(data["heldout"], swapped)
        scores = {k: _eval(run_dirs[k], data["heldout"], swapped, eval_dirs[k], cfg) for k in eval_dirs}
    timings["eval_s"] = time.perf_counter() - t

    grpo = runs.load(grpo_dir)
    # a LoRA run exports merged full weights (as `r1ov export-hf` does)
    peft.save_merged(grpo.model, os.path.join(out, "hf"), side_files_from=grpo.model_dir)
    plots = [
        plot_metrics(
            runs.metrics_path(sft_dir),
            ["train/loss", "eval/loss", "train/token_acc"],
            os.path.join(out, "sft_curves.png"),
            "SFT",
        ),
        plot_metrics(
            runs.metrics_path(grpo_dir),
            [
                "grpo/reward",
                "grpo/format_rate",
                "grpo/accuracy",
                "grpo/kl",
                "grpo/groups_kept",
                "grpo/completion_len",
            ],
            os.path.join(out, "grpo_curves.png"),
            "GRPO",
        ),
    ]
    rewards = _series(runs.metrics_path(grpo_dir), "grpo/reward")
    first10, last10 = _mean(rewards[:10]), _mean(rewards[-10:])
    summary = {
        **chance_baselines(data["train"], data["heldout"]),
        "sft": {**scores["sft"], "eval_loss_last2": _series(runs.metrics_path(sft_dir), "eval/loss")[-2:]},
        "sft_continued": {**scores["sft_continued"], "extra_steps": extra,
                          "eval_loss_last2": _series(runs.metrics_path(sftc_dir), "eval/loss")[-2:]},
        "grpo": {**scores["grpo"], "preset": cfg.rl.grpo.preset, "train_reward_first10": first10,
                 "train_reward_last10": last10,
                 "train_reward_rise": None if first10 is None else last10 - first10,
                 "train_reward_last5": _mean(rewards[-5:])},
        "grpo_vs_sft_continued": _paired(eval_dirs["sft_continued"], eval_dirs["grpo"]),
        "grpo_vs_sft": _paired(eval_dirs["sft"], eval_dirs["grpo"]),
        "eval_dirs": eval_dirs,
        "minutes": (time.perf_counter() - t0) / 60,
        "timings_s": timings,
        "plots": [p for p in plots if p],
        "hf_export": os.path.join(out, "hf"),
    }  # fmt: skip
    save_json_atomic(os.path.join(out, "summary.json"), summary)
    return summary


def _preempted(result) -> bool:
    """A stage stopped by SIGTERM / SIGINT saved its checkpoint and returned early: the demo stops there too
    (the next stage would otherwise start from a half-trained run)."""
    return isinstance(result, dict) and bool(result.get("preempted"))


def _paired(baseline_dir: str, treated_dir: str) -> dict:
    """Treated − baseline on the same items: accuracy gain, paired bootstrap CI, exact McNemar p, flips."""
    from r1ov_jax.eval.stats import compare

    c = compare(baseline_dir, treated_dir)
    return {
        "gain": c["diff"],
        "ci95": list(c["ci"]),
        "p_value": c["p_mcnemar"],
        "flips": {"wrong_to_right": c["a_wrong_b_right"], "right_to_wrong": c["a_right_b_wrong"]},
        "n": c["n_common"],
    }


def _series(path: str, key: str) -> list[float]:
    from r1ov_jax.train.metrics import read_jsonl

    return [r[key] for r in read_jsonl(path) if key in r] if os.path.exists(path) else []


def _mean(vals) -> float | None:
    return sum(vals) / len(vals) if vals else None
