"""Parity of the NNX Qwen2.5-VL with transformers (fp32, eager attention, tiny random models).

Tolerance: 1e-4 max abs on vision features, every decoder hidden state and the logits. Weights are scaled up
(x3) in one case because tiny random models have |logits| < 1, which could hide small mistakes.
"""

import numpy as np
import pytest
import torch

from r1ov_jax.models.qwen2_5_vl.text import mrope_cos_sin  # noqa: F401  (import check of the public module)
from r1ov_jax.processing.positions import get_rope_index, vision_geometry
from r1ov_jax.testing.hf_reference import IMG, build_ids, hf_forward, hf_pixels, random_image, tiny_hf_model

TOL = 1e-4


def load_ours(hf_model, tmp_path, **kw):
    from r1ov_jax import hf

    hf_model.save_pretrained(tmp_path / "hf")
    return hf.from_pretrained(str(tmp_path / "hf"), **kw)


def compare_all(ours, ref_model, ids, mask, pv=None, thw=None, position_ids=None):
    ref = hf_forward(ref_model, ids, mask, pv, thw, position_ids)
    inputs = ours.prepare_inputs(ids, mask, pv, thw, position_ids)
    logits, hidden = ours.forward(**inputs), ours.decoder_outputs(**inputs).layer_outputs
    valid = np.asarray(mask, bool)
    assert len(hidden) == len(ref.hidden_states) == ref_model.config.text_config.num_hidden_layers + 1
    # transformers' last hidden state is after the final norm; ours records the pre-norm stack.
    for i, (a, b) in enumerate(zip(hidden[:-1], ref.hidden_states[:-1])):
        d = np.abs(np.asarray(a) - b.numpy())[valid].max()
        assert d < TOL, f"decoder hidden state {i}: max abs diff {d}"
    d = np.abs(np.asarray(logits) - ref.logits.numpy())[valid].max()
    assert d < TOL, f"logits: max abs diff {d}"
    return ref, inputs


def test_text_only(tmp_path):
    ref_model = tiny_hf_model(seed=1)
    ours = load_ours(ref_model, tmp_path)
    ids = np.random.default_rng(0).integers(0, 240, size=(2, 11))
    compare_all(ours, ref_model, ids, np.ones_like(ids))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_one_image_logits_and_vision(tmp_path, scale):
    ref_model = tiny_hf_model(seed=2, scale=scale)
    ours = load_ours(ref_model, tmp_path)
    pv, thw = hf_pixels([random_image(56, 84, seed=3)])
    ids = np.array([build_ids([1, 2, 3, "img", 4, 5, 6], thw)])
    compare_all(ours, ref_model, ids, np.ones_like(ids), pv, thw)
    with torch.no_grad():
        ref_feats = ref_model.model.visual(torch.as_tensor(pv), grid_thw=torch.as_tensor(thw)).pooler_output
    geo = vision_geometry(thw, merge_size=2, window_size=56, patch_size=14)
    feats = np.asarray(ours.visual(pv, geo))
    assert np.abs(feats - ref_feats.numpy()).max() < TOL


def test_two_images_of_different_sizes(tmp_path):
    ref_model = tiny_hf_model(seed=4)
    ours = load_ours(ref_model, tmp_path)
    pv, thw = hf_pixels([random_image(56, 84, seed=5), random_image(112, 56, seed=6)])
    assert thw.tolist() == [[1, 4, 6], [1, 8, 4]]
    ids = np.array([build_ids([7, "img", 8, 9, "img", 10, 11], thw)])
    compare_all(ours, ref_model, ids, np.ones_like(ids), pv, thw)


def test_batch_with_left_padding_and_images(tmp_path):
    ref_model = tiny_hf_model(seed=7)
    ours = load_ours(ref_model, tmp_path)
    pv, thw = hf_pixels([random_image(56, 56, seed=8), random_image(84, 112, seed=9)])
    a = build_ids([1, 2, "img", 3], thw[:1])
    b = build_ids([4, "img", 5, 6, 7, 8, 9], thw[1:])
    length = max(len(a), len(b))
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, seq in enumerate([a, b]):
        ids[i, length - len(seq) :] = seq
        mask[i, length - len(seq) :] = 1
    compare_all(ours, ref_model, ids, mask, pv, thw)


