"""Qwen2.5-VL image preprocessing: smart_resize → PIL resize → rescale/normalize → patchify (host-side NumPy).

Reproduces transformers' `Qwen2VLImageProcessorPil` (5.24) exactly (see QWEN2_5_VL.md §5): the same RGB
conversion (alpha composited onto white), the same PIL resize of the uint8 image, and bit-identical float32
values. It is faster because rescale+normalize is a lookup table built with HF's exact dtype steps (float64
rescale, float32 normalize) instead of whole-image float passes, the patch transpose runs on uint8, and the
lookups fill the preallocated output chunk by chunk (optionally several images at once in threads).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from r1ov_jax.errors import InvalidInputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200
# Decompression-bomb cap on the *input* image (width x height read from the header, checked before any pixel is
# decoded): PIL's own default threshold, ~89.5 megapixels. Larger images are refused with ImageTooLargeError.
# Change it per processor (`ImageProcessor(max_input_pixels=...)`), per importer call (`max_pixels=`), or for
# the whole process with the R1OV_MAX_IMAGE_PIXELS environment variable.
MAX_INPUT_PIXELS = int(os.environ.get("R1OV_MAX_IMAGE_PIXELS", 89_478_485))

ImageLike = Image.Image | np.ndarray | bytes | bytearray | memoryview


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 3136,
    max_pixels: int = 12845056,
) -> tuple[int, int]:
    """Target (height, width): both multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Follows transformers' `smart_resize` line by line, including Python's half-to-even `round`.
    Raises ValueError for non-positive sides or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"image must have positive height and width, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"absolute aspect ratio must be at most {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width)} for a {height}x{width} image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb for PIL: anything with alpha is composited onto opaque white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # convert() would copy an RGB image; the image is only read, so skip the copy.
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_rgb(array: np.ndarray, index: int) -> np.ndarray:
    """transformers' convert_to_rgb for uint8 HWC arrays (1, 3 or 4 channels; 2-D means grayscale)."""
    if array.dtype != np.uint8:
        raise InvalidInputError(f"image {index}: numpy images must be uint8 HWC, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InvalidInputError(
            f"image {index}: numpy images must be HxW or HxWxC with C in (1, 3, 4), got shape {array.shape}"
        )
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        # Same float64 blend and round-half-even as transformers (it differs from PIL's integer compositing).
        alpha = array[..., 3:4] / 255
        composite = alpha * array[..., :3] + (1 - alpha) * 255
        return np.round(composite).astype(np.uint8)
    return array


class ImageTooLargeError(InvalidInputError):
    """An image's header announces more pixels than the cap (a decompression bomb or simply too big)."""


def _allow_pil(max_pixels: int) -> None:
    # PIL raises DecompressionBombError above 2x its own MAX_IMAGE_PIXELS at open time, before we can read the
    # size; a cap set above that raises PIL's threshold to match (never lowers it).
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def open_checked(data: bytes, *, max_pixels: int | None = None, where: str = "image") -> Image.Image:
    """A lazily opened PIL image whose header (format, width x height) is valid and within ``max_pixels``.

    No pixel data is decoded yet. Raises ImageTooLargeError above the cap, InvalidInputError for bytes that are
    not an image (the message starts with ``where``)."""
    cap = MAX_INPUT_PIXELS if max_pixels is None else int(max_pixels)
    _allow_pil(cap)
    try:
        image = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{where}: more than {cap} pixels ({e})") from None
    except Exception as e:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError, ...)
        raise InvalidInputError(f"{where}: could not decode {len(data)} bytes as an image ({e})") from None
    w, h = image.size
    if w * h > cap:
        image.close()
        raise ImageTooLargeError(f"{where}: {w}x{h} = {w * h} pixels exceeds the cap of {cap} pixels")
    return image


