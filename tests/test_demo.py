"""The demo's paired comparison (GRPO vs SFT-continued): gain, exact McNemar p and flips from per-item results."""

import json
import math

import pytest

from r1ov_jax import demo


def _write(directory, correct):
    directory.mkdir()
    with open(directory / "results.jsonl", "w") as f:
        for i, c in enumerate(correct):
            f.write(json.dumps({"id": f"scene-{i}", "correct": bool(c)}) + "\n")


def test_paired_comparison_counts_flips_and_exact_mcnemar(tmp_path):
    base = [1, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    treated = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # 1 right -> wrong, 6 wrong -> right
    _write(tmp_path / "a", base)
    _write(tmp_path / "b", treated)
    out = demo._paired(str(tmp_path / "a"), str(tmp_path / "b"))
    assert out["flips"] == {"wrong_to_right": 6, "right_to_wrong": 1} and out["n"] == 10
    assert out["gain"] == pytest.approx(0.5)
    # two-sided exact binomial test of 1 vs 6 discordant pairs
    assert out["p_value"] == pytest.approx(2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7)
    lo, hi = out["ci95"]
    assert lo <= 0.5 <= hi


def test_series_helpers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "grpo/reward": float(s)}) for s in range(1, 21)) + "\n")
    r = demo._series(str(path), "grpo/reward")
    assert demo._mean(r[:10]) == pytest.approx(5.5) and demo._mean(r[-10:]) == pytest.approx(15.5)
    assert demo._series(str(tmp_path / "missing.jsonl"), "x") == [] and demo._mean([]) is None


def _cut_image_path(model):
    """Zero the merger's last layer: every image feature is 0, so the model cannot tell images apart."""
    merger = model.visual.merger.mlp2
    merger.kernel[...] = 0.0 * merger.kernel[...]
    merger.bias[...] = 0.0 * merger.bias[...]


def test_image_reliance_tells_an_image_blind_model_from_one_that_reads(tiny_hf_dir, tmp_path):
    from r1ov_jax import runs
    from r1ov_jax.data.synth import synthesize

    synthesize(str(tmp_path / "data"), 6, types=["scene", "chart"], progress=False)
    loaded = runs.load(str(tiny_hf_dir / "hf"))
    pipeline = demo.default_demo_config().pipeline
    data, swapped = (
        str(tmp_path / "data"),
        demo.swap_images(str(tmp_path / "data"), str(tmp_path / "swapped")),
    )
    reads = demo.image_reliance(loaded.model, loaded.tokenizer, data, swapped, pipeline)
    assert math.isfinite(reads["loss"]) and abs(reads["gap"]) > 1e-4  # random vision weights: pixels matter
    assert reads["gap"] == pytest.approx(reads["loss_swapped_images"] - reads["loss"])
    _cut_image_path(loaded.model)
    blind = demo.image_reliance(loaded.model, loaded.tokenizer, data, swapped, pipeline)
    assert blind["gap"] == pytest.approx(0.0, abs=1e-6)
    assert blind["loss"] != pytest.approx(reads["loss"], abs=1e-6)  # the model did change


def test_eval_scores_the_swapped_images_too_and_a_blind_model_loses_nothing(tiny_hf_dir, tmp_path):
    # Greedy accuracy with another item's pictures: a model whose image path is cut answers every item exactly
    # as with its own images (gain 0, no flips); the random model, which reads pixels, answers some differently.
    from r1ov_jax import hf, runs
    from r1ov_jax.data.synth import synthesize
    from r1ov_jax.runs import write_preprocessor_config

    synthesize(str(tmp_path / "data"), 6, types=["scene", "chart"], progress=False)
    data = str(tmp_path / "data")
    swapped = demo.swap_images(data, str(tmp_path / "swapped"))
    cfg = demo.default_demo_config()
    cfg.demo.eval_max_new_tokens, cfg.demo.eval_batch_size = 12, 6
    loaded = runs.load(str(tiny_hf_dir / "hf"))
    _cut_image_path(loaded.model)
    hf.save_pretrained(loaded.model, str(tmp_path / "blind"), tokenizer=loaded.tokenizer)
    write_preprocessor_config(str(tmp_path / "blind"), loaded.image_processor)

    def outputs(directory):
        return {r["id"]: r["output"] for r in map(json.loads, open(f"{directory}/results.jsonl"))}

    for name, model_dir in (("reads", str(tiny_hf_dir / "hf")), ("blind", str(tmp_path / "blind"))):
        out = tmp_path / "eval" / name
        rel = demo._eval(model_dir, data, swapped, str(out), cfg)["image_reliance"]
        own, other = outputs(out), outputs(out / "swapped_images")
        assert own.keys() == other.keys() and len(own) == 6
        pair = rel["own_vs_swapped_images"]
        flips = pair["flips"]["wrong_to_right"] + pair["flips"]["right_to_wrong"]
        assert pair["n"] == 6 and sum(v["n"] for v in rel["accuracy_swapped_per_type"].values()) == 6
        if name == "blind":
            assert own == other and flips == 0 and pair["gain"] == 0.0
        else:
            assert own != other


def test_a_stage_stopped_by_a_signal_stops_the_demo(tmp_path, monkeypatch):
    # SIGTERM / SIGINT make a stage save and return {"preempted": True}: GRPO must not start from that half run
    from r1ov_jax.train import recipes

    started = []

    def sft_stage(cfg, out_dir, progress=True):
        started.append(("sft", out_dir))
        return {"preempted": True, "step": 3}

    monkeypatch.setattr(recipes, "run_sft_stage", sft_stage)
    monkeypatch.setattr(recipes, "run_grpo_stage", lambda *a, **k: started.append(("grpo", a[1])))
    cfg = demo.default_demo_config()
    d = cfg.demo
    d.train_items, d.heldout_items, d.rl_items, d.workers, d.vocab_size = 24, 4, 4, 1, 600
    out = demo.run_demo(cfg, str(tmp_path / "demo"), progress=False)
    assert out == {"preempted": True, "stage": "sft", "run_dir": str(tmp_path / "demo" / "sft")}
    assert [s for s, _ in started] == ["sft"]
    assert not (tmp_path / "demo" / "summary.json").exists()
