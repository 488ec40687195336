"""Which pixels of the two input images a chosen output depends on (captum), folded to pixels and patches.

The core works on any differentiable ``f(pixel_values[B, 2, 3, H, W]) -> [B]`` (e.g. the logit of one
word of a generated caption, with the caption so far fixed), so it is tested on a hand-made toy model.
Saliency (|gradient|) is the default: one backward pass. Integrated Gradients (zero baseline) is the
option for sharper maps when the time is there (n_steps backward passes).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("saliency", "integrated_gradients")


@dataclass(frozen=True)
class AttributionConfig:
    method: str = "saliency"
    n_steps: int = 16  # Integrated Gradients only
    patch: int = 14  # SigLIP's patch size: the grid the MDP maps live on


@dataclass
class Attribution:
    pixels: np.ndarray  # [B, 2, H, W] |attribution| summed over colour channels (before, after)
    patches: np.ndarray  # [B, 2, H // patch, W // patch] mean over each patch
    method: str
    convergence_delta: np.ndarray | None = None  # Integrated Gradients' completeness error per item


def attribute(f: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
              config: AttributionConfig | None = None) -> Attribution:
    """Attribute ``f``'s scalar output onto both images of every pair."""
    from captum.attr import IntegratedGradients, Saliency

    config = config or AttributionConfig()
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
    x = pixel_values.detach().float()
    if x.ndim != 5 or x.shape[1] != 2:
        raise ValueError(f"pixel_values must be [B, 2, 3, H, W] (before, after), got {tuple(x.shape)}")
    x = x.clone().requires_grad_(True)
    delta = None
    if config.method == "saliency":
        attr = Saliency(f).attribute(x, abs=True)
    else:
        attr, d = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), n_steps=config.n_steps,
                                                    return_convergence_delta=True)
        delta = d.detach().cpu().numpy()
    pix = attr.detach().abs().sum(2)  # [B, 2, H, W]
    b, _, h, w = pix.shape
    p = config.patch
    patches = F.avg_pool2d(pix.reshape(b * 2, 1, h, w), kernel_size=p, stride=p).reshape(b, 2, h // p, w // p)
    return Attribution(pix.cpu().numpy(), patches.cpu().numpy(), config.method, delta)


def trace_maps(trace: dict, layer: int | None = None) -> dict[str, np.ndarray]:
    """The difference-attention maps of an MDP trace (``Description.trace``) as 2-D patch grids.

    Returns {"delta_norm": [g, g], "attn_eq5": ..., "attn_eq6": ...} for one layer (default: the
    last), each a numpy array ready for ``analysis.figures.heatmap_overlay``; maps that hold one grid
    per image come back as "<name>_before" / "<name>_after".
    """
    out: dict[str, np.ndarray] = {}
    for key in ("delta_norm", "attn_eq5", "attn_eq6"):
        per_layer = trace.get(key) or {}
        if not per_layer:
            continue
        layers = sorted(per_layer, key=int)
        k = layers[-1] if layer is None else next((l for l in layers if int(l) == int(layer)), None)
        if k is None:
            continue
        m = np.asarray(per_layer[k], dtype=float)
        m = _as_grid(m)
        if m.ndim == 3 and m.shape[0] == 2:
            out[f"{key}_before"], out[f"{key}_after"] = m[0], m[1]
        elif m.ndim == 2:
            out[key] = m
    return out


def _as_grid(m: np.ndarray) -> np.ndarray:
    # a flat token axis (N = g*g) becomes a g x g grid; leading axes are kept
    if m.ndim >= 1:
        g = int(round(np.sqrt(m.shape[-1])))
        if g * g == m.shape[-1] and (m.ndim == 1 or m.shape[-1] != m.shape[-2]):
            return m.reshape(*m.shape[:-1], g, g)
    return m
