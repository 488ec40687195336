"""Pictures of a Description's evidence: MDP maps laid over the images they were computed from.

The processor resizes each image, whole, to the vision tower's square input, so a [g, g] patch map
covers the full image: stretching it back to the image's own size puts every patch where it was seen.
Everything here takes and returns plain numpy / PIL data, so the app, reports and tests share it.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

MAP_KINDS: dict[str, str] = {
    "attn_eq5": "eq. 5 attention (difference → image)",
    "attn_eq6": "eq. 6 attention (image → difference)",
    "delta_norm": "|ΔF| (feature difference norm)",
}


def pair_maps(trace: Mapping, layer: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The (before, after) maps of one MDP layer. ``delta_norm`` is one map for the pair: shown on both."""
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; known: {', '.join(MAP_KINDS)}")
    by_layer = trace[kind]
    if layer not in by_layer:
        raise ValueError(f"layer {layer} has no MDP trace; MDP layers: {sorted(by_layer)}")
    m = np.asarray(by_layer[layer], dtype=np.float32)
    if m.ndim == 2:  # [g, g]
        return m, m
    if m.ndim == 3 and m.shape[0] == 2:  # [2, g, g]: before, after
        return m[0], m[1]
    raise ValueError(f"{kind} of layer {layer} has shape {m.shape}; expected [g, g] or [2, g, g]")


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
    """``grid_map`` [g, g] stretched over ``image`` (RGB), blended with weight ``alpha``.

    ``scale`` = (lo, hi) maps both images of a pair onto one colour scale, so that their brightness
    can be compared; without it each map is scaled to its own range.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = np.asarray(grid_map, dtype=np.float32)
    if scale is None:
        m01 = normalise(m)
    else:
        lo, hi = scale
        m01 = np.zeros_like(m) if hi - lo < 1e-12 else np.clip((m - lo) / (hi - lo), 0, 1)
    heat = Image.fromarray((m01 * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    colour = Image.fromarray(colourise(np.asarray(heat, dtype=np.float32) / 255.0, cmap))
    return Image.blend(image.convert("RGB"), colour, alpha)


def overlay_pair(before: Image.Image, after: Image.Image, trace: Mapping, layer: int, kind: str,
                 alpha: float = 0.55) -> tuple[Image.Image, Image.Image]:
    """Both images with their maps of ``layer`` and ``kind`` on one shared colour scale."""
    mb, ma = pair_maps(trace, layer, kind)
    lo = float(min(mb.min(), ma.min()))
    hi = float(max(mb.max(), ma.max()))
    return overlay(before, mb, alpha, scale=(lo, hi)), overlay(after, ma, alpha, scale=(lo, hi))


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
