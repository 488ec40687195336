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


@dataclass
class Description:
    caption: str
    layer_scores: dict[int, float] = field(default_factory=dict)  # mean Score (eq. 7) per MDP layer
    trace: dict | None = None  # MDPTrace.pair(): per-layer numpy maps and Score vectors
    seconds: float = 0.0
    done: bool = True  # False for the partial descriptions a stream yields

    def to_json(self, with_maps: bool = False) -> dict:
        out = {
            "caption": self.caption,
            "layer_scores": {str(k): round(v, 6) for k, v in self.layer_scores.items()},
            "seconds": round(self.seconds, 4),
        }
        if with_maps and self.trace is not None:
            out["trace"] = {
                key: {str(k): np.asarray(v).round(6).tolist() for k, v in self.trace[key].items()}
                for key in ("delta_norm", "attn_eq5", "attn_eq6")
            }
        return out


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    num_beams: int = 1
    repetition_penalty: float = 1.0


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
