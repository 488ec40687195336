"""Grounded training: auxiliary losses from the generator's ground truth (ours, not the paper's).

Caption loss alone did not teach the from-scratch embedded model to read its images: after 3,000
steps its answer loss was the same with another pair of the same scene (0.952 vs 0.949). The
generator knows, for every pair, each object's kind, colour, size and box in both images and each
change's type and boxes — supervision no real dataset gives. These heads read the features the
projector reads (the MDP's F'1, F'2 for M3Diff; the vision tower's features for the no-MDP twin, so
the ablation stays fair) and ask, per patch of the patch grid:

    objects   which kind / colour / size of object covers this patch (or none), in each image
    changed   does this patch lie on a changed object, in the before image / in the after image
    type      which change type that object underwent (or none)

and per pair, which of the 12 change types occurred (pooled over the predicted change map, plus
the mean for global changes such as viewpoint and illumination), and — read from each image's mean
feature — the kinds, colours, sizes and places of the objects that changed ("facts"). The last one
matters most: an LLM trained from scratch first learns to attend to image tokens uniformly, so a
fact carried by one patch reaches it at 1/N strength, while a fact the MDP broadcasts to every token
reaches it whole (measured: without it, the LLM read neither the change nor, in scene descriptions,
single objects after 500 steps). Features that answer these
linearly are features an LLM can read the caption's facts from. The heads exist only in training;
the shipped model is the plain M3Diff (or LLaVA-OneVision) class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.scene import (
    COLOR_NAMES, DIRECTIONS, PHOTO_SHAPES, POSE_NAMES, RENDER_SHAPES, SIGN_WORDS, SIZES, SPECIAL_KINDS,
)
from m3diff.processing import IGNORE_INDEX

KINDS = RENDER_SHAPES + PHOTO_SHAPES + SPECIAL_KINDS
SEMANTIC_TYPES = tuple(t for t in TYPE_IDS if t not in DISTRACTORS)
# class 0 of every per-patch vocabulary is "nothing here"
KIND_IDS = {k: i + 1 for i, k in enumerate(KINDS)}
COLOR_IDS = {c: i + 1 for i, c in enumerate(COLOR_NAMES)}
SIZE_IDS = {s: i + 1 for i, s in enumerate(SIZES)}
PATCH_TYPE_IDS = {t: i + 1 for i, t in enumerate(SEMANTIC_TYPES)}
WORD_IDS = {w: i for i, w in enumerate(SIGN_WORDS)}
# What a changed sign, arrow, figure or counting group is in each image — the words an ocr,
# orientation, pose or counting caption must get right — as one class each (no "none" class: a
# pair without such a change is ignored by that head)
ATTRIBUTES = {
    "word": {w: i for i, w in enumerate(SIGN_WORDS)},
    "direction": {d: i for i, d in enumerate(dict.fromkeys(d for ds in DIRECTIONS.values() for d in ds))},
    "pose": {p: i for i, p in enumerate(POSE_NAMES)},
    "count": {n: n for n in range(8)},  # members of the changed counting group
}


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
        """[g, g] bool: patches that ``box`` (x0, y0, x1, y1 in original pixels) covers by at least
        ``min_share`` of the patch, or whose box centre they hold (small objects keep one patch)."""
        from analysis.localization import PatchGeometry, padded_square, pixel_patches

        side = padded_square(width, height)[0]
        covered = PatchGeometry(width, height, self.grid).inside([box])  # original pixels per patch
        mask = torch.from_numpy(covered >= min_share * (side / self.grid) ** 2)
        x0, y0, x1, y1 = (max(0, min(v, lim)) for v, lim in zip(box, (width, height, width, height)))
        if x1 > x0 and y1 > y0:
            cols, rows = pixel_patches(width, height, self.grid)
            mask[rows[min(height - 1, int((y0 + y1) / 2))], cols[min(width - 1, int((x0 + x1) / 2))]] = True
        return mask


def pair_targets(sample, geometry: ModelGrid, width: int, height: int,
                 zoom: bool = False) -> dict[str, torch.Tensor] | None:
    """Per-patch and per-pair targets of one sample, or None when it has no ground truth (real data);
    ``zoom``: also every object's row for a change zoom's heads (``zoom_objects``)."""
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
        word = torch.full((g, g), IGNORE_INDEX, dtype=torch.long)  # only a sign's own patches are asked
        for o in objs:
            m = geometry.cover(o["box"], width, height)
            kind[m], color[m], size[m] = KIND_IDS[o["kind"]], COLOR_IDS[o["color"]], SIZE_IDS[o["size"]]
            # any other object in front of a sign hides its word there
            word[m] = WORD_IDS[o["text"]] if o["kind"] == "sign" and o.get("text") in WORD_IDS else IGNORE_INDEX
        out[f"kind_{k}"], out[f"color_{k}"], out[f"size_{k}"] = kind, color, size
        out[f"word_patch_{k}"] = word
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
    for name, value in changed_attributes(sample).items():
        out[name] = torch.tensor(value, dtype=torch.long)
    if zoom:
        for k, image in enumerate(("before", "after")):
            out[f"zoom_objects_{k}"] = zoom_objects(sample, image, geometry, width, height)
    return out


# what the change zoom is asked about the object in its window (class 0 of kind / colour: no object)
ZOOM_FIELDS = ("kind", "color", "word", "direction", "pose")
ZOOM_SIZES = (len(KIND_IDS) + 1, len(COLOR_IDS) + 1, len(ATTRIBUTES["word"]), len(ATTRIBUTES["direction"]),
              len(ATTRIBUTES["pose"]))
MAX_OBJECTS = 24


def zoom_objects(sample, image: str, geometry: ModelGrid, width: int, height: int) -> torch.Tensor:
    """[MAX_OBJECTS, 10] float, one row per object of one image (NaN rows pad): its box in the
    processor's pixels (x0, y0, x1, y1), whether a semantic change touched it, then its class in each
    of ZOOM_FIELDS (IGNORE_INDEX where the field does not apply, e.g. a word for an arrow). The zoom's
    window is only known in the forward pass, so the head picks the object there (``object_in_window``)."""
    from analysis.localization import padded_square

    side, left, top = padded_square(width, height)
    scale = geometry.image_size / side
    changed = [r[image] for r in sample.regions if r.get(image) and r["type"] in PATCH_TYPE_IDS]
    rows = torch.full((MAX_OBJECTS, 5 + len(ZOOM_FIELDS)), float("nan"))
    for i, o in enumerate(sample.objects.get(image, [])[:MAX_OBJECTS]):
        x0, y0, x1, y1 = o["box"]
        rows[i, :4] = torch.tensor([(x0 + left) * scale, (y0 + top) * scale, (x1 + left) * scale, (y1 + top) * scale])
        rows[i, 4] = float(_centre_inside(o["box"], changed))
        word = ATTRIBUTES["word"].get(o.get("text")) if o["kind"] == "sign" else None
        direction = ATTRIBUTES["direction"].get(o.get("direction")) if o["kind"] == "arrow" else None
        pose = ATTRIBUTES["pose"].get(o.get("pose")) if o["kind"] == "figure" else None
        for j, value in enumerate((KIND_IDS[o["kind"]], COLOR_IDS[o["color"]], word, direction, pose)):
            rows[i, 5 + j] = IGNORE_INDEX if value is None else value
    return rows


def object_in_window(objects: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[B, len(ZOOM_FIELDS)] long: per pair, the classes of the object the window (``boxes`` [B, 4]) looks
    at — of the objects whose centre it holds, a changed one first, then the one nearest its centre
    (kind and colour 0: none; the rest IGNORE_INDEX)."""
    B = objects.shape[0]
    out = torch.full((B, len(ZOOM_FIELDS)), IGNORE_INDEX, dtype=torch.long)
    out[:, :2] = 0
    box = boxes.to(objects.dtype)
    cx, cy = (objects[..., 0] + objects[..., 2]) / 2, (objects[..., 1] + objects[..., 3]) / 2  # [B, K]
    wx, wy = ((box[:, 0] + box[:, 2]) / 2)[:, None], ((box[:, 1] + box[:, 3]) / 2)[:, None]
    inside = (cx >= box[:, 0:1]) & (cx < box[:, 2:3]) & (cy >= box[:, 1:2]) & (cy < box[:, 3:4])  # NaN rows: False
    # changed objects first (a changed object is what the caption is about), then nearest the centre
    rank = (1 - torch.nan_to_num(objects[..., 4])) * 1e6 + (cx - wx) ** 2 + (cy - wy) ** 2
    rank = torch.where(inside, rank, torch.full_like(rank, float("inf")))
    best = rank.argmin(1)
    found = torch.isfinite(rank.gather(1, best[:, None]))[:, 0]
    picked = objects[torch.arange(B), best, 5:].long()
    out[found] = picked[found]
    return out