def test_text_batch_with_left_padding(tmp_path):
    # transformers uses arange positions (pads included) for text-only input; our default counts valid
    # tokens only, so hand both sides the same explicit positions.
    ref_model = tiny_hf_model(seed=10)
    ours = load_ours(ref_model, tmp_path)
    ids = np.random.default_rng(1).integers(0, 240, size=(2, 9))
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    pos, _ = get_rope_index(ids, None, mask, image_token_id=IMG)
    compare_all(ours, ref_model, ids, mask, position_ids=pos)


def test_windows_really_partition_with_full_attention_block(tmp_path):
    # window_size 56 → 2x2 merged-token windows; a 112x168 image has a 4x6 merged grid → 6 windows;
    # block 1 of 3 is full attention.
    ref_model = tiny_hf_model(seed=11, depth=3, fullatt=(1,), window_size=56)
    ours = load_ours(ref_model, tmp_path)
    pv, thw = hf_pixels([random_image(112, 168, seed=12)])
    geo = vision_geometry(thw, merge_size=2, window_size=56, patch_size=14)
    assert len(np.unique(geo["window_segments"])) == 6
    assert not np.array_equal(geo["window_index"], np.arange(len(geo["window_index"])))
    ids = np.array([build_ids([1, "img", 2], thw)])
    compare_all(ours, ref_model, ids, np.ones_like(ids), pv, thw)
    with torch.no_grad():
        out = ref_model.model.visual(
            torch.as_tensor(pv), grid_thw=torch.as_tensor(thw), output_hidden_states=True
        )
    feats, hidden = ours.visual.with_block_outputs(pv, geo)
    assert len(hidden) == len(out.hidden_states) - 1 == 3
    for i, (a, b) in enumerate(zip(hidden, out.hidden_states[1:])):
        assert np.abs(np.asarray(a) - b.numpy()).max() < TOL, f"vision block {i}"
    assert np.abs(np.asarray(feats) - out.pooler_output.numpy()).max() < TOL


def test_tied_embeddings(tmp_path):
    ref_model = tiny_hf_model(seed=13, tie=True)
    ours = load_ours(ref_model, tmp_path)
    assert not hasattr(ours, "lm_head")
    ids = np.random.default_rng(2).integers(0, 240, size=(1, 7))
    compare_all(ours, ref_model, ids, np.ones_like(ids))


@pytest.mark.parametrize("sizes", [[(56, 84)], [(56, 84), (112, 56)], [(84, 84), (28, 112), (56, 56)]])
def test_get_rope_index_equals_transformers(sizes):
    ref_model = tiny_hf_model(seed=0)
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    _, thw = hf_pixels(images)
    segs = [3]
    for _ in sizes:
        segs += ["img", 5, 6]
    one = build_ids(segs, thw)
    two = build_ids([9, 9] + segs, thw)
    length = len(two) + 2
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros_like(ids)
    for i, seq in enumerate([one, two]):
        ids[i, length - len(seq) :], mask[i, length - len(seq) :] = seq, 1
    grids = np.concatenate([thw, thw])
    t_ids = torch.as_tensor(ids)
    ref_pos, ref_delta = ref_model.model.get_rope_index(
        t_ids,
        mm_token_type_ids=(t_ids == IMG).int(),
        image_grid_thw=torch.as_tensor(grids),
        attention_mask=torch.as_tensor(mask),
    )
    pos, delta = get_rope_index(ids, grids, mask, image_token_id=IMG)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(delta, ref_delta.numpy().reshape(-1))


def test_pad_count_mismatch_is_a_clear_error(tmp_path):
    ours = load_ours(tiny_hf_model(seed=0), tmp_path)
    pv, thw = hf_pixels([random_image(56, 84)])
    ids = np.array([[1, IMG, IMG, 2]])
    with pytest.raises(ValueError, match="<\\|image_pad\\|> tokens"):
        ours(ids, pixel_values=pv, image_grid_thw=thw)
