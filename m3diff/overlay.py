"""Pictures of a Description's evidence: MDP maps laid over the images they were computed from.

A map lives on the model's square input (the processor pads each image to a centred square, then
resizes it); ``m3diff.geometry.grid_to_image`` maps it back onto the original image, padding removed,
and this module only colours and blends. Everything takes and returns plain numpy / PIL data, so the
app, reports and tests share it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from m3diff.geometry import grid_to_image


def normalise(m: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant map (nothing stands out) becomes all zeros rather than NaN."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32))
    lo, hi = float(m.min()), float(m.max())
    if hi - lo < 1e-12:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def colourise(m01: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """[h, w] in [0, 1] -> [h, w, 3] uint8 through a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(m01, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, grid_map: np.ndarray, alpha: float = 0.55, cmap: str = "inferno",
            scale: tuple[float, float] | None = None) -> Image.Image:
    """``grid_map`` (on the model's padded square input) over ``image`` (RGB), blended with weight ``alpha``.

    ``scale`` = (lo, hi) maps both images of a pair onto one colour scale, so that their brightness
    can be compared; without it each map is scaled to its own range.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = grid_to_image(grid_map, image.size)  # [h, w]
    if scale is None:
        m01 = normalise(m)
    else:
        lo, hi = scale
        m01 = np.zeros_like(m) if hi - lo < 1e-12 else np.clip((m - lo) / (hi - lo), 0, 1)
    colour = Image.fromarray(colourise(m01, cmap))
    return Image.blend(image.convert("RGB"), colour, alpha)


def common_size(before: Image.Image, after: Image.Image, max_side: int = 768) -> tuple[Image.Image, Image.Image]:
    """The pair at one size (the before image's, capped at ``max_side``), e.g. for a before/after slider.

    Images of different sizes are allowed everywhere (the model resizes each anyway); a slider needs
    them aligned, so the after image is stretched to the before image's frame.
    """
    w, h = before.size
    k = min(1.0, max_side / max(w, h))
    size = (max(1, round(w * k)), max(1, round(h * k)))
    resize = Image.Resampling.LANCZOS
    b = before if before.size == size else before.resize(size, resize)
    a = after if after.size == size else after.resize(size, resize)
    return b, a