def _centre_inside(box, boxes) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes)


def changed_attributes(sample) -> dict[str, int]:
    """``{attribute}_{k}``: per image k, the class of the changed sign's word, the changed arrow's
    heading, the changed figure's pose and the size of the changed counting group (IGNORE_INDEX when
    the pair has no such change, or a record carries no such field)."""
    out = {f"{name}_{k}": IGNORE_INDEX for name in ATTRIBUTES for k in (0, 1)}
    images = ("before", "after")
    changed = {image: [r[image] for r in sample.regions if r.get(image) and r["type"] in PATCH_TYPE_IDS]
               for image in images}
    field_of = {"sign": ("word", "text"), "arrow": ("direction", "direction"), "figure": ("pose", "pose")}
    for k, image in enumerate(images):
        for o in sample.objects.get(image, []):
            if o["kind"] in field_of and _centre_inside(o["box"], changed[image]):
                name, key = field_of[o["kind"]]
                if o.get(key) in ATTRIBUTES[name]:
                    out[f"{name}_{k}"] = ATTRIBUTES[name][o[key]]
    # a counting change's box holds the members it added or dropped; the group is every object of
    # their kind and colour (the generator gives no other object that pair)
    for r in sample.regions:
        if r["type"] != "counting":
            continue
        for image in images:
            members = [o for o in sample.objects.get(image, []) if r.get(image) and _centre_inside(o["box"], [r[image]])]
            if members:
                group = (members[0]["kind"], members[0]["color"])
                for k, other in enumerate(images):
                    n = sum((o["kind"], o["color"]) == group for o in sample.objects.get(other, []))
                    out[f"count_{k}"] = min(n, len(ATTRIBUTES["count"]) - 1)
                break
        break
    return out


