"""``r1ov preflight`` of LoRA / QLoRA configs: the trainers' programs compile for v5e-8 with the adapters; the
GRPO reference costs no second weight set (needs libtpu, no TPU)."""

import importlib.util
import json

import pytest

from r1ov_jax.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (.[tpu])")

TINY = ["--config", "configs/tiny_cpu.py", "--config.mesh.data=-1", "--topology", "v5e-8"]


def report(tmp_path, *overrides, stage="grpo"):
    out = tmp_path / "pf.json"
    # memory only: these tests check placement and bytes, not the FLOP count (tests/test_preflight.py)
    assert main(["preflight", *TINY, *overrides, "--stage", stage, "--memory-only", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_lora_grpo_fits_and_reference_has_no_weights(tmp_path):
    paper = "--config.rl.grpo.preset=grpo"  # beta > 0: there is a reference pass (the tiny config's dapo has none)
    full = report(tmp_path, paper)["stages"]
    # two minibatches: the update compiles on one (half the prompts), FLOPs counted for both
    lora = report(tmp_path, paper, "--config.model.lora.rank=8", "--config.rl.grpo.num_minibatches=2")[
        "stages"
    ]
    assert "one minibatch of 2 prompts" in lora["grpo/update"]["note"], lora["grpo/update"]["note"]
    for name in ("grpo/rollout", "grpo/logprobs", "grpo/update"):
        assert lora[name]["fits"], name
    # the update phase's resident state outside its arguments is the reference: a whole model for full
    # fine-tuning, nothing with LoRA (the reference is the policy with its adapters off)
    assert full["grpo/update"]["bytes_per_chip"]["resident_outside"] > 0
    assert lora["grpo/update"]["bytes_per_chip"]["resident_outside"] == 0
    assert (
        lora["grpo/rollout"]["bytes_per_chip"]["resident_outside"]
        < full["grpo/rollout"]["bytes_per_chip"]["resident_outside"]
    )


@pytest.mark.parametrize("qtype", ["nf4"])  # int8 takes the same path (tests/lora/test_lora.py runs both)
def test_qlora_sft_fits(tmp_path, qtype):
    stages = report(
        tmp_path, "--config.model.lora.rank=8", f"--config.model.lora.base_qtype={qtype}", stage="sft"
    )
    assert stages["stages"]["sft"]["fits"]
