"""HF → ours → save_pretrained (several shards) → transformers loads strictly with identical logits;
config layouts; clear errors on broken folders."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r1ov_jax import hf
from r1ov_jax.models.qwen2_5_vl import Qwen25VLConfig
from r1ov_jax.testing.hf_reference import build_ids, hf_forward, hf_pixels, random_image, tiny_hf_model


def _inputs():
    pv, thw = hf_pixels([random_image(56, 84, seed=1)])
    ids = np.array([build_ids([1, 2, "img", 3, 4], thw)])
    return ids, np.ones_like(ids), pv, thw


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_sharded_strict(tmp_path, tie):
    from transformers import Qwen2_5_VLForConditionalGeneration

    original = tiny_hf_model(seed=3, tie=tie)
    original.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "tokenizer_config.json").write_text("{}")  # side files travel with the export
    ours = hf.from_pretrained(str(tmp_path / "src"))
    src = str(tmp_path / "src")
    out = hf.save_pretrained(ours, str(tmp_path / "out"), max_shard_size="100KB", side_files_from=src)
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 3 and "model.safetensors.index.json" in files and "tokenizer_config.json" in files
    reloaded, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info.get("mismatched_keys")
    reloaded.eval()
    ids, mask, pv, thw = _inputs()
    a = hf_forward(original, ids, mask, pv, thw).logits.numpy()
    b = hf_forward(reloaded, ids, mask, pv, thw).logits.numpy()
    np.testing.assert_array_equal(a, b)
    # bit-exact weights both ways
    sd_a, sd_b = original.state_dict(), reloaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k


def test_runtime_layout_keys_load(tmp_path):
    """5.x runtime names (model.visual.*, model.language_model.*) load like the on-disk legacy names."""
    from safetensors.torch import save_file

    original = tiny_hf_model(seed=5)
    original.save_pretrained(tmp_path / "a")
    os.remove(tmp_path / "a" / "model.safetensors")
    save_file(
        {k: v.contiguous() for k, v in original.state_dict().items()},
        str(tmp_path / "a" / "model.safetensors"),
    )
    ours = hf.from_pretrained(str(tmp_path / "a"))
    ids, mask, pv, thw = _inputs()
    ref = hf_forward(original, ids, mask, pv, thw).logits.numpy()
    assert np.abs(np.asarray(ours(ids, mask, pv, thw)) - ref).max() < 1e-4


def test_flat_v4_config_reads_like_nested(tmp_path):
    original = tiny_hf_model(seed=0)
    nested = json.loads(original.config.to_json_string())
    flat = {**nested.pop("text_config"), **{k: v for k, v in nested.items()}}
    rope = flat.pop("rope_parameters")
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["rope_theta"] = rope["rope_theta"]
    flat["model_type"] = "qwen2_5_vl"
    a = Qwen25VLConfig.from_hf_dict(json.loads(original.config.to_json_string()))
    b = Qwen25VLConfig.from_hf_dict(flat)
    assert a == b
    assert a.text.mrope_section == (2, 3, 3) and a.vision.fullatt_block_indexes == (1,)
    assert Qwen25VLConfig.from_hf_dict(a.to_hf_dict()) == a


def test_broken_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.from_pretrained(str(tmp_path / "nope"))
    original = tiny_hf_model(seed=0)
    original.save_pretrained(tmp_path / "m")
    # drop one tensor → the error names it
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd.pop("model.norm.weight")
    sd["visual.blocks.0.attn.qkv.weight"] = sd["visual.blocks.0.attn.qkv.weight"][:10]
    save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        hf.from_pretrained(str(tmp_path / "m"))
    assert "model.norm.weight" in str(e.value) and "visual.blocks.0.attn.qkv.weight" in str(e.value)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        hf.from_pretrained(str(tmp_path / "m"))


def test_bf16_path_runs_and_is_close(tmp_path):
    """bf16 params + compute: distance from fp32 is measured (tiny model: typically ~1e-2 on |logits|<1)."""
    original = tiny_hf_model(seed=6)
    original.save_pretrained(tmp_path / "m")
    ids, mask, pv, thw = _inputs()
    f32 = np.asarray(hf.from_pretrained(str(tmp_path / "m"))(ids, mask, pv, thw))
    m16 = hf.from_pretrained(str(tmp_path / "m"), dtype=jnp.bfloat16)
    assert m16.language_model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    b16 = np.asarray(m16(ids, mask, pv, thw))
    err = np.abs(b16 - f32).max()
    print(f"bf16 vs fp32 max |dlogits| = {err:.3e} (max |logits| {np.abs(f32).max():.3f})")
    assert np.isfinite(b16).all() and err < 5e-2
    out = hf.save_pretrained(m16, str(tmp_path / "out16"))
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