# ln(166) ≈ 5.1 at the start, against ~1–3 for the other heads: halved so the word does not take the
# vision tower's updates from everything else (the mean-pooled attributes, 4 such losses, cost 9 CIDEr-D)
SIGN_WORD_WEIGHT = 0.5

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

    def __init__(self, dim: int, attributes: bool = False, attribute_pool: str = "mean", sign_words: bool = False):
        super().__init__()
        self.attribute_pool = attribute_pool
        self.sizes = (len(KIND_IDS) + 1, len(COLOR_IDS) + 1, len(SIZE_IDS) + 1)
        self.objects = nn.Linear(dim, sum(self.sizes))  # linear: the facts must be linearly readable
        self.pair = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU())
        self.patch_out = nn.Linear(dim, 2 + len(PATCH_TYPE_IDS) + 1)  # changed before/after, type
        self.types = nn.Linear(2 * dim, len(TYPE_IDS))
        # from the images' MEAN features: what changed must reach every token, where an LLM that
        # attends to the image uniformly (the first thing it learns) can read it
        self.facts = nn.Linear(2 * dim, 2 * FACTS + len(TYPE_IDS))
        # the changed sign's word, arrow's heading, figure's pose, group's size in each image, also from
        # the mean features: what ocr / orientation / pose / counting captions must say
        # (created only when asked: a head that is never trained must not shift the initial weights)
        self.attribute_sizes = tuple(len(v) for v in ATTRIBUTES.values()) * 2
        self.attributes = nn.Linear(2 * dim, sum(self.attribute_sizes)) if attributes else None
        # a sign's word from each of the sign's own patches: at 128 px a letter is ~7 px, so the word is
        # in 2–6 patches and nowhere else; a read-out there asks the tower to keep it where it is
        self.words = nn.Linear(dim, len(WORD_IDS)) if sign_words else None

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
        if self.words is not None and "word_patch_0" in targets:
            target = torch.stack([flat(targets["word_patch_0"]), flat(targets["word_patch_1"])], 1)  # [B, 2, N]
            logits = self.words(torch.stack([x1, x2], 1))  # [B, 2, N, W]
            # a batch without a visible sign adds 0, not NaN, and keeps the key (log.csv's columns)
            losses["sign_word"] = (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=IGNORE_INDEX) * SIGN_WORD_WEIGHT
                                   if (target != IGNORE_INDEX).any() else logits.sum() * 0)
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
        if self.attributes is not None and "word_0" in targets:
            # detached: the attribute losses must not bend the change map towards what is easy to name
            pooled = (torch.cat([(w.detach() * x1).sum(1), (w.detach() * x2).sum(1)], -1)
                      if self.attribute_pool == "change" else torch.cat([x1.mean(1), x2.mean(1)], -1))
            names = [f"{name}_{k}" for k in (0, 1) for name in ATTRIBUTES]
            for name, logits in zip(names, self.attributes(pooled).split(self.attribute_sizes, -1)):
                target = targets[name]
                # a batch without such a change adds 0, not NaN, and keeps the key (log.csv's columns)
                loss = (F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX) if (target != IGNORE_INDEX).any()
                        else logits.sum() * 0)
                losses[name[:-2]] = losses.get(name[:-2], 0) + loss / 2
        return losses


