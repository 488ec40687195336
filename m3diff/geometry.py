"""The one geometry between a model's square input and the original images (the processor's padded
square: a non-square image is padded to a centred square of its longer side, then resized).

Maps on the vision tower's patch grid go back onto an image (``grid_to_image``), boxes between original
pixels and fractions of the square (``window_to_image``, ``image_to_window``), and boxes onto patches
(``PatchGeometry``, ``patch_cover``): the app, localization, attribution, change slots and grounded
training all use these, so a map, a box and a training target always agree on where a pixel is.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def padded_square(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top): the processor's centred square around a ``width`` × ``height`` image."""
    if width < 1 or height < 1:
        raise ValueError(f"an image needs a positive size, got {width}×{height}")
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def pixel_patches(width: int, height: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(column of each pixel column [width], row of each pixel row [height]) on the ``grid`` × ``grid``
    patch grid, taken at the pixel's centre after padding to the square and resizing to the grid."""
    side, left, top = padded_square(width, height)
    cols = np.floor((np.arange(width) + left + 0.5) * grid / side).astype(np.int64)
    rows = np.floor((np.arange(height) + top + 0.5) * grid / side).astype(np.int64)
    return np.clip(cols, 0, grid - 1), np.clip(rows, 0, grid - 1)


def box_to_patches(box: Sequence[float], width: int, height: int, grid: int) -> tuple[int, int, int, int]:
    """The patches a box in original pixels falls on: (row0, col0, row1, col1), ends exclusive;
    (0, 0, 0, 0) for a box with no pixel inside the image."""
    x0, y0, x1, y1 = _clip_box(box, width, height)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, 0, 0
    cols, rows = pixel_patches(width, height, grid)
    return int(rows[y0]), int(cols[x0]), int(rows[y1 - 1]) + 1, int(cols[x1 - 1]) + 1


def patch_centers(width: int, height: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(x of each patch column's centre [grid], y of each patch row's centre [grid]) in original pixels
    (outside [0, width) / [0, height) for patches in the padding)."""
    side, left, top = padded_square(width, height)
    c = (np.arange(grid) + 0.5) * side / grid
    return c - left, c - top


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    # boxes are pixel-aligned in our data; rounding outwards keeps a fractional box's every pixel
    return (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
            min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1))))


@dataclass(frozen=True)
class PatchGeometry:
    """One image's patch grid: how many original pixels each patch shows, and where its centre is."""

    width: int
    height: int
    grid: int

    @property
    def one_hot(self) -> tuple[np.ndarray, np.ndarray]:
        cols, rows = pixel_patches(self.width, self.height, self.grid)
        g = np.arange(self.grid)
        return (rows[None, :] == g[:, None]).astype(np.float64), (cols[None, :] == g[:, None]).astype(np.float64)

    def pool(self, pixels: np.ndarray) -> np.ndarray:
        """Sum of a [height, width] array over each patch's pixels → [grid, grid]."""
        ry, rx = self.one_hot  # [g, H], [g, W]
        return ry @ np.asarray(pixels, np.float64) @ rx.T

    def content(self) -> np.ndarray:
        """Original pixels per patch [g, g] (0 for patches in the padding)."""
        cols, rows = pixel_patches(self.width, self.height, self.grid)
        return np.outer(np.bincount(rows, minlength=self.grid), np.bincount(cols, minlength=self.grid)).astype(np.float64)

    def mask(self, boxes: Iterable[Sequence[float]]) -> np.ndarray:
        """[height, width] bool: the union of the boxes."""
        m = np.zeros((self.height, self.width), bool)
        for b in boxes:
            x0, y0, x1, y1 = _clip_box(b, self.width, self.height)
            m[y0:y1, x0:x1] = True
        return m

    def inside(self, boxes: Iterable[Sequence[float]]) -> np.ndarray:
        """Original pixels per patch [g, g] that lie in the union of the boxes."""
        return self.pool(self.mask(boxes))

    def centers_inside(self, boxes: Iterable[Sequence[float]]) -> np.ndarray:
        """[g, g] bool: the patch's centre lies in a box."""
        xs, ys = patch_centers(self.width, self.height, self.grid)
        out = np.zeros((self.grid, self.grid), bool)
        for b in boxes:
            x0, y0, x1, y1 = (float(v) for v in b)
            out |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        return out


def grid_to_image(grid: np.ndarray, image_size: tuple[int, int], max_side: int | None = None) -> np.ndarray:
    """A map on the model's square input (a patch grid, or pixels) → the same map on the original image.

    ``image_size`` is the original's (width, height), as PIL gives it. The processor pads a non-square
    image to a centred square of its longer side (LlavaOnevisionImageProcessorPil.pad_to_square), then
    resizes the square to the vision tower's input: so the map's rows and columns span the padded
    square, and only its middle band covers the image. Each output pixel samples the map bilinearly at
    its centre (torch's ``align_corners=False`` convention, edges clamped). ``max_side`` caps the
    output's longer side (a browser overlay of a large photo needs a few hundred pixels).
    Returns [h, w] float32.
    """
    m = np.asarray(grid, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D [rows, cols], got shape {m.shape}")
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    side = max(w, h)
    top, left = (side - h) // 2, (side - w) // 2  # where pad_to_square put the image
    scale = 1.0 if not max_side or side <= max_side else max_side / side
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    rows = _bilinear_weights(top, h, oh, side, m.shape[0])  # [oh, G]
    cols = _bilinear_weights(left, w, ow, side, m.shape[1])  # [ow, G]
    return (rows @ m @ cols.T).astype(np.float32)


def window_to_image(window, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A window on the model's padded square input ((x0, y0, x1, y1) as fractions of the square) → the
    same window in the original image's pixels (``grid_to_image``'s geometry), clipped to the image."""
    w, h = (int(v) for v in image_size)
    side = max(w, h)
    top, left = (side - h) // 2, (side - w) // 2
    x0, y0, x1, y1 = (float(v) * side for v in window)
    clip = lambda v, hi: int(round(min(max(v, 0), hi)))  # noqa: E731
    return clip(x0 - left, w), clip(y0 - top, h), clip(x1 - left, w), clip(y1 - top, h)


def _bilinear_weights(offset: int, extent: int, n_out: int, side: int, n_grid: int) -> np.ndarray:
    """[n_out, n_grid] weights that sample a grid spanning ``side`` pixels at the centres of ``n_out``
    pixels covering ``offset .. offset + extent`` (one axis of ``grid_to_image``)."""
    px = offset + (np.arange(n_out) + 0.5) * extent / n_out  # output pixel centres, in padded-square pixels
    u = np.clip(px * n_grid / side - 0.5, 0, n_grid - 1)  # the same point, in grid cells (cell centres at k)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, n_grid - 1)
    frac = u - lo
    weights = np.zeros((n_out, n_grid), dtype=np.float64)
    np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def image_to_window(box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box in an original image's pixels → (x0, y0, x1, y1) as fractions of the padded square
    (the inverse of ``window_to_image``)."""
    side, left, top = padded_square(*(int(v) for v in image_size))
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + left) / side, (y0 + top) / side, (x1 + left) / side, (y1 + top) / side


def patch_cover(box, width: int, height: int, grid: int, min_share: float = 0.25) -> np.ndarray:
    """[g, g] bool: the patches a box (original pixels) covers by at least ``min_share`` of a patch, or
    whose box centre they hold (a small object keeps one patch) — what grounded training asks per patch."""
    side = padded_square(width, height)[0]
    covered = PatchGeometry(width, height, grid).inside([box])  # original pixels per patch
    mask = covered >= min_share * (side / grid) ** 2
    x0, y0, x1, y1 = (max(0, min(v, lim)) for v, lim in zip(box, (width, height, width, height)))
    if x1 > x0 and y1 > y0:
        cols, rows = pixel_patches(width, height, grid)
        mask[rows[min(height - 1, int((y0 + y1) / 2))], cols[min(width - 1, int((x0 + x1) / 2))]] = True
    return mask
