"""ImageProcessor vs transformers' Qwen2VLImageProcessorPil (the reference it must reproduce)."""

import io
import pickle
import random

import numpy as np
import pytest
from PIL import Image

from r1ov_jax.processing import ImageProcessor, smart_resize

hf_pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
HFProcessor = hf_pil.Qwen2VLImageProcessorPil

TOL = 1e-5  # required tolerance; the implementation is in fact bit-exact (see test_bit_exact)


def _image(h, w, seed=0, channels=3):
    """Gradient + noise so that bicubic resizing sees structure, not just noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), (3 * xx + yy) % 256, (xx * yy) % 256], -1)
    noise = rng.integers(-40, 41, size=(h, w, 4))
    return np.clip(base + noise, 0, 255).astype(np.uint8)[:, :, :channels]


def _compare(images, min_pixels=3136, max_pixels=12845056):
    ours = ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)(images)
    ref = HFProcessor(min_pixels=min_pixels, max_pixels=max_pixels)(images=images)
    assert ours["pixel_values"].dtype == np.float32 and ours["image_grid_thw"].dtype == np.int64
    np.testing.assert_array_equal(ours["image_grid_thw"], np.asarray(ref["image_grid_thw"]))
    assert ours["pixel_values"].shape == np.asarray(ref["pixel_values"]).shape
    np.testing.assert_allclose(ours["pixel_values"], np.asarray(ref["pixel_values"]), rtol=0, atol=TOL)
    return ours


# (h, w, min_pixels, max_pixels): what each case exercises is in the id.
SIZES = {
    "rounding-100x61": (100, 61, 3136, 12845056),
    "half-to-even-70x98": (70, 98, 3136, 12845056),  # 2.5 → 2, 3.5 → 4
    "below-min-20x30": (20, 30, 3136, 12845056),
    "tiny-1x1": (1, 1, 3136, 12845056),
    "above-max-500x700": (500, 700, 3136, 28 * 28 * 64),
    "above-max-odd-997x613": (997, 613, 3136, 28 * 28 * 100),
    "wide-30x2800": (30, 2800, 3136, 12845056),
    "tall-2800x30": (2800, 30, 3136, 12845056),
    "wide-above-max-40x3000": (40, 3000, 3136, 28 * 28 * 50),
    "aspect-200-exactly-14x2800": (14, 2800, 3136, 12845056),
    "no-resize-56x84": (56, 84, 3136, 12845056),
    "no-resize-224x448": (224, 448, 3136, 12845056),
    "odd-97x131": (97, 131, 3136, 12845056),
    "odd-333x221": (333, 221, 3136, 12845056),
    "big-min-pixels-60x90": (60, 90, 28 * 28 * 16, 12845056),
}


@pytest.mark.parametrize("h,w,min_pixels,max_pixels", list(SIZES.values()), ids=list(SIZES))
def test_matches_hf_sizes(h, w, min_pixels, max_pixels):
    img = Image.fromarray(_image(h, w, seed=h * 7 + w))
    out = _compare([img], min_pixels, max_pixels)
    _, gh, gw = out["image_grid_thw"][0]
    assert (gh * 14, gw * 14) == smart_resize(h, w, 28, min_pixels, max_pixels)
    assert gh * gw * 196 >= min_pixels
    # transformers clamps a side at 28 px, which may exceed max_pixels for very elongated images.
    assert gh * gw * 196 <= max_pixels or min(gh, gw) == 2


def test_bit_exact():
    # The lookup table is built with transformers' exact float64 → float32 steps, so results are identical.
    imgs = [
        Image.fromarray(_image(h, w, seed=i)) for i, (h, w) in enumerate([(83, 129), (56, 56), (300, 200)])
    ]
    ours = ImageProcessor()(imgs)["pixel_values"]
    ref = np.asarray(HFProcessor(min_pixels=3136, max_pixels=12845056)(images=imgs)["pixel_values"])
    np.testing.assert_array_equal(ours, ref)


def _rgba_pil(h, w, seed):
    arr = _image(h, w, seed, channels=4)
    arr[: h // 3, :, 3] = 0  # fully transparent band, so compositing onto white matters
    return Image.fromarray(arr, mode="RGBA")


def _palette_with_transparency(h, w, seed):
    im = Image.fromarray(_image(h, w, seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 3
    return im


MODES = {
    "L": lambda: Image.fromarray(_image(45, 77, 1)[:, :, 0], mode="L"),
    "LA": lambda: Image.fromarray(_image(45, 77, 2)[:, :, :2], mode="LA"),
    "RGBA": lambda: _rgba_pil(61, 90, 3),
    "P+transparency": lambda: _palette_with_transparency(50, 70, 4),
    "CMYK": lambda: Image.fromarray(_image(40, 60, 5, channels=4), mode="CMYK"),
    "I;16": lambda: Image.fromarray(_image(40, 60, 6)[:, :, 0].astype(np.uint16) * 200),
    "numpy-RGBA": lambda: _image(61, 90, 7, channels=4),
    "numpy-HxWx1": lambda: _image(61, 90, 8, channels=1),
    "numpy-RGB-noncontiguous": lambda: _image(120, 90, 9)[::2, ::-1],
}


@pytest.mark.parametrize("make", list(MODES.values()), ids=list(MODES))
def test_matches_hf_modes(make):
    _compare([make()])


def test_numpy_2d_is_grayscale():
    gray = _image(50, 70, 10)[:, :, 0]
    ours = ImageProcessor()(gray)
    ref = _compare([np.repeat(gray[:, :, None], 3, axis=2)])
    np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])


def test_several_images_one_call():
    shapes = [(100, 61), (56, 84), (31, 400), (250, 250), (61, 100)]
    imgs = [Image.fromarray(_image(h, w, seed=i)) for i, (h, w) in enumerate(shapes)]
    imgs[1] = np.asarray(imgs[1])  # mixed input kinds
    out = _compare(imgs, max_pixels=28 * 28 * 40)
    assert out["image_grid_thw"].shape == (5, 3) and (out["image_grid_thw"][:, 0] == 1).all()
    # Concatenation is in order: each image alone gives its own slice.
    proc = ImageProcessor(max_pixels=28 * 28 * 40)
    start = 0
    for img, (_, gh, gw) in zip(imgs, out["image_grid_thw"]):
        single = proc(img)
        np.testing.assert_array_equal(out["pixel_values"][start : start + gh * gw], single["pixel_values"])
        start += gh * gw
    assert start == out["pixel_values"].shape[0]
    # Threading changes nothing.
    one = ImageProcessor(max_pixels=28 * 28 * 40, num_threads=1)(imgs)
    np.testing.assert_array_equal(one["pixel_values"], out["pixel_values"])


def test_patch_layout():
    # Each row is one 14x14 patch as (C, T, P, P) with T copies of the same frame; rows go merge-block-major.
    arr = _image(56, 84, 11)  # no resize: grid (4, 6)
    out = ImageProcessor()(arr)
    pv = out["pixel_values"].reshape(-1, 3, 2, 14, 14)
    np.testing.assert_array_equal(pv[:, :, 0], pv[:, :, 1])
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)[:, None, None]
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)[:, None, None]
    norm = (arr.transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std
    # Row 1 is merge block (0, 0), position (0, 1): image rows 0-13, columns 14-27. Row 4 starts block (0, 1).
    np.testing.assert_allclose(pv[1, :, 0], norm[:, 0:14, 14:28], atol=1e-6)
    np.testing.assert_allclose(pv[2, :, 0], norm[:, 14:28, 0:14], atol=1e-6)
    np.testing.assert_allclose(pv[4, :, 0], norm[:, 0:14, 28:42], atol=1e-6)


def test_odd_patch_size_and_custom_stats():
    # Odd patch sides take the one-pixel-per-lookup path.
    kw = dict(
        patch_size=7,
        merge_size=3,
        temporal_patch_size=3,
        image_mean=(0.5, 0.4, 0.3),
        image_std=(0.2, 0.3, 0.4),
    )
    img = Image.fromarray(_image(50, 80, 12))
    ours = ImageProcessor(min_pixels=100, max_pixels=10000, **kw)(img)
    ref = HFProcessor(min_pixels=100, max_pixels=10000, **kw)(images=[img])
    np.testing.assert_array_equal(ours["image_grid_thw"], np.asarray(ref["image_grid_thw"]))
    np.testing.assert_allclose(ours["pixel_values"], np.asarray(ref["pixel_values"]), rtol=0, atol=TOL)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_bytes(fmt):
    img = Image.fromarray(_image(90, 130, 13))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    ours = ImageProcessor()([buf.getvalue(), bytearray(buf.getvalue())])
    ref = _compare([decoded, decoded])
    np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])


def test_bytes_apply_exif_orientation():
    img = Image.fromarray(_image(60, 100, 14))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    out = ImageProcessor()(buf.getvalue())
    np.testing.assert_array_equal(out["image_grid_thw"], [[1, 8, 4]])  # displayed 100x60 → 112x56


def test_smart_resize_matches_hf_randomized():
    rnd = random.Random(0)
    for _ in range(3000):
        h, w = rnd.randint(1, 5000), rnd.randint(1, 5000)
        if max(h, w) / min(h, w) > 200:
            continue
        factor = rnd.choice([28, 14, 32])
        lo = rnd.choice([56 * 56, 28 * 28 * 4, 100])
        hi = rnd.choice([28 * 28 * 64, 28 * 28 * 1280, 12845056])
        assert smart_resize(h, w, factor, lo, hi) == hf_pil.smart_resize(h, w, factor, lo, hi), (h, w, factor)
    assert smart_resize(100, 61) == (112, 56)
    assert smart_resize(70, 98) == (56, 112)  # half-to-even


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 100)


def test_errors_name_the_image():
    proc = ImageProcessor()
    good = _image(40, 40, 15)
    with pytest.raises(ValueError, match=r"image 1 is empty"):
        proc([good, Image.new("RGB", (0, 10))])
    with pytest.raises(ValueError, match=r"image 2 is empty"):
        proc([good, good, np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"image 1: could not decode 12 bytes"):
        proc([good, b"not an image"])
    png = io.BytesIO()
    Image.fromarray(good).save(png, format="PNG")
    with pytest.raises(ValueError, match=r"image 0: could not decode"):
        proc([png.getvalue()[:60]])  # truncated file
    with pytest.raises(ValueError, match=r"image 1: could not load PIL image"):
        proc([good, Image.open(io.BytesIO(png.getvalue()[:60]))])  # lazily opened, fails on load
    with pytest.raises(ValueError, match=r"image 1: absolute aspect ratio must be at most 200.*3x700"):
        proc([good, _image(3, 700, 16)])
    with pytest.raises(ValueError, match=r"image 0: numpy images must be uint8"):
        proc(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"image 0: .*C in \(1, 3, 4\)"):
        proc(good[:, :, :2])
    with pytest.raises(ValueError, match="no images"):
        proc([])
    with pytest.raises(TypeError, match="image 0"):
        proc(["path/to/file.png"])
    with pytest.raises(ValueError, match="min_pixels"):
        ImageProcessor(min_pixels=5000, max_pixels=4000)


def test_hf_config_round_trip():
    proc = ImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 30)
    cfg = proc.to_dict()
    again = ImageProcessor.from_dict(cfg)
    assert again.to_dict() == cfg
    # transformers configured from the same dict gives the same output.
    hf = HFProcessor.from_dict(cfg)
    img = Image.fromarray(_image(300, 170, 17))
    ours = proc(img)
    ref = hf(images=[img])
    np.testing.assert_array_equal(ours["image_grid_thw"], np.asarray(ref["image_grid_thw"]))
    np.testing.assert_allclose(ours["pixel_values"], np.asarray(ref["pixel_values"]), rtol=0, atol=TOL)
    # Hub style: only size (no min/max_pixels keys).
    hub = ImageProcessor.from_dict({"size": {"shortest_edge": 1000, "longest_edge": 20000}})
    assert (hub.min_pixels, hub.max_pixels) == (1000, 20000)
    with pytest.raises(ValueError, match="do_normalize"):
        ImageProcessor.from_dict({"do_normalize": False})


def test_pickle_round_trip():
    proc = ImageProcessor(max_pixels=28 * 28 * 30, num_threads=1)
    again = pickle.loads(pickle.dumps(proc))
    img = _image(90, 70, 19)
    np.testing.assert_array_equal(again(img)["pixel_values"], proc(img)["pixel_values"])


def test_size_helpers_match_output():
    proc = ImageProcessor(max_pixels=28 * 28 * 30)
    for h, w in [(100, 61), (500, 700), (30, 2800), (56, 84)]:
        grid = proc(_image(h, w, 18))["image_grid_thw"][0]
        assert proc.grid_thw(h, w) == tuple(grid)
        assert proc.num_image_tokens(h, w) == grid.prod() // 4