class ZoomHeads(nn.Module):
    """Linear read-outs of the change zoom's pooled features: the kind, colour, sign word, arrow heading
    and figure pose of the object in its window, in each image — what an ocr, orientation, pose or
    colour caption must get right, read at full resolution."""

    def __init__(self, width: int):
        super().__init__()
        self.out = nn.Linear(width, sum(ZOOM_SIZES))

    def forward(self, read: torch.Tensor, boxes: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``read``: [2B, W] (images ordered before₀, after₀, …); ``boxes``: [B, 4]."""
        total = {}
        for k in (0, 1):
            objects = targets[f"zoom_objects_{k}"]
            rows = ~torch.isnan(objects).all(-1).all(-1)  # pairs with ground truth
            want = object_in_window(objects, boxes).to(read.device)
            want[~rows] = IGNORE_INDEX
            for name, logits, target in zip(ZOOM_FIELDS, self.out(read[k::2]).split(ZOOM_SIZES, -1), want.unbind(1)):
                # a batch without such an object adds 0, not NaN, and keeps the key (log.csv's columns)
                loss = (F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
                        if (target != IGNORE_INDEX).any() else logits.sum() * 0)
                total[f"zoom_{name}"] = total.get(f"zoom_{name}", 0) + loss / 2
        return total


def object_reading_losses(zoom, heads: ZoomHeads, pixel_values: torch.Tensor, targets: dict[str, torch.Tensor],
                          n: int, jitter: int) -> dict[str, torch.Tensor]:
    """The zoom's reader asked about ``n`` objects of the batch's images, each read from a window
    centred on it (moved by up to ``jitter`` px, as the change map's peak moves): signs, arrows and
    figures first, since their word, heading or pose is what the window at the change must read, and
    a pair's own change window holds one only now and then (``zoom_obj_*`` in log.csv)."""
    images = pixel_values[:, 0] if pixel_values.dim() == 5 else pixel_values  # [2B, 3, H, W]
    objects = torch.stack([targets["zoom_objects_0"], targets["zoom_objects_1"]], 1).flatten(0, 1)  # [2B, K, 10]
    image, row = torch.nonzero(~torch.isnan(objects[..., 0]), as_tuple=True)
    if len(image) == 0:
        return {}
    fields = objects[image, row, 5:]
    special = (fields[:, 2:] != IGNORE_INDEX).any(1)
    order = torch.randperm(len(image))
    order = torch.cat([order[special[order]], order[~special[order]]])[:n]
    image, row, fields = image[order], row[order], fields[order].long()
    box = objects[image, row, :4]
    centres = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], 1)
    centres = centres + (torch.rand_like(centres) * 2 - 1) * jitter
    crops, _ = zoom.windows(images[image.to(images.device)], centres)
    return reading_losses(heads, zoom.read(crops), fields, prefix="zoom_obj_")


