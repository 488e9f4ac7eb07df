"""One prompt builder: the SFT example, the GRPO prompt and the evaluation prompt of a record are byte-identical up
to the assistant turn; loading data does not import the generators; the question text is defined once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from r1ov_jax import hf
from r1ov_jax.data.formalize import generate
from r1ov_jax.data.pipeline import _Example, default_pipeline_config, prompt_format
from r1ov_jax.eval.bench import items_from_records
from r1ov_jax.models.qwen2_5_vl import tiny
from r1ov_jax.processing.image import ImageProcessor
from r1ov_jax.processing.prompts import FORMAT_SUFFIX, PromptFormat, question_text
from r1ov_jax.processing.tokenizer import make_test_tokenizer
from r1ov_jax.rollout.chat import encode_prompts

ASSISTANT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_test_tokenizer(tmp_path_factory.mktemp("tok"))


def _records():
    recs = [generate(kind, seed) for kind, seed in (("chart", 1), ("scene", 2), ("table", 3), ("circuit", 4))]
    mc = generate("function", 5)
    if not mc.choices:  # make sure one record is multiple choice
        mc.choices, mc.answer = [mc.answer, "0"] if mc.answer != "0" else [mc.answer, "1"], "A"
    text_only = generate("table", 6)
    text_only.images = []
    return recs + [mc, text_only]


@pytest.mark.parametrize("sft_suffix", [True, False])
def test_sft_grpo_and_eval_prompts_are_identical(tok, sft_suffix):
    cfg = default_pipeline_config()
    cfg.min_pixels, cfg.max_pixels, cfg.sft_suffix = 28 * 28 * 4, 28 * 28 * 24, sft_suffix
    model = hf.io.abstract_model(
        tiny().replace(image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)
    )  # only its config is read
    ip = ImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    recs = _records()
    for rec in recs:
        rec.trace = "<think>\nstep\n</think>\n<answer>1</answer>"
    items = items_from_records(recs)
    fmt = prompt_format(cfg, "prompt")
    assert fmt == PromptFormat(system=cfg.system_prompt, suffix=FORMAT_SUFFIX)
    evaluated = encode_prompts(model, tok, ip, [(it.images, it.question, it.choices) for it in items], fmt)
    geo = model.cfg.vision.geometry()
    sft, grpo = _Example(tok, cfg, "sft", geo), _Example(tok, cfg, "prompt", geo)
    for i, rec in enumerate(recs):
        s = sft(i, rec.to_bytes())
        prompt_len = int(np.argmax(s["loss_mask"]))  # the first target token follows the assistant header
        sft_prompt = s["input_ids"][:prompt_len]
        g = grpo(i, rec.to_bytes())["input_ids"]
        row, seg = evaluated["input_ids"][i], evaluated["segment_ids"][i]
        e = row[seg == 1]
        assert tok.decode(g).endswith(ASSISTANT)
        np.testing.assert_array_equal(g, e, err_msg=f"GRPO vs eval prompt of {rec.id}")
        if sft_suffix:
            np.testing.assert_array_equal(sft_prompt, g, err_msg=f"SFT vs GRPO prompt of {rec.id}")
        else:  # the only difference is the format instruction
            assert tok.decode(g) == tok.decode(sft_prompt).replace(
                "<|im_end|>\n" + ASSISTANT, f"\n{FORMAT_SUFFIX}<|im_end|>\n" + ASSISTANT
            )


def test_question_text_lists_choices_once():
    assert question_text("q?", ["1", "2"]) == "q?\nChoices:\nA. 1\nB. 2"
    assert question_text("q?\nA. 1\nB. 2", ["1", "2"]) == "q?\nA. 1\nB. 2"  # already listed in the stem
    assert question_text(" q? ", None) == "q?"


def _imported_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return out.split()


def test_loading_data_does_not_import_the_generators():
    mods = _imported_after("import r1ov_jax.data.pipeline, r1ov_jax.data.record")
    assert not [m for m in mods if m.startswith(("r1ov_jax.data.formalize", "r1ov_jax.data.solvers"))]
    assert "PIL.ImageDraw" not in mods and "PIL.ImageFont" not in mods
    assert "r1ov_jax.data.synth" not in mods
