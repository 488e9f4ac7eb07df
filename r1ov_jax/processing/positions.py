"""Host-side (NumPy) geometry of Qwen2.5-VL inputs: M-RoPE positions and the vision tower's window layout.

Everything here depends on the *values* of ``input_ids`` / ``image_grid_thw`` and yields index arrays that the
jit-compiled model consumes, so it runs on the host, once per batch (in the data pipeline or the sampler).
It follows transformers 5.x ``Qwen2_5_VLModel.get_rope_index`` and ``vision_utils`` exactly (images only;
videos are not supported by this port).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class VisionGeometry:
    """The vision tower's input geometry, defined once by the model config (``cfg.vision.geometry()``) and handed
    to the image processor, the data pipeline and the prompt builder, so they cannot disagree."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2

    @property
    def unit(self) -> int:
        """Patches per merged (LLM) token."""
        return self.merge_size**2

    @property
    def window_patches(self) -> int:
        """Most patches in one attention window (a window never spans frames or images)."""
        return (self.window_size // self.merge_size // self.patch_size) ** 2 * self.unit

    def of(self, image_grid_thw) -> dict:
        return vision_geometry(
            image_grid_thw,
            merge_size=self.merge_size,
            window_size=self.window_size,
            patch_size=self.patch_size,
        )


def _grids(image_grid_thw) -> np.ndarray:
    g = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    if (g <= 0).any():
        raise ValueError(f"image_grid_thw entries must be positive, got {g.tolist()}")
    return g


def vision_position_ids(image_grid_thw, merge_size: int) -> np.ndarray:
    """(h, w) patch coordinates ``int32 [N, 2]`` in the processor's merge-block-major patch order."""
    out = []
    for t, h, w in _grids(image_grid_thw):
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        # Patches arrive grouped in merge x merge blocks (see the processor's patch flattening).
        hpos = hpos.reshape(h // merge_size, merge_size, w // merge_size, merge_size).transpose(0, 2, 1, 3)
        wpos = wpos.reshape(h // merge_size, merge_size, w // merge_size, merge_size).transpose(0, 2, 1, 3)
        hw = np.stack([hpos.reshape(-1), wpos.reshape(-1)], axis=-1)
        out.append(np.tile(hw, (t, 1)))
    return np.concatenate(out, 0).astype(np.int32)


def vision_full_segments(image_grid_thw) -> np.ndarray:
    """Segment id ``int32 [N]`` (1-based) per frame: "full" attention never crosses images or frames."""
    sizes = [h * w for t, h, w in _grids(image_grid_thw) for _ in range(t)]
    return np.repeat(np.arange(1, len(sizes) + 1, dtype=np.int32), sizes)


def vision_window_index(image_grid_thw, merge_size: int, window_size: int, patch_size: int):
    """Window permutation of merged tokens and the window segment ids in permuted order.

    Returns:
      window_index: ``int32 [N / merge**2]``, merged-token order used inside the vision blocks.
      window_segments: ``int32 [N]`` 1-based window id of every patch, in permuted order.
    """
    vws = window_size // merge_size // patch_size  # window side in merged tokens
    if vws < 1:
        raise ValueError(
            f"window_size {window_size} is smaller than one merged token ({merge_size * patch_size} px)"
        )
    unit = merge_size * merge_size
    index, seglens, offset = [], [], 0
    for t, h, w in _grids(image_grid_thw):
        gh, gw = h // merge_size, w // merge_size
        idx = np.arange(t * gh * gw).reshape(t, gh, gw)
        # transformers pads a whole empty window when a side is divisible by vws; empty windows vanish below.
        pad_h, pad_w = vws - gh % vws, vws - gw % vws
        nh, nw = (gh + pad_h) // vws, (gw + pad_w) // vws
        idx = np.pad(idx, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        idx = idx.reshape(t, nh, vws, nw, vws).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, vws * vws)
        for window in idx.reshape(-1, vws * vws):
            keep = window[window != -100]
            if keep.size:
                index.append(keep + offset)
                seglens.append(keep.size * unit)
        offset += t * gh * gw
    window_index = np.concatenate(index).astype(np.int32)
    window_segments = np.repeat(np.arange(1, len(seglens) + 1, dtype=np.int32), seglens)
    return window_index, window_segments


def vision_geometry(image_grid_thw, *, merge_size: int, window_size: int, patch_size: int) -> dict:
    """All index arrays the vision tower needs for the given images (see ``VisionTower.__call__``)."""
    window_index, window_segments = vision_window_index(image_grid_thw, merge_size, window_size, patch_size)
    unit = merge_size * merge_size
    # Patch-level permutation equivalent to permuting merged tokens (groups of `unit` rows).
    patch_perm = (window_index[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    full = vision_full_segments(image_grid_thw)
    return {
        "window_index": window_index,
        "reverse_index": np.argsort(window_index).astype(np.int32),
        "rope_positions": vision_position_ids(image_grid_thw, merge_size)[patch_perm],
        "window_segments": window_segments,
        "full_segments": full[patch_perm],
    }


def get_rope_index(
    input_ids,
    image_grid_thw=None,
    attention_mask=None,
    *,
    image_token_id: int,
    merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions of a batch, as transformers' ``get_rope_index`` (5.x, images).

    Args:
      input_ids: ``[B, L]`` token ids; each ``image_token_id`` run is one image, images in batch order.
      image_grid_thw: ``[n_images, 3]`` pre-merge patch grids, in the order the images appear.
      attention_mask: ``[B, L]``; positions count valid tokens only and padded slots get 0.

    Returns:
      positions ``int32 [3, B, L]`` (temporal, height, width rows) and ``rope_deltas int32 [B]``
      (decode position = cache position + delta).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    b, length = input_ids.shape
    mask = (
        np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    )
    grids = iter(_grids(image_grid_thw)) if image_grid_thw is not None else iter(())
    positions = np.zeros((3, b, length), np.int32)
    deltas = np.zeros((b,), np.int32)
    for i in range(b):
        ids = input_ids[i][mask[i]]
        is_img = ids == image_token_id
        pieces, cur, start = [], 0, 0
        # Runs of equal token type: text runs count up by one, each image run is one (t, h, w) grid.
        change = np.flatnonzero(np.diff(is_img.astype(np.int8))) + 1
        for end in list(change) + [len(ids)]:
            n = end - start
            if not is_img[start]:
                pieces.append(np.broadcast_to(np.arange(n) + cur, (3, n)))
                cur += n
            else:
                try:
                    t, h, w = next(grids)
                except StopIteration:
                    raise ValueError(
                        f"sample {i}: more image-token runs than entries in image_grid_thw"
                    ) from None
                gh, gw = h // merge_size, w // merge_size
                if t * gh * gw != n:
                    raise ValueError(
                        f"sample {i}: an image run has {n} <|image_pad|> tokens but its grid {[t, h, w]} "
                        f"needs {t * gh * gw} (adjacent images need text tokens between them)"
                    )
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
                pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur)
                cur += max(gh, gw)
            start = end
        if pieces:
            pos = np.concatenate(pieces, axis=1)
            positions[:, i, mask[i]] = pos
            deltas[i] = pos.max() + 1 - len(ids)
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more images than there are image-token runs in input_ids")
    return positions, deltas


def pad_vision(pixel_values: np.ndarray, geometry: dict, num_patches: int, merge_size: int = 2):
    """Pads patches (and their geometry) to ``num_patches`` rows so batches keep one static shape.

    Padding patches get segment id 0 (they attend to nothing and nothing attends to them) and sit after the
    real ones in both the window order and the restored order, so the first ``n_real / merge**2`` merged
    features are exactly the unpadded ones.
    """
    n = pixel_values.shape[0]
    unit = merge_size * merge_size
    if num_patches < n or num_patches % unit:
        raise ValueError(f"cannot pad {n} patches to {num_patches} (must be >= and a multiple of {unit})")
    extra, extra_merged = num_patches - n, (num_patches - n) // unit
    m = n // unit
    tail = np.arange(m, m + extra_merged, dtype=np.int32)
    return np.pad(pixel_values, ((0, extra), (0, 0))), {
        "window_index": np.concatenate([geometry["window_index"], tail]),
        "reverse_index": np.concatenate([geometry["reverse_index"], tail]),
        "rope_positions": np.pad(geometry["rope_positions"], ((0, extra), (0, 0))),
        "window_segments": np.pad(geometry["window_segments"], (0, extra)),
        "full_segments": np.pad(geometry["full_segments"], (0, extra)),
    }


def _empty_geometry() -> dict:
    return {
        "window_index": np.zeros((0,), np.int32),
        "reverse_index": np.zeros((0,), np.int32),
        "rope_positions": np.zeros((0, 2), np.int32),
        "window_segments": np.zeros((0,), np.int32),
        "full_segments": np.zeros((0,), np.int32),
    }


def vision_inputs(
    rows: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    *,
    patches_per_row: int | None,
    geometry: VisionGeometry,
    alloc: Callable[[tuple, Any], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict]:
    """Per-row ``pixel_values [B, P, patch_dim]`` and ``vision`` geometry (each array ``[B, ...]``).

    ``rows[b] = (patch chunks, grids)`` of the images of batch row b in token order. Image patches travel with
    their row, so a batch sharded over its rows gives every device the vision work of its own rows only (data-
    parallel vision) and row b's features land in row b's ``<|image_pad|>`` slots. Each row is zero-padded to
    ``P = patches_per_row`` (static shapes; None = the largest row, at least one merged token) with
    ``pad_vision`` (padding patches: segment 0, attend to nothing).
    """
    unit = geometry.unit
    counts = [sum(int(c.shape[0]) for c in chunks) for chunks, _ in rows]
    if patches_per_row is None:
        patches_per_row = max(unit, -(-max(counts, default=0) // unit) * unit)
    if max(counts, default=0) > patches_per_row:
        raise ValueError(
            f"a row has {max(counts)} vision patches but the per-row budget is {patches_per_row}"
        )
    shape = (len(rows), patches_per_row, geometry.patch_dim)
    pixels = alloc(shape, np.float32) if alloc is not None else np.zeros(shape, np.float32)
    geometries = []
    for b, (chunks, grids) in enumerate(rows):
        offset = 0
        for c in chunks:
            pixels[b, offset : offset + len(c)] = c
            offset += len(c)
        geo = geometry.of(np.concatenate(grids)) if len(grids) else _empty_geometry()
        # pad_vision pads patches and geometry together; the patches are already in place, so hand it a
        # zero-width view and keep only the geometry (saves copies of a buffer of tens of MB per row).
        geometries.append(
            pad_vision(np.empty((offset, 0), np.float32), geo, patches_per_row, geometry.merge_size)[1]
        )
    vision = {k: np.stack([g[k] for g in geometries]) for k in geometries[0]} if geometries else {}
    return pixels, vision


def split_images_by_row(input_ids: np.ndarray, image_grid_thw, pixel_values, *, image_token_id: int):
    """HF processor outputs (all images concatenated in row-major token order) → per-row (chunks, grids)."""
    ids = np.asarray(input_ids)
    is_img = ids == image_token_id
    starts = is_img & ~np.pad(is_img, ((0, 0), (1, 0)))[:, :-1]  # first token of each image run
    per_row = starts.sum(1)
    grid = np.zeros((0, 3), np.int64) if image_grid_thw is None else _grids(image_grid_thw)
    if int(per_row.sum()) != len(grid):
        raise ValueError(
            f"input_ids hold {int(per_row.sum())} image-token runs but image_grid_thw has {len(grid)}"
        )
    sizes = grid.prod(-1)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rows, k = [], 0
    for n in per_row:
        rows.append(
            (
                [pixel_values[bounds[j] : bounds[j + 1]] for j in range(k, k + n)],
                [grid[j : j + 1] for j in range(k, k + n)],
            )
        )
        k += n
    return rows
