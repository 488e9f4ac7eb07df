"""LoRA runs end to end: adapters-only checkpoints + base pointer, runs.load, merged HF export vs transformers,
PEFT adapter folder loaded by peft on the base HF folder."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from r1ov_jax import hf, runs
from r1ov_jax.models import lora
from r1ov_jax.testing.hf_reference import build_ids, hf_forward, hf_pixels, random_image, tiny_hf_model
from r1ov_jax.train.checkpoint import Checkpointer, train_state

TOL = 1e-4


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run on an HF base: random (non-zero) adapters saved as its step-3 checkpoint."""
    d = tmp_path_factory.mktemp("lora")
    tiny_hf_model(seed=3).save_pretrained(d / "base")
    base = hf.from_pretrained(str(d / "base"))
    targets = lora.DECODER_TARGETS + lora.VISION_TARGETS
    model = lora.apply_lora(base, lora.LoraSpec(rank=4, alpha=8.0, targets=targets))
    for i, (m, _, b) in enumerate(lora.adapter_pairs(model).values()):
        m.kernel_lora_b.set_value(0.3 * jax.random.normal(jax.random.key(i), b.shape))
    run = str(d / "run")
    runs.create(run, model, None, stage="sft", base=str(d / "base"))
    ckpt = Checkpointer(runs.checkpoints_dir(run), async_save=False)
    ckpt.save(3, train_state(model, None, None), {"step": 3, "data_state": None}, force=True)
    ckpt.close()
    return d, model


def inputs():
    pv, thw = hf_pixels([random_image(56, 84, seed=1)], min_pixels=28 * 28, max_pixels=28 * 28 * 16)
    ids = np.array([build_ids([3, 4, "img", 5, 6, 7], thw)])
    return ids, np.ones_like(ids), pv, thw


def test_checkpoint_holds_adapters_only_and_load_rebuilds(lora_run):
    d, model = lora_run
    info = json.load(open(d / "run" / "run.json"))
    assert info["lora"]["rank"] == 4 and info["base"] == str(d / "base")
    step_dir = d / "run" / "checkpoints" / "3"
    ckpt_bytes = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())
    base_bytes = sum(f.stat().st_size for f in (d / "base").glob("*.safetensors"))
    adapter_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(lora.adapter_state(model)))
    assert ckpt_bytes < base_bytes / 2 and ckpt_bytes < 4 * adapter_bytes + 200_000, (ckpt_bytes, base_bytes)
    loaded = runs.load(str(d / "run"))
    assert loaded.step == 3 and lora.is_lora(loaded.model)
    ids, mask, pv, thw = inputs()
    a, b = model(ids, mask, pv, thw), loaded.model(ids, mask, pv, thw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_merged_export_matches_transformers(lora_run, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from r1ov_jax.cli import main

    d, model = lora_run
    main(["export-hf", "--checkpoint", str(d / "run"), "--out", str(tmp_path / "merged")])
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    ids, mask, pv, thw = inputs()
    ours = np.asarray(model(ids, mask, pv, thw))
    theirs = hf_forward(ref.eval(), ids, mask, pv, thw).logits.numpy()
    base_logits = hf_forward(
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d / "base"), dtype=torch.float32).eval(),
        ids,
        mask,
        pv,
        thw,
    ).logits.numpy()
    assert np.abs(ours - base_logits).max() > 1e-2  # the adapters matter
    assert np.abs(ours - theirs).max() <= TOL, np.abs(ours - theirs).max()


def test_peft_adapter_folder_matches(lora_run, tmp_path):
    import peft
    from transformers import Qwen2_5_VLForConditionalGeneration

    from r1ov_jax.cli import main

    d, model = lora_run
    out = tmp_path / "adapter"
    main(["export-hf", "--checkpoint", str(d / "run"), "--out", str(out), "--adapter"])
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d / "base"), dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(base, str(out)).eval()
    # every adapter we wrote became a PEFT LoRA layer, with our values
    lora_layers = [n for n, m in pm.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(lora_layers) == len(lora.adapter_pairs(model))
    ids, mask, pv, thw = inputs()
    ours = np.asarray(model(ids, mask, pv, thw))
    theirs = hf_forward(pm, ids, mask, pv, thw).logits.numpy()
    assert np.abs(ours - theirs).max() <= TOL, np.abs(ours - theirs).max()


def test_export_adapter_of_full_run_is_an_error(tmp_path, tiny_hf_dir, capsys):
    from r1ov_jax.cli import main

    run = str(tmp_path / "full")
    m = hf.from_pretrained(str(tiny_hf_dir / "hf"))
    runs.create(run, m, None, stage="sft", base=str(tiny_hf_dir / "hf"))
    runs.save_params(run, m)
    assert main(["export-hf", "--checkpoint", run, "--out", str(tmp_path / "a"), "--adapter"]) == 2
    assert "not a LoRA run" in capsys.readouterr().err


def test_random_base_is_written_once_and_reloads(tmp_path):
    from r1ov_jax.models.qwen2_5_vl import Qwen25VL, tiny

    model = lora.apply_lora(Qwen25VL(tiny(), rngs=nnx.Rngs(5)), lora.LoraSpec(rank=2))
    run = str(tmp_path / "run")
    runs.create(run, model, None, stage="sft", base=None)
    ckpt = Checkpointer(runs.checkpoints_dir(run), async_save=False)
    ckpt.save(1, train_state(model, None, None), {"step": 1, "data_state": None}, force=True)
    ckpt.close()
    assert runs.is_hf_dir(os.path.join(run, runs.BASE_DIR))
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(runs.load(run).model(ids)), np.asarray(model(ids)))