def reading_losses(heads: ZoomHeads, read: torch.Tensor, targets: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """Cross-entropy of the zoom's heads on pooled reads [n, W] against their classes [n, len(ZOOM_FIELDS)];
    a field no window asks adds 0, not NaN, and keeps its key (log.csv's columns)."""
    losses = {}
    logits = heads.out(read).float().split(ZOOM_SIZES, -1)
    for name, part, target in zip(ZOOM_FIELDS, logits, targets.to(read.device).unbind(1)):
        losses[f"{prefix}{name}"] = (F.cross_entropy(part, target, ignore_index=IGNORE_INDEX)
                                     if (target != IGNORE_INDEX).any() else part.sum() * 0)
    return losses


class GroundedCaptioner(nn.Module):
    """The captioning model and its training-only heads, as one module for accelerate / DDP.

    A forward pre-hook on the projector captures exactly the features it reads ([2B, N, d], images
    ordered before₀, after₀, …), for M3Diff and the no-MDP twin alike.
    """

    def __init__(self, model: nn.Module, dim: int, attributes: bool = False, attribute_pool: str = "mean",
                 sign_words: bool = False, zoom_objects: int = 0):
        super().__init__()
        self.zoom_objects = zoom_objects
        self.model = model
        self.heads = GroundingHeads(dim, attributes, attribute_pool, sign_words)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._features: list[torch.Tensor] = []
        inner.model.multi_modal_projector.register_forward_pre_hook(self._capture)
        # the change zoom, when the model has one, is asked what its window holds
        self.zoom_heads = ZoomHeads(inner.config.zoom_width) if inner.model.zoom is not None else None
        self._zoomed: list = []
        if self.zoom_heads is not None:
            inner.model.zoom.register_forward_hook(self._capture_zoom)

    def _capture(self, module, args):
        if self.training:
            self._features.append(args[0])

    def _capture_zoom(self, module, args, output):
        if self.training:
            self._zoomed.append(output)

    def forward(self, targets: dict[str, torch.Tensor] | None = None, **inputs):
        self._features.clear()
        self._zoomed.clear()
        out = self.model(**inputs)
        losses = {}
        if targets is not None and self._features:
            x = self._features[-1]  # [2B, N, d]
            losses = self.heads(x[0::2], x[1::2], targets)
        if targets is not None and self._zoomed and "zoom_objects_0" in targets:
            zoomed = self._zoomed[-1]
            losses.update(self.zoom_heads(zoomed.read, zoomed.boxes, targets))
            if self.zoom_objects:
                zoom = (self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model).model.zoom
                losses.update(object_reading_losses(zoom, self.zoom_heads, inputs["pixel_values"], targets,
                                                    self.zoom_objects, jitter=zoom.crop // 8))
        self._features.clear()
        self._zoomed.clear()
        return out, losses
