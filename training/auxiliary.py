"""Grounded training: auxiliary losses from the generator's ground truth (ours, not the paper's).

A model trained from scratch on captions alone does not learn to read its images (its answer loss is
the same with another pair of the same scene). The generator knows, for every pair, each object's kind,
colour, size and box in both images and each change's type and boxes — supervision no real dataset
gives. These heads read the features the projector reads (the MDP's F'1, F'2 for M3Diff; the vision
tower's features for the no-MDP twin, so the ablation stays fair) and ask, per patch of the patch grid:

    objects   which kind / colour / size of object covers this patch (or none), in each image
    changed   does this patch lie on a changed object, in the before image / in the after image
    type      which change type that object underwent (or none)

and per pair, which of the 12 change types occurred (pooled over the predicted change map, plus the
mean for global changes such as viewpoint and illumination), and — read from each image's mean feature
— the kinds, colours, sizes and places of the objects that changed ("facts"): an LLM trained from
scratch first attends to image tokens uniformly, so a fact carried by one patch reaches it at 1/N
strength, while a fact the MDP broadcasts to every token reaches it whole. The heads exist only in
training; the shipped model is the plain M3Diff (or LLaVA-OneVision) class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.scene import COLOR_NAMES, PHOTO_SHAPES, RENDER_SHAPES, SIZES, SPECIAL_KINDS
from m3diff.geometry import patch_cover
from m3diff.processing import IGNORE_INDEX

KINDS = RENDER_SHAPES + PHOTO_SHAPES + SPECIAL_KINDS
SEMANTIC_TYPES = tuple(t for t in TYPE_IDS if t not in DISTRACTORS)
# class 0 of every per-patch vocabulary is "nothing here"
KIND_IDS = {k: i + 1 for i, k in enumerate(KINDS)}
COLOR_IDS = {c: i + 1 for i, c in enumerate(COLOR_NAMES)}
SIZE_IDS = {s: i + 1 for i, s in enumerate(SIZES)}
PATCH_TYPE_IDS = {t: i + 1 for i, t in enumerate(SEMANTIC_TYPES)}
@dataclass(frozen=True)
class ModelGrid:
    """The model's patch grid, onto which boxes in original pixels are mapped the way the processor maps
    the image (centred square padding, then resize: ``analysis.localization``'s geometry)."""

    image_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def cover(self, box, width: int, height: int, min_share: float = 0.25) -> torch.Tensor:
        """[g, g] bool: ``m3diff.geometry.patch_cover`` of ``box`` (original pixels)."""
        return torch.from_numpy(patch_cover(box, width, height, self.grid, min_share))


def pair_targets(sample, geometry: ModelGrid, width: int, height: int) -> dict[str, torch.Tensor] | None:
    """Per-patch and per-pair targets of one sample, or None when it has no ground truth (real data)."""
    if sample.objects is None:
        return None
    g = geometry.grid
    out = {}
    for k, image in enumerate(("before", "after")):
        kind = torch.zeros(g, g, dtype=torch.long)
        color = torch.zeros(g, g, dtype=torch.long)
        size = torch.zeros(g, g, dtype=torch.long)
        # larger boxes first, so a small object in front of a large one keeps its patches
        objs = sorted(sample.objects.get(image, []), key=lambda o: -(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
        for o in objs:
            m = geometry.cover(o["box"], width, height)
            kind[m], color[m], size[m] = KIND_IDS[o["kind"]], COLOR_IDS[o["color"]], SIZE_IDS[o["size"]]
        out[f"kind_{k}"], out[f"color_{k}"], out[f"size_{k}"] = kind, color, size
        changed = torch.zeros(g, g)
        ptype = torch.zeros(g, g, dtype=torch.long)
        for r in sample.regions:
            if r.get(image) and r["type"] in PATCH_TYPE_IDS:
                m = geometry.cover(r[image], width, height, min_share=0.1)
                changed[m] = 1.0
                ptype[m] = PATCH_TYPE_IDS[r["type"]]
        out[f"changed_{k}"], out[f"ptype_{k}"] = changed, ptype
    out["types"] = torch.tensor([float(t in sample.change_types) for t in TYPE_IDS])
    for k, image in enumerate(("before", "after")):
        out[f"facts_{k}"] = changed_facts(sample, image, width, height)
    return out


FACTS = len(KIND_IDS) + len(COLOR_IDS) + len(SIZE_IDS) + 9  # kinds, colours, sizes, 3×3 place


def changed_facts(sample, image: str, width: int, height: int) -> torch.Tensor:
    """Multi-hot facts of the objects a semantic change touched in one image: their kinds, colours,
    sizes and 3×3 places — what a caption's referring part says, as one vector per pair."""
    facts = torch.zeros(FACTS)
    boxes = [r[image] for r in sample.regions if r.get(image) and r["type"] in PATCH_TYPE_IDS]
    k0, c0, s0 = len(KIND_IDS), len(KIND_IDS) + len(COLOR_IDS), len(KIND_IDS) + len(COLOR_IDS) + len(SIZE_IDS)
    for o in sample.objects.get(image, []):
        cx, cy = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
        if not any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
            continue
        facts[KIND_IDS[o["kind"]] - 1] = 1
        facts[k0 + COLOR_IDS[o["color"]] - 1] = 1
        facts[c0 + SIZE_IDS[o["size"]] - 1] = 1
        facts[s0 + 3 * min(2, int(3 * cy / height)) + min(2, int(3 * cx / width))] = 1
    return facts


def collate_targets(targets: list[dict | None]) -> dict[str, torch.Tensor] | None:
    """Stack per-sample targets; samples without ground truth are ignored by every loss."""
    ref = next((t for t in targets if t is not None), None)
    if ref is None:
        return None
    out = {}
    for key, value in ref.items():
        rows = []
        for t in targets:
            if t is not None:
                rows.append(t[key])
            elif value.dtype == torch.long:
                rows.append(torch.full_like(value, IGNORE_INDEX))
            else:
                rows.append(torch.full_like(value, float("nan")))
        out[key] = torch.stack(rows)
    return out


class GroundingHeads(nn.Module):
    """Linear read-outs of per-patch facts and a small MLP on the pair's per-patch difference."""

    def __init__(self, dim: int):
        super().__init__()
        self.sizes = (len(KIND_IDS) + 1, len(COLOR_IDS) + 1, len(SIZE_IDS) + 1)
        self.objects = nn.Linear(dim, sum(self.sizes))  # linear: the facts must be linearly readable
        self.pair = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU())
        self.patch_out = nn.Linear(dim, 2 + len(PATCH_TYPE_IDS) + 1)  # changed before/after, type
        self.types = nn.Linear(2 * dim, len(TYPE_IDS))
        # from the images' MEAN features: what changed must reach every token, where an LLM that
        # attends to the image uniformly (the first thing it learns) can read it
        self.facts = nn.Linear(2 * dim, 2 * FACTS + len(TYPE_IDS))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``x1``, ``x2``: [B, N, d] features of the before / after images. Returns the named losses."""
        B, N, _ = x1.shape
        flat = lambda t: t.reshape(B, N)  # noqa: E731  [B, g, g] → [B, N]
        losses = {}
        for k, x in enumerate((x1, x2)):
            kind, color, size = self.objects(x).split(self.sizes, -1)
            for name, logits in (("kind", kind), ("color", color), ("size", size)):
                loss = F.cross_entropy(logits.reshape(B * N, -1), flat(targets[f"{name}_{k}"]).reshape(-1),
                                       ignore_index=IGNORE_INDEX)
                losses[name] = losses.get(name, 0) + loss / 2
        h = self.pair(torch.cat([x1, x2, x1 - x2], -1))  # [B, N, d]
        out = self.patch_out(h)
        changed = torch.stack([flat(targets["changed_0"]), flat(targets["changed_1"])], -1)  # [B, N, 2]
        known = ~torch.isnan(changed)
        losses["changed"] = F.binary_cross_entropy_with_logits(out[..., :2][known], changed[known])
        ptype = torch.maximum(flat(targets["ptype_0"]), flat(targets["ptype_1"]))
        losses["patch_type"] = F.cross_entropy(out[..., 2:].reshape(B * N, -1), ptype.reshape(-1),
                                               ignore_index=IGNORE_INDEX)
        w = torch.softmax(out[..., :2].amax(-1), dim=1).unsqueeze(-1)  # [B, N, 1]: the predicted change map
        pooled = torch.cat([(w * h).sum(1), h.mean(1)], -1)
        types = targets["types"]
        rows = ~torch.isnan(types).any(-1)
        losses["types"] = F.binary_cross_entropy_with_logits(self.types(pooled)[rows], types[rows])
        facts = torch.cat([targets["facts_0"], targets["facts_1"], types], -1)
        rows = ~torch.isnan(facts).any(-1)
        logits = self.facts(torch.cat([x1.mean(1), x2.mean(1)], -1))
        losses["facts"] = F.binary_cross_entropy_with_logits(logits[rows], facts[rows]) * 10  # ~10 of 80 labels are on
        return losses


class GroundedCaptioner(nn.Module):
    """The captioning model and its training-only heads, as one module for accelerate / DDP.

    A forward pre-hook on the projector captures exactly the features it reads ([2B, N, d], images
    ordered before₀, after₀, …), for M3Diff and the no-MDP twin alike.
    """

    def __init__(self, model: nn.Module, dim: int):
        super().__init__()
        self.model = model
        self.heads = GroundingHeads(dim)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._features: list[torch.Tensor] = []
        inner.model.multi_modal_projector.register_forward_pre_hook(self._capture)

    def _capture(self, module, args):
        if self.training:
            self._features.append(args[0])

    def forward(self, targets: dict[str, torch.Tensor] | None = None, **inputs):
        self._features.clear()
        out = self.model(**inputs)
        losses = {}
        if targets is not None and self._features:
            x = self._features[-1]  # [2B, N, d]
            losses = self.heads(x[0::2], x[1::2], targets)
        self._features.clear()
        return out, losses