def check_image_bytes(data: bytes, *, max_pixels: int | None = None, where: str = "image") -> tuple[int, int]:
    """(width, height) of encoded image bytes after a header check (pixel cap) and a full decode of the pixels.

    Raises ImageTooLargeError / InvalidInputError naming ``where``: header unreadable, over the cap, or pixel
    data that fails to decode (truncated or corrupt) even though the header is valid."""
    image = open_checked(data, max_pixels=max_pixels, where=where)
    try:
        image.load()
    except Exception as e:  # noqa: BLE001 - truncated/corrupt pixel data
        raise InvalidInputError(
            f"{where}: header is valid ({image.format} {image.size[0]}x{image.size[1]}) but the pixel data "
            f"does not decode ({type(e).__name__}: {e})"
        ) from None
    finally:
        image.close()
    return image.size


def _decode_bytes(
    data: bytes | bytearray | memoryview, index: int, max_pixels: int | None = None
) -> Image.Image:
    image = open_checked(bytes(data), max_pixels=max_pixels, where=f"image {index}")
    try:
        image.load()
    except Exception as e:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError, ...)
        raise InvalidInputError(f"image {index}: could not decode {len(data)} bytes as an image ({e})") from e
    # Raw bytes have not been oriented by anyone yet; transformers' load_image applies EXIF orientation too.
    return ImageOps.exif_transpose(image)


