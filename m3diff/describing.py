"""The describing API's plain data: the settings a caller passes, the Description it gets back, and the
facts about a loaded model. No torch here: a process that only shows results (the app's web server)
imports this without paying for torch and transformers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EMBEDDED_DIR = Path(__file__).parent / "weights"
EMBEDDED_TWIN_DIR = EMBEDDED_DIR / "twin"  # the embedded model's no-MDP twin (same data, recipe and steps)
WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")


def caption_words(caption: str) -> list[str]:
    """The words of a caption a person can point at (analysis.attribution.explain_word counts these):
    punctuation dropped; "left-hand" is one word."""
    return [m.group() for m in WORD_RE.finditer(caption.strip())]


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the source and what to do."""


# The maps of a trace a person can look at, and how the app labels them.
MAP_KINDS: dict[str, str] = {
    "attn_eq5": "eq. 5 attention (difference → image)",
    "attn_eq6": "eq. 6 attention (image → difference)",
    "delta_norm": "|ΔF| (feature difference norm)",
}


@dataclass(frozen=True)
class PairTrace:
    """What the MDP saw for one pair, as numpy, keyed by vision layer (``MDPTrace.pair``); ``g`` is the
    side of the vision tower's patch grid, on the processor's padded square (``grid_to_image`` maps a
    grid back onto an original image)."""

    layers: tuple[int, ...]
    score_mean: dict[int, float]  # mean Score, eq. (7)
    score: dict[int, np.ndarray]  # [d] Score per channel, eq. (7)
    delta_norm: dict[int, np.ndarray]  # [g, g] per-patch norm of ΔF, eq. (3): one map for the pair
    attn_eq5: dict[int, np.ndarray]  # [2, g, g] difference queries onto the before / after patches
    attn_eq6: dict[int, np.ndarray]  # [2, g, g] before / after patches onto the difference tokens

    def maps(self, layer: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """The (before, after) [g, g] maps of one layer; ``delta_norm`` is one map, shown on both."""
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown map kind {kind!r}; known: {', '.join(MAP_KINDS)}")
        by_layer: dict[int, np.ndarray] = getattr(self, kind)
        if layer not in by_layer:
            raise ValueError(f"layer {layer} has no MDP trace; MDP layers: {list(self.layers)}")
        m = np.asarray(by_layer[layer], dtype=np.float32)
        if m.ndim == 2:  # [g, g]
            return m, m
        if m.ndim == 3 and m.shape[0] == 2:  # [2, g, g]: before, after
            return m[0], m[1]
        raise ValueError(f"{kind} of layer {layer} has shape {m.shape}; expected [g, g] or [2, g, g]")

    def to_json(self) -> dict:
        return {kind: {str(k): np.asarray(v).round(6).tolist() for k, v in getattr(self, kind).items()}
                for kind in ("delta_norm", "attn_eq5", "attn_eq6")}


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


@dataclass
class Description:
    caption: str
    layer_scores: dict[int, float] = field(default_factory=dict)  # mean Score (eq. 7) per MDP layer
    trace: PairTrace | None = None  # what the MDP saw (None without MDP, or when not asked for)
    seconds: float = 0.0
    done: bool = True  # False for the partial descriptions a stream yields
    # [g, g] where the image tokens the LLM reads differ (m3diff.modeling.feature_difference); any
    # model has it, with or without MDP; None when no trace was asked for
    feature_difference: np.ndarray | None = None
    # how many things changed, as a count-first model said it before its caption (m3diff.opening);
    # None for other models, or when the model did not say it
    changes_counted: int | None = None
    # where a model with a change zoom (m3diff.zoom) read both images at full resolution: (x0, y0, x1,
    # y1) as fractions of the model's padded square input (``window_to_image`` places it on an image)
    zoom_window: tuple[float, float, float, float] | None = None

    def to_json(self, with_maps: bool = False) -> dict:
        out = {
            "caption": self.caption,
            "layer_scores": {str(k): round(v, 6) for k, v in self.layer_scores.items()},
            "seconds": round(self.seconds, 4),
        }
        if self.changes_counted is not None:
            out["changes_counted"] = self.changes_counted
        if self.zoom_window is not None:
            out["zoom_window"] = [round(float(v), 6) for v in self.zoom_window]
        if with_maps and self.trace is not None:
            out["trace"] = self.trace.to_json()
        if with_maps and self.feature_difference is not None:
            out["feature_difference"] = np.asarray(self.feature_difference).round(6).tolist()
        return out


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    num_beams: int = 1
    repetition_penalty: float = 1.0
    # None: plain greedy. p: the caption ends only where the model gives its end at least p
    # (m3diff.stopping: greedy ends multi-change captions early)
    min_end_probability: float | None = None

    def __post_init__(self):
        p = self.min_end_probability
        if p is not None and not 0.0 < p <= 1.0:
            raise ValueError(f"min_end_probability must be in (0, 1] or None, got {p}")


@dataclass(frozen=True)
class ModelInfo:
    """What a person is told about a loaded captioner (the app's model card), as plain values."""

    source: str
    trained: bool
    use_mdp: bool
    mdp_layers: tuple[int, ...]
    mdp_depth: int
    image_size: int
    num_image_tokens: int
    parameters: dict[str, int]  # m3diff info's parts: vision, projector, language_model, mdp, total
    device: str
    dtype: str
