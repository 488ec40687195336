"""The describing API's plain data: the settings a caller passes, the Description it gets back, and the
facts about a loaded model. No torch here: a process that only shows results (the app's web server)
imports this without paying for torch and transformers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3diff.facts import ChangeReading

EMBEDDED_DIR = Path(__file__).parent / "weights"
EMBEDDED_TWIN_DIR = EMBEDDED_DIR / "twin"  # the embedded model's no-MDP twin (same data, recipe and steps)
# the shipped models by name, for the commands that take a model folder (so they run from any directory)
SHIPPED_MODELS = {"embedded": EMBEDDED_DIR, "embedded-twin": EMBEDDED_TWIN_DIR}


def shipped_or_path(model: str | Path) -> Path:
    """``model`` as a folder: "embedded" / "embedded-twin" name the shipped models."""
    return Path(SHIPPED_MODELS.get(str(model), model))


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
    side of the vision tower's patch grid, on the processor's padded square (``m3diff.geometry.grid_to_image`` maps a
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
    # what the model's change reader read (m3diff.reader), the facts its caption was written from;
    # None for a model without a reader (the paper's)
    changes: ChangeReading | None = None

    def to_json(self, with_maps: bool = False) -> dict:
        out = {
            "caption": self.caption,
            "layer_scores": {str(k): round(v, 6) for k, v in self.layer_scores.items()},
            "seconds": round(self.seconds, 4),
        }
        if self.changes is not None:
            out["changes"] = self.changes.to_json()
        if with_maps and self.trace is not None:
            out["trace"] = self.trace.to_json()
        if with_maps and self.feature_difference is not None:
            out["feature_difference"] = np.asarray(self.feature_difference).round(6).tolist()
        return out


@dataclass(frozen=True)
class MDPKnockout:
    """An ablation of one forward pass of the MDP (``m3diff.mdp``): ``scales``, vision layer ids whose Score
    is set to zero in eq. (8) (the others renormalised); ``zero_delta``: ΔF = 0 in eq. (3). The default
    changes nothing. Plain data here, not in mdp.py, so that it crosses to a model's own process."""

    scales: tuple[int, ...] = ()
    zero_delta: bool = False

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(sorted({int(s) for s in self.scales})))

    @property
    def active(self) -> bool:
        return bool(self.scales) or self.zero_delta

    def label(self) -> str:
        parts = [f"layer {s} knocked out" for s in self.scales] + (["ΔF = 0"] if self.zero_delta else [])
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    num_beams: int = 1
    repetition_penalty: float = 1.0
    # None: plain greedy. p: the caption ends only where the model gives its end at least p
    # (m3diff.stopping: greedy ends multi-change captions early)
    min_end_probability: float | None = None
    # With a change reader: one prompt per change a caption says, each given that change alone, and
    # the answers joined in the reader's order. Given several changes at once the small language model
    # mixes their objects up: with the generator's true changes it named 92% of a lone change but 43%
    # of a four-change pair's (150 seed-777 pairs); one at a time, recall 63% -> 72%, CIDEr-D 110 -> 117.
    # False: every change in one prompt, as the model was trained. No effect without a reader.
    each_change: bool = True

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
    # whether the model has a change reader (m3diff.reader); here too so that a caller in another
    # process (the app's web server) can lay out what the model read without asking the model
    reads_changes: bool = False