def _as_list(images: Any) -> list:
    if isinstance(images, (Image.Image, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        # A 4-D array is a batch of HWC images; 2-D/3-D is one image.
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    raise TypeError(
        "images must be a PIL image, a uint8 numpy array, encoded bytes or a list of these, "
        f"got {type(images)}"
    )


class ImageProcessor:
    """Qwen2-VL / Qwen2.5-VL image processor (NumPy, matches transformers' PIL backend bit for bit).

    Args:
        min_pixels, max_pixels: area bounds of the resized image (hub Qwen2.5-VL: 3136, 12845056).
        patch_size: ViT patch side P (14). temporal_patch_size: T, copies of each frame (2).
        merge_size: m, the 2x2 token merge; resized sides are multiples of P*m.
        image_mean, image_std: per-channel normalization of the [0, 1]-rescaled image (CLIP).
        resample: PIL resampling filter (bicubic).
        num_threads: threads for a multi-image call (PIL decode/resize and NumPy copies release the GIL);
            None = min(8, CPU count). Pass 1 inside multi-process data loaders.
        max_input_pixels: decompression-bomb cap on an input image's width x height, checked from the header
            before decoding (default MAX_INPUT_PIXELS, ~89.5 MP); larger images raise ImageTooLargeError.
    """

    def __init__(
        self,
        min_pixels: int = 3136,
        max_pixels: int = 12845056,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        merge_size: int = 2,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        resample: int = Image.Resampling.BICUBIC,
        num_threads: int | None = None,
        max_input_pixels: int | None = None,
    ):
        for name, value in [
            ("min_pixels", min_pixels),
            ("max_pixels", max_pixels),
            ("patch_size", patch_size),
            ("temporal_patch_size", temporal_patch_size),
            ("merge_size", merge_size),
        ]:
            if int(value) != value or value <= 0:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if num_threads is not None and (int(num_threads) != num_threads or num_threads < 1):
            raise InvalidInputError(f"num_threads must be None or a positive integer, got {num_threads!r}")
        if min_pixels > max_pixels:
            raise InvalidInputError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise InvalidInputError(
                f"image_mean and image_std need 3 values (RGB), got {image_mean}, {image_std}"
            )
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.patch_size = int(patch_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.resample = Image.Resampling(resample)
        self.num_threads = num_threads
        self.max_input_pixels = int(MAX_INPUT_PIXELS if max_input_pixels is None else max_input_pixels)
        if self.max_input_pixels <= 0:
            raise InvalidInputError(f"max_input_pixels must be positive, got {max_input_pixels!r}")
        self._lut = self._build_lut()
        # Even patch sides let two horizontally adjacent pixels share one lookup (a '<u2' index into a table
        # of float32 pairs, read as int64): half the gathers. Odd sides use one pixel per lookup.
        self._group = 2 if self.patch_size % 2 == 0 else 1
        self._lut_group = self._build_pair_lut() if self._group == 2 else self._lut

    def _build_lut(self) -> np.ndarray:
        """lut[c, v] = normalized float32 value of byte v in channel c, computed with transformers' dtypes:
        rescale is float64 `v * (1/255)` cast to float32, normalize is float32 `(x - mean) / std`."""
        x = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None]
        return np.ascontiguousarray((x[None, :] - mean) / std)  # [C, 256] float32

    def _build_pair_lut(self) -> np.ndarray:
        """pair[c, v] for a little-endian uint16 v = (first pixel) | (second pixel) << 8: the two float32
        values side by side, viewed as one int64 so a single `take` writes both. [C, 65536] int64, 1.5 MiB."""
        v = np.arange(65536)
        pair = np.empty((3, 65536, 2), dtype=np.float32)
        pair[:, :, 0] = self._lut[:, v & 255]
        pair[:, :, 1] = self._lut[:, v >> 8]
        return pair.view(np.int64)[:, :, 0].copy()

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Resized (height, width) for an input of the given size."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """image_grid_thw row (1, h/P, w/P) for an input of the given size (pre-merge patches)."""
        h, w = self.target_size(height, width)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of <|image_pad|> tokens (merged patches) an image of this size becomes."""
        _, gh, gw = self.grid_thw(height, width)
        return gh * gw // self.merge_size**2

    def _to_rgb(self, image: Any, index: int) -> Image.Image | np.ndarray:
        """Decoded RGB image: a PIL image (mode RGB) or a uint8 HWC array; both still at input size."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = _decode_bytes(image, index, self.max_input_pixels)
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise InvalidInputError(f"image {index} is empty ({image.height}x{image.width} pixels)")
            if image.width * image.height > self.max_input_pixels:
                raise ImageTooLargeError(
                    f"image {index}: {image.width}x{image.height} exceeds the cap of {self.max_input_pixels} pixels"
                )
            try:
                return _pil_to_rgb(image)
            except Exception as e:
                raise InvalidInputError(
                    f"image {index}: cannot convert PIL mode {image.mode!r} to RGB ({e})"
                ) from e
        if isinstance(image, np.ndarray):
            if image.size == 0:
                raise InvalidInputError(f"image {index} is empty (shape {image.shape})")
            if image.ndim >= 2 and image.shape[0] * image.shape[1] > self.max_input_pixels:
                raise ImageTooLargeError(
                    f"image {index}: {image.shape[1]}x{image.shape[0]} exceeds the cap of "
                    f"{self.max_input_pixels} pixels"
                )
            return _array_to_rgb(image, index)
        raise TypeError(
            f"image {index}: expected a PIL image, a uint8 numpy array or encoded bytes, got {type(image)}"
        )

    def _resize(self, rgb: Image.Image | np.ndarray, index: int) -> list[np.ndarray]:
        """Resized image as 3 contiguous uint8 [H, W] channel planes, H and W multiples of P*m."""
        if isinstance(rgb, np.ndarray):
            height, width = rgb.shape[:2]
        else:
            width, height = rgb.size
        try:
            new_h, new_w = self.target_size(height, width)
        except ValueError as e:
            raise InvalidInputError(f"image {index}: {e}") from e
        if (new_h, new_w) != (height, width):
            pil = Image.fromarray(rgb) if isinstance(rgb, np.ndarray) else rgb
            rgb = pil.resize((new_w, new_h), resample=self.resample)
        if isinstance(rgb, np.ndarray):
            return [np.ascontiguousarray(rgb[:, :, ch]) for ch in range(3)]
        return [np.asarray(band) for band in rgb.split()]  # PIL's split is cheaper than numpy slicing

    def _patchify_into(self, planes: list[np.ndarray], out: np.ndarray) -> None:
        """Writes normalized patches of one resized image (C uint8 planes) into out: float32 [gh*gw, C*T*P*P].

        Row order is merge-block-major (gh/m, gw/m, m, m) and columns are (C, T, P, P), as in transformers.
        """
        p, m, t, g = self.patch_size, self.merge_size, self.temporal_patch_size, self._group
        (h, w), c = planes[0].shape, len(planes)
        gh, gw = h // p, w // p
        n, k = gh * gw, p * p // g  # k = lookups per patch and channel
        dst = out.view(np.int64 if g == 2 else np.float32).reshape(n, c, t, k)
        indices = []
        for plane in planes:
            if g == 2:
                plane = plane.view("<u2")  # [H, W/2]: pixel pairs along a patch row
            # Byte-sized transpose to patch order (far less traffic than moving float32): [n, P*P/g]
            indices.append(
                plane.reshape(gh // m, m, p, gw // m, m, p // g).transpose(0, 3, 1, 4, 2, 5).reshape(n, k)
            )
        # Chunks keep the lookup temporaries in cache; allocating full-image temporaries costs more than
        # the arithmetic (page faults), and taking straight into the strided `dst` makes NumPy buffer it.
        chunk = 256
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            for ch in range(c):
                values = self._lut_group[ch].take(indices[ch][start:stop])
                for slot in range(t):  # the same frame fills every temporal slot
                    dst[start:stop, ch, slot, :] = values

    def _load(self, image: Any, index: int) -> list[np.ndarray]:
        return self._resize(self._to_rgb(image, index), index)

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> dict[str, np.ndarray]:
        """Preprocess one image or a list of images.

        Args:
            images: PIL image(s), uint8 numpy array(s) (HxW, HxWx1, HxWx3, HxWx4 or a [N, H, W, C] batch), or
                encoded PNG/JPEG bytes; or a list mixing these.
        Returns:
            dict(pixel_values=float32[sum(gh*gw), C*T*P*P], image_grid_thw=int64[n_images, 3]) with rows
            (1, gh, gw) counted in pre-merge patches; images are concatenated in order.
        Raises:
            ValueError naming the image index for empty, undecodable or too elongated (aspect > 200) images.
        """
        items = _as_list(images)
        if not items:
            raise InvalidInputError("no images given")
        for i, image in enumerate(items):
            if isinstance(image, Image.Image):
                # Lazily opened files are not thread-safe (the same object may even appear twice): load here.
                try:
                    image.load()
                except Exception as e:
                    raise InvalidInputError(f"image {i}: could not load PIL image ({e})") from e
        threads = self.num_threads if self.num_threads is not None else min(8, os.cpu_count() or 1)
        threads = max(1, min(threads, len(items)))
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        try:
            run = pool.map if pool is not None else map
            resized = list(run(self._load, items, range(len(items))))
            p = self.patch_size
            grids = np.array([(1, r[0].shape[0] // p, r[0].shape[1] // p) for r in resized], dtype=np.int64)
            ends = np.cumsum(grids[:, 1] * grids[:, 2])
            dim = 3 * self.temporal_patch_size * p * p
            pixel_values = np.empty((int(ends[-1]), dim), dtype=np.float32)
            starts = np.concatenate([[0], ends[:-1]])
            outs = [pixel_values[a:b] for a, b in zip(starts, ends)]
            list(run(self._patchify_into, resized, outs))
        finally:
            if pool is not None:
                pool.shutdown()
        return {"pixel_values": pixel_values, "image_grid_thw": grids}

    # HF preprocessor_config.json round trip (used by hf/ export and import).
    def to_dict(self) -> dict[str, Any]:
        """Contents of a HF `preprocessor_config.json` that configures transformers the same way."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": int(self.resample),
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageProcessor:
        """Build from a HF preprocessor_config.json dict (`min_pixels`/`max_pixels` win over `size`)."""
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if config.get(flag, True) is not True:
                raise InvalidInputError(
                    f"preprocessor config sets {flag}={config[flag]!r}; only True is supported"
                )
        if abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
            raise InvalidInputError(
                f"preprocessor config rescale_factor must be 1/255, got {config['rescale_factor']}"
            )
        size = config.get("size") or {}
        kwargs = dict(
            min_pixels=config.get("min_pixels", size.get("shortest_edge", 3136)),
            max_pixels=config.get("max_pixels", size.get("longest_edge", 12845056)),
        )
        for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "resample"):
            if key in config:
                kwargs[key] = config[key]
        return cls(**kwargs)
