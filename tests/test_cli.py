"""The `r1ov` CLI: help, user errors without tracebacks, generate / import-hf / export-hf round trip, and a
miniature `r1ov demo` whose HF export transformers loads strictly with the same logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from r1ov_jax.cli import build_parser, main

SUBCOMMANDS = ["synth", "sft", "grpo", "eval", "generate", "import-hf", "export-hf", "demo"]


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "r1ov_jax.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in SUBCOMMANDS:
        assert cmd in out
    for cmd in SUBCOMMANDS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([cmd, "--help"])
        assert e.value.code == 0


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert main(["sft", "--config", str(tmp_path / "nope.py")]) == 2
    assert main(["export-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert main(["sft", "--config", "configs/tiny_cpu.py", "--config.sft.train.stepz=3"]) == 2
    assert main(["sft", "--config", "configs/tiny_cpu.py", "--config.sft.train.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "does not exist" in err and "unknown config field 'sft.train.stepz'" in err


def test_generate_import_export_round_trip(tiny_hf_dir, tmp_path, capsys):
    d = tiny_hf_dir
    args = ["--image", str(d / "x.png"), "--prompt", "How many?", "--max-new-tokens", "6"]
    assert main(["generate", "--model", str(d / "hf"), *args]) == 0
    text_hf = capsys.readouterr().out
    assert main(["import-hf", "--model", str(d / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert (
        main(
            [
                "export-hf",
                "--checkpoint",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "hf2"),
                "--max-shard-size",
                "60KB",
            ]
        )
        == 0
    )
    files = os.listdir(tmp_path / "hf2")
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    assert "preprocessor_config.json" in files
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "run"), *args]) == 0
    assert capsys.readouterr().out == text_hf  # same weights, greedy → same text


@pytest.mark.slow
def test_mini_demo_end_to_end(tmp_path, capsys):
    """The whole recipe at toy scale; the exported folder must load strictly in transformers."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from r1ov_jax import hf

    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--config.demo.train_items=48",
            "--config.demo.heldout_items=6",
            "--config.demo.rl_items=12",
            "--config.sft.train.steps=4",
            "--config.rl.train.steps=2",
            "--config.rl.grpo.num_generations=2",
            "--config.rl.grpo.max_new_tokens=12",
            "--config.demo.eval_max_new_tokens=12",
            "--config.sft.train.eval_every=2",
            "--config.pipeline.batch_size=2",
            "--config.demo.workers=1",
            "--config.demo.vocab_size=600",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("chance_accuracy", "minutes"):
        assert key in summary
    for stage in ("sft", "sft_continued", "grpo"):
        assert {"accuracy", "format_rate", "reward"} <= set(summary[stage])
        assert {
            "loss",
            "loss_swapped_images",
            "gap",
            "accuracy_swapped_images",
            "own_vs_swapped_images",
        } <= set(summary[stage]["image_reliance"])
    assert all(os.path.exists(p) for p in summary["plots"]) and len(summary["plots"]) == 2
    ref, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(out / "hf"), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = hf.from_pretrained(str(out / "hf"))
    ids = np.array([[100, 101, 102, 103, 104]])  # plain text ids (low ids are special tokens)
    with torch.no_grad():
        ref_logits = ref(input_ids=torch.as_tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(ours(ids)) - ref_logits).max() < 1e-4
    # `r1ov eval` on the exported model prints the grade x category table
    assert (
        main(
            [
                "eval",
                "--model",
                str(out / "hf"),
                "--data",
                str(out / "data" / "heldout"),
                "--out",
                str(tmp_path / "ev"),
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    assert "Grade \\ Category" in capsys.readouterr().out


def test_eval_and_compare(tiny_hf_dir, tmp_path, capsys):
    from r1ov_jax.data.synth import synthesize

    synthesize(str(tmp_path / "data"), 4, types=["scene", "chart"], progress=False)
    for name in ("a", "b"):
        assert (
            main(
                [
                    "eval",
                    "--model",
                    str(tiny_hf_dir / "hf"),
                    "--data",
                    str(tmp_path / "data"),
                    "--out",
                    str(tmp_path / name),
                    "--max-new-tokens",
                    "4",
                    "--batch-size",
                    "2",
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "Grade \\ Category" in out and (tmp_path / "a" / "scores.json").exists()
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "McNemar" in capsys.readouterr().out
    assert main(["eval", "--model", str(tiny_hf_dir / "hf")]) == 2  # --data missing: one-line error
