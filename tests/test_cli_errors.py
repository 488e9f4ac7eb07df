"""Every user mistake the hardening sweep found is one `error:` line (exit 2, no traceback); R1OV_DEBUG=1 shows
the traceback; `r1ov eval` on a benchmark with bad rows scores the good ones and prints the skip counts; a damaged
checkpoint step is refused by export-hf in one line."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import pytest
from PIL import Image

from r1ov_jax.cli import main


@pytest.fixture(scope="module")
def hf_dir(tiny_hf_dir):
    return tiny_hf_dir


def _copy_hf(hf_dir, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(hf_dir / "hf", d)
    return d


def _truncate_weights(d):
    (f,) = [p for p in os.listdir(d) if p.endswith(".safetensors")]
    p = os.path.join(d, f)
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) // 2)


def _empty_weights(d):
    (f,) = [p for p in os.listdir(d) if p.endswith(".safetensors")]
    open(os.path.join(d, f), "wb").close()


def _config_field(value, key="hidden_size"):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        block = cfg.get("text_config", cfg)
        block[key] = value
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


def _config_not_json(d):
    (d / "config.json").write_text("{not json")


HF_DAMAGE = {
    "truncated safetensors": (_truncate_weights, "damaged or truncated"),
    "empty safetensors": (_empty_weights, "not a readable safetensors"),
    "hidden_size string": (_config_field("4k"), "hidden_size must be a non-negative integer"),
    "hidden_size float": (_config_field(64.5), "hidden_size must be a non-negative integer"),
    "num_hidden_layers null-ish list": (_config_field([2], "num_hidden_layers"), "num_hidden_layers"),
    "rms_norm_eps string": (_config_field("tiny", "rms_norm_eps"), "rms_norm_eps must be a number"),
    "config not JSON": (_config_not_json, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(HF_DAMAGE))
def test_damaged_hf_folder_is_one_error_line(hf_dir, tmp_path, capsys, case):
    edit, expected = HF_DAMAGE[case]
    d = _copy_hf(hf_dir, tmp_path)
    edit(d)
    assert main(["generate", "--model", str(d), "--prompt", "hi", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and expected in err, err


def _write_config(tmp_path, body: str) -> str:
    p = tmp_path / "cfg.py"
    p.write_text(body)
    return str(p)


CONFIG_MISTAKES = {
    "log_every=0": (["--config.sft.train.log_every=0"], "sft.train.log_every must be an integer >= 1"),
    "ckpt_every=0": (["--config.sft.train.ckpt_every=0"], "sft.train.ckpt_every must be an integer >= 1"),
    "keep_checkpoints=0": (
        ["--config.sft.train.keep_checkpoints=0"],
        "keep_checkpoints must be an integer >= 1",
    ),
    "steps=0": (["--config.sft.train.steps=0"], "sft.train.steps must be an integer >= 1"),
    "steps=-3": (["--config.sft.train.steps=-3"], "sft.train.steps must be an integer >= 1"),
    "nan_policy": (["--config.sft.train.nan_policy=ignore"], "nan_policy must be one of"),
}


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES))
def test_config_values_are_checked_before_anything_is_built(tmp_path, capsys, monkeypatch, case):
    from r1ov_jax.train import recipes

    monkeypatch.setattr(recipes, "run_stage", lambda *a, **k: pytest.fail("built despite a bad config"))
    overrides, expected = CONFIG_MISTAKES[case]
    assert main(["sft", "--config", "configs/tiny_cpu.py", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    "body, expected",
    [
        ("def get_config():\n    raise RuntimeError('boom')\n", "get_config() raised RuntimeError: boom"),
        ("def get_config():\n    return {'a': 1}\n", "expected an ml_collections.ConfigDict"),
        ("import nonexistent_module_xyz\n", "failed to execute"),
        ("x = 1\n", "defines no get_config()"),
    ],
    ids=["raises", "returns-dict", "import-error", "no-get-config"],
)
def test_broken_config_files(tmp_path, capsys, body, expected):
    assert main(["sft", "--config", _write_config(tmp_path, body)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and expected in err, err


def test_r1ov_debug_shows_the_traceback(tmp_path, monkeypatch):
    from r1ov_jax.config_utils import ConfigError

    monkeypatch.setenv("R1OV_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(
            [
                "sft",
                "--config",
                _write_config(tmp_path, "def get_config():\n    raise RuntimeError('boom')\n"),
            ]
        )


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_generate_image_argument(hf_dir, tmp_path, capsys, kind):
    image = tmp_path if kind == "directory" else tmp_path / "nope.png"
    args = ["generate", "--model", str(hf_dir / "hf"), "--image", str(image), "--prompt", "x"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert ("is a directory" if kind == "directory" else "does not exist") in err


def test_generate_image_not_an_image(hf_dir, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    args = ["generate", "--model", str(hf_dir / "hf"), "--image", str(tmp_path / "bad.png"), "--prompt", "x"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error:")


def _png_b64(color=(200, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_eval_scores_good_rows_and_prints_skip_counts(hf_dir, tmp_path, capsys):
    good = [f"{i}\tHow many?\t\t{i}\tCollege\tMath\t{_png_b64()}" for i in range(3)]
    bomb = base64.b64encode(
        __import__("tests.data.test_hardening", fromlist=["BOMB"]).BOMB
    ).decode()  # a 30000x30000 PNG header
    rows = (
        ["index\tquestion\tchoices\tanswer\tlevel\tcategory\timage"]
        + good[:1]
        + ["10\tcaf\udce9?\t\t1\tCollege\tMath\t" + _png_b64()]  # non-UTF-8 byte (written below)
        + good[1:2]
        + [f"11\tq?\t\tnan\tCollege\tMath\t{_png_b64()}", f"12\tq?\t\t1\tCollege\tMath\t{bomb}"]
        + good[2:]
        + [f"13\tq?\t{'[' * 50000}\t1\tCollege\tMath\t{_png_b64()}"]
    )
    path = tmp_path / "bench.tsv"
    path.write_bytes("\n".join(rows).encode("utf-8", "surrogateescape") + b"\n")
    args = ["eval", "--model", str(hf_dir / "hf"), "--data", str(path), "--out", str(tmp_path / "o")]
    assert main([*args, "--max-new-tokens", "2", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "kept 3 of 7 rows" in out and "skipped 4" in out
    assert "bad_encoding: 1" in out and "nan_answer: 1" in out and "image_too_large: 1" in out
    results = [json.loads(ln) for ln in open(tmp_path / "o" / "results.jsonl")]
    assert sorted(r["id"] for r in results) == ["0", "1", "2"]


def test_export_hf_refuses_a_damaged_step(hf_dir, tmp_path, capsys):
    from tests.train.test_checkpoint_integrity import _data_files, _flip

    run = tmp_path / "run"
    assert main(["import-hf", "--model", str(hf_dir / "hf"), "--out", str(run)]) == 0
    for f in _data_files(str(run / "checkpoints" / "0")):
        _flip(f)  # params-only checkpoint: every data file holds params
    capsys.readouterr()
    assert main(["export-hf", "--checkpoint", str(run), "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "step 0" in err, err
    assert not (tmp_path / "exp").exists()


def test_architecture_overrides_of_the_preset():
    from r1ov_jax.config_utils import load_config
    from r1ov_jax.errors import InvalidInputError
    from r1ov_jax.train.builders import model_config

    cfg = load_config("configs/tiny_cpu.py", ["model.text.num_hidden_layers=1"])
    assert model_config(cfg.model).text.num_hidden_layers == 1
    bad = load_config("configs/tiny_cpu.py", ["model.vision.nonexistent=3"])
    with pytest.raises(InvalidInputError, match=r"model.vision: unknown fields \['nonexistent'\]"):
        model_config(bad.model)
