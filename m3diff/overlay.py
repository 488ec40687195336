"""Pictures of a Description's evidence: MDP maps laid over the images they were computed from, and the
changes its change reader read drawn as boxes on the pair.

A map lives on the model's square input (the processor pads each image to a centred square, then
resizes it); ``m3diff.geometry.grid_to_image`` maps it back onto the original image, padding removed,
and this module only colours and blends. Everything takes and returns plain numpy / PIL data, so the
app, reports and tests share it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m3diff.change_types import TYPE_IDS
from m3diff.facts import ChangeFact
from m3diff.geometry import grid_to_image

# One colour per change type, shared by every drawing of read changes and by the app's list of them, so
# a box and its line match. matplotlib's tab10 hues and two more; a thin dark rim (``draw_changes``)
# keeps the light ones visible on a light image.
TYPE_COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(dict(zip(TYPE_IDS, (
    (127, 127, 127), (188, 189, 34), (44, 160, 44), (214, 39, 40), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (31, 119, 180), (57, 59, 121), (255, 217, 47), (23, 190, 207),
), strict=True)))


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


def type_colour_hex(type_: str) -> str:
    return "#%02x%02x%02x" % TYPE_COLOURS[type_]


def drawing_scale(size: tuple[int, int], min_side: int = 384, max_side: int = 768) -> float:
    """How much ``draw_changes`` enlarges (or shrinks) an image of ``size``: a 64-px upload gets labels a
    person can read, a photo stays within what a page shows."""
    long = max(size)
    return min(max(1.0, min_side / long), max_side / long)


def draw_changes(image: Image.Image, changes: Sequence[ChangeFact], side: str, frame: tuple[int, int],
                 min_side: int = 384, max_side: int = 768) -> Image.Image:
    """Each change's box on one image of its pair (``side``: "before" or "after"), outlined in its type's
    colour (``TYPE_COLOURS``) and labelled with its type; a change with no box on that side (an addition
    before, a camera change) is not drawn. ``frame``: the (width, height) the boxes are given in
    (``ChangeReading.size``); an image of another size gets them scaled, as fractions of the image.
    The image comes back scaled by ``drawing_scale``, so the labels stay legible on a small upload."""
    if side not in ("before", "after"):
        raise ValueError(f"side must be 'before' or 'after', got {side!r}")
    k = drawing_scale(image.size, min_side, max_side)
    size = (max(1, round(image.width * k)), max(1, round(image.height * k)))
    out = image.convert("RGB")
    out = out.resize(size, Image.Resampling.LANCZOS) if size != image.size else out.copy()
    sx, sy = out.width / frame[0], out.height / frame[1]
    width = max(2, round(min(out.size) / 120))
    font = ImageFont.load_default(size=max(10, round(min(out.size) / 28)))
    draw = ImageDraw.Draw(out)
    boxed = [(c, getattr(c, f"box_{side}")) for c in changes]
    boxed = [(c, (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)) for c, b in boxed if b is not None]
    for c, (x0, y0, x1, y1) in boxed:  # every box before any label: a label is never hidden under a box
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=(20, 20, 20), width=width + 2)  # the dark rim
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=TYPE_COLOURS[c.type], width=width)
    for c, (x0, y0, _, y1) in boxed:
        colour = TYPE_COLOURS[c.type]
        left, top, right, bottom = draw.textbbox((0, 0), c.type, font=font)
        w, h = right - left + 4, bottom - top + 4
        # above the box where it fits, else below it; never off the image
        y = y0 - width - h if y0 - width - h >= 0 else min(y1 + width, out.height - h)
        x = min(max(0.0, x0), max(0.0, out.width - w))
        dark_text = sum(colour) / 3 > 140
        draw.rectangle([x, y, x + w, y + h], fill=colour)
        draw.text((x + 2 - left, y + 2 - top), c.type, fill=(0, 0, 0) if dark_text else (255, 255, 255), font=font)
    return out
