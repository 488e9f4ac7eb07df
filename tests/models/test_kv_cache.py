"""KV-cache prefill + decode equals the full forward at the same positions (<= 1e-4)."""

import jax
import numpy as np
from flax import nnx

from r1ov_jax.models.qwen2_5_vl import Qwen25VL, decode_positions, next_positions, tiny
from r1ov_jax.testing.hf_reference import build_ids, hf_pixels, random_image


def test_prefill_then_decode_matches_full_forward():
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(0))
    pv, thw = hf_pixels([random_image(56, 56, seed=1), random_image(56, 84, seed=2)])
    prompts = [build_ids([1, 2, "img", 3], thw[:1]), build_ids([4, "img", 5, 6, 7, 8], thw[1:])]
    new = np.array([[11, 12, 13, 14], [21, 22, 23, 24]])
    length = max(map(len, prompts))
    ids = np.zeros((2, length + new.shape[1]), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) : length], mask[i, length - len(p) :] = p, 1
    ids[:, length:] = new
    full = np.asarray(model(ids, mask, pv, thw))

    inputs = model.prepare_inputs(ids[:, :length], mask[:, :length], pv, thw)
    cache = model.init_cache(batch=2, max_len=length + 8)
    prefill = nnx.jit(lambda m, c, x: m.prefill(cache=c, **x))
    decode = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))
    last, cache = prefill(model, cache, inputs)
    np.testing.assert_allclose(np.asarray(last), full[:, length - 1], atol=1e-4)
    nxt = next_positions(inputs["positions"], inputs["segment_ids"])
    for s in range(new.shape[1] - 1):
        logits, cache = decode(model, new[:, s : s + 1], decode_positions(nxt + s), cache)
        d = np.abs(np.asarray(logits[:, 0]) - full[:, length + s]).max()
        assert d < 1e-4, f"decode step {s}: {d}"
    assert int(cache.index) == length + new.shape[1] - 1


def test_multi_token_decode_chunk():
    """Feeding several tokens at once into the cache (t > 1) is causal within the chunk."""
    model = Qwen25VL(tiny(), rngs=nnx.Rngs(1))
    ids = np.random.default_rng(0).integers(0, 240, size=(1, 12))
    full = np.asarray(model(ids))
    inputs = model.prepare_inputs(ids[:, :5])
    last, cache = model.prefill(cache=model.init_cache(1, 16), **inputs)
    nxt = next_positions(inputs["positions"], inputs["segment_ids"])
    logits, cache = model.decode(ids[:, 5:12], decode_positions(nxt, 7), cache)
    np.testing.assert_allclose(np.asarray(logits[0]), full[0, 5:12], atol=1e-4)
    assert jax.tree.leaves(cache)


def test_padded_vision_gives_same_features():
    from r1ov_jax.processing.positions import pad_vision, vision_geometry

    model = Qwen25VL(tiny(), rngs=nnx.Rngs(2))
    pv, thw = hf_pixels([random_image(56, 84, seed=4), random_image(112, 56, seed=5)])
    geo = vision_geometry(thw, merge_size=2, window_size=56, patch_size=14)
    ref = np.asarray(model.visual(pv, geo))
    ppv, pgeo = pad_vision(pv, geo, pv.shape[0] + 24)
    out = np.asarray(model.visual(ppv, pgeo))
    np.testing.assert_allclose(out[: ref.shape[0]], ref, atol=1e-6)
