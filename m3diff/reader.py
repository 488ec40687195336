"""The change reader: reads each change of a pair from the pixels, once, as facts (``m3diff.facts``).

Ours, not the paper's (the ``m3diff-7b`` preset has none). The embedded model's language model is
trained from scratch and, in every design we tried, did not learn to turn a dense feature into a
word; given the changes as words it names them and copies their values (docs/training.md,
"Designs tried"). So the reader hands the changes over as text.

- **What it sees**: both images (the processor's base image), their difference and two coordinate
  channels, through a small convolutional stack down to a 16×16 grid of tokens: four times the
  vision transformer's 8×8 patch grid, enough to tell a thin arrow's heading or count a group.
- **One slot per change type**: the generator never makes two changes of one type in a pair, so
  slot *t* is the change of type *t* and needs no set matching. A transformer layer gives the tokens
  context; a linear map per type and image says where that type's change is (trained on the true
  boxes, so every token is supervised: a decoder's learned queries over the tokens sat at chance for
  the first 300 steps); slot *t* pools the tokens its two maps point at and says whether its change
  is there, the object as it was and as it is (kind, colour, size, image cell, heading, pose), the
  counts, a camera or light change's detail, and a box in each image.
- **A sign's word** is read by a second convolutional reader from a crop of the sign's box at
  twice the pixels (``grid_sample``), which reads letters that no 16×16 grid holds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m3diff.change_types import TYPE_IDS
from m3diff.facts import (
    COLORS,
    DETAILS,
    HEADINGS,
    HORIZONTAL,
    KINDS,
    MAX_COUNT,
    POSES,
    VERTICAL,
    WORDS,
    ChangeFact,
    ObjectFact,
)

# Which image each type's object is seen in: an addition only after, a disappearance only before.
SIDES: dict[str, tuple[bool, bool]] = {t: (True, True) for t in TYPE_IDS}
SIDES.update(addition=(False, True), disappearance=(True, False), viewpoint=(False, False),
             illumination=(False, False))
SIZE_NAMES = ("small", "large")
DOMAINS = ("render", "photo")
# Per-object attribute heads: name -> number of classes.
OBJECT_HEADS: dict[str, int] = {"kind": len(KINDS), "color": len(COLORS), "size": len(SIZE_NAMES), "h": 3, "v": 3,
                                "direction": len(HEADINGS), "pose": len(POSES)}


@dataclass(frozen=True)
class ReaderConfig:
    image_size: int = 128
    width: int = 128
    heads: int = 4
    decoder_layers: int = 2  # transformer layers that give the tokens context (the name is the first design's)
    crop_height: int = 24
    crop_width: int = 64
    # the presence probability from which a change counts as read; `m3diff reader calibrate` sets it
    # on pairs the reader never trained on (the F1 of the changes a caption says, objects named right)
    threshold: float = 0.5
    # side in pixels of the square crop the shape reader reads an object's kind, heading and pose
    # from (0: no shape reader; those then come from the 16×16 grid alone)
    shape_crop: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "ReaderConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``images`` [N, 3, S, S], ``boxes`` [N, 4] (x0, y0, x1, y1 in 0..1) → [N, 3, height, width] crops
    (zeros where a box leaves the image)."""
    n = images.shape[0]
    ys = torch.linspace(0, 1, height, device=images.device, dtype=images.dtype)
    xs = torch.linspace(0, 1, width, device=images.device, dtype=images.dtype)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    gx = (x0 + (x1 - x0) * xs[None]) * 2 - 1  # [N, w]
    gy = (y0 + (y1 - y0) * ys[None]) * 2 - 1  # [N, h]
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(images, grid.reshape(n, height, width, 2), mode="bilinear", align_corners=True)


def square_boxes(boxes: torch.Tensor, margin: float = 1.25) -> torch.Tensor:
    """The square around each box's centre with ``margin`` times its longer side: a crop that keeps the
    object's proportions (a cube and a tall cylinder stay apart) and some of what surrounds it."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True).clamp(min=0.02) * margin / 2
    return torch.cat([centre - half, centre + half], 1)


# What the shape reader reads: name -> number of classes.
SHAPE_HEADS: dict[str, int] = {"kind": len(KINDS), "direction": len(HEADINGS), "pose": len(POSES)}


class ShapeReader(nn.Module):
    """An object's kind, an arrow's heading and a figure's pose from a square crop around its box.

    The 16×16 grid the slots read from has 8-px cells: a 20-px cube and cylinder differ there by a
    few pixels of outline, and the slots named the kind of 67% of the changed objects, a heading 57%
    and a pose 43% (1,200 seed-777 pairs, shipped reader at 0.5). Colour, size and place, which the
    grid reads well (89-94%), stay with the slots. ``read`` multiplies its probabilities with the slot's:
    the slots' predicted boxes miss a third of the time (mean IoU 0.33), where the crop alone is lost
    (on true boxes it names 95% of kinds, at predicted ones alone 52%, with the slot's guess 80%, once
    trained at predicted boxes too: ``m3diff reader shapes --from-predicted``). The boxes it is
    handed are now centred on their maps first (``centred_boxes``: IoU 0.49)."""

    def __init__(self, cfg: ReaderConfig):
        super().__init__()
        self.cfg = cfg
        side = cfg.shape_crop
        self.net = nn.Sequential(_conv(3, 32, 1), _conv(32, 64, 2), _conv(64, 96, 2), _conv(96, 128, 2))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(128 * (side // 8) ** 2, 256), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, k) for name, k in SHAPE_HEADS.items()})

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        side = self.cfg.shape_crop
        x = self.body(self.net(crop_boxes(images, square_boxes(boxes), side, side)))
        return {name: head(x) for name, head in self.heads.items()}


class WordReader(nn.Module):
    """A sign's word from a crop of its box: a small CNN over the crop, pooled over its height."""

    def __init__(self, cfg: ReaderConfig):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(_conv(3, 32, 1), _conv(32, 64, 2), _conv(64, 96, 2), _conv(96, 128, 1))
        self.head = nn.Linear(128 * (cfg.crop_width // 4), len(WORDS))

    def crop(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return crop_boxes(images, boxes, self.cfg.crop_height, self.cfg.crop_width)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = self.net(self.crop(images, boxes)).mean(2)  # [N, C, w/4]
        return self.head(x.flatten(1))


class ChangeReader(nn.Module):
    def __init__(self, cfg: ReaderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ReaderConfig()
        w = cfg.width
        n = len(TYPE_IDS)
        self.stem = nn.Sequential(_conv(11, 32, 2), _conv(32, 64, 2), _conv(64, 64, 1), _conv(64, w, 2), _conv(w, w, 1))
        grid = cfg.image_size // 8
        self.pos = nn.Parameter(torch.randn(1, grid * grid, w) * 0.02)
        layer = nn.TransformerEncoderLayer(w, cfg.heads, 2 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.context = nn.TransformerEncoder(layer, cfg.decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        # where each type's change is, in each image: trained on the true boxes; each slot reads its
        # change's object from the tokens its own map points at, so no slot has to learn to search
        self.maps = nn.Linear(w, n * 2)
        self.type_embedding = nn.Parameter(torch.randn(n, w) * 0.02)
        self.slot = nn.Sequential(nn.Linear(3 * w, w), nn.GELU(), nn.Linear(w, w))
        # an object's colour straight from its pixels (a per-pixel colour embedding, mean- and max-pooled per
        # cell): through the deep stem alone the colour heads stayed near chance for 600 steps
        self.colour = nn.Sequential(nn.Conv2d(3, 32, 1), nn.GELU(), nn.Conv2d(32, 32, 1))
        self.side = nn.Sequential(nn.Linear(2 * w + 64, w), nn.GELU(), nn.Linear(w, w))
        self.present = nn.Linear(w, 1)
        self.map_gain = nn.Parameter(torch.tensor(1.0))
        self.objects = nn.ModuleDict({f"{side}_{name}": nn.Linear(w, k) for side in ("before", "after")
                                      for name, k in OBJECT_HEADS.items()})
        self.counts = nn.ModuleDict({side: nn.Linear(w, MAX_COUNT + 1) for side in ("before", "after")})
        self.detail = nn.Linear(w, len(DETAILS))
        self.domain = nn.Linear(w, len(DOMAINS))  # names the vertical cell: back/front or top/bottom
        self.boxes = nn.Linear(w, 4)
        self.words = WordReader(cfg)
        self.shapes = ShapeReader(cfg) if cfg.shape_crop else None

    def forward(self, before: torch.Tensor, after: torch.Tensor, true_maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``before``/``after`` [B, 3, S, S] as the processor normalises them → per-slot logits
        ([B, 12, …]), boxes ([B, 12, 2, 4], x0 y0 x1 y1 in 0..1) and the maps' logits ([B, N, 12, 2]).
        ``true_maps`` (training only, [B, N, 12, 2] of 0/1): the objects are read where the true maps
        say, so the object heads learn from the right tokens while the maps still learn where."""
        b, _, s, _ = before.shape
        if s != self.cfg.image_size:
            before, after = (F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bilinear", align_corners=False)
                             for x in (before, after))
            s = self.cfg.image_size
        coords = torch.linspace(-1, 1, s, device=before.device, dtype=before.dtype)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        x = torch.cat([before, after, after - before, xx.expand(b, 1, s, s), yy.expand(b, 1, s, s)], 1)
        tokens = self.norm(self.context(self.stem(x).flatten(2).transpose(1, 2) + self.pos))  # [B, N, w]
        n = len(TYPE_IDS)
        maps = self.maps(tokens).view(b, -1, n, 2)
        weights = maps.float().sigmoid()
        if true_maps is not None:  # where a type's true map is empty (the change is absent) keep its own
            known = true_maps.sum(1, keepdim=True) > 0
            weights = torch.where(known, true_maps.float(), weights)
        weights = (weights + 1e-4) / (weights.sum(1, keepdim=True) + 1e-4 * weights.shape[1])
        pooled = torch.einsum("bnts,bnw->btsw", weights.to(tokens.dtype), tokens)  # [B, 12, 2, w]
        colours = []
        for k, image in enumerate((before, after)):
            c = self.colour(F.avg_pool2d(image, 4))  # 4-px blocks: an object still fills some of them whole
            cells = torch.cat([F.avg_pool2d(c, 2), F.max_pool2d(c, 2)], 1).flatten(2).transpose(1, 2)  # [B, N, 64]
            colours.append(torch.einsum("bnt,bnc->btc", weights[..., k].to(cells.dtype), cells))
        colours = torch.stack(colours, 2)  # [B, 12, 2, 64]
        glob = tokens.mean(1)
        slot = self.slot(torch.cat([pooled[:, :, 0], pooled[:, :, 1], glob[:, None].expand(-1, n, -1)], -1))
        slot = slot + self.type_embedding
        sides = self.side(torch.cat([pooled, colours, slot[:, :, None].expand(-1, -1, 2, -1)], -1)) + pooled
        # the strongest cell of a type's maps says most of whether that change is there
        strongest = maps.amax(1).amax(-1)
        out = {"present": self.present(slot).squeeze(-1) + self.map_gain * strongest, "detail": self.detail(slot),
               "domain": self.domain(glob), "boxes": self.boxes(sides).sigmoid(), "maps": maps}
        for k, (side, name) in enumerate((s_, nm) for s_ in ("before", "after") for nm in OBJECT_HEADS):
            out[f"{side}_{name}"] = self.objects[f"{side}_{name}"](sides[:, :, 0 if side == "before" else 1])
        out.update({f"{k}_count": head(sides[:, :, i]) for i, (k, head) in enumerate(self.counts.items())})
        return out

    @torch.no_grad()
    def read(self, before: torch.Tensor, after: torch.Tensor, sizes: list[tuple[int, int]],
             threshold: float | None = None) -> list[list[ChangeFact]]:
        """The changes of each pair as facts; ``sizes``: (width, height) of each pair's images, the
        pixels the boxes are given in; ``threshold``: None for the calibrated one (``cfg.threshold``)."""
        threshold = self.cfg.threshold if threshold is None else threshold
        out = self.forward(before, after)
        domains = [DOMAINS[int(i)] for i in out["domain"].argmax(-1)]
        prob = out["present"].float().sigmoid()
        grid = self.cfg.image_size // 8
        boxes = centred_boxes(out["maps"].float().sigmoid(), ordered_boxes(out["boxes"].float()), grid)
        results = []
        for i in range(before.shape[0]):
            w, h = sizes[i]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            facts = []
            for t, type_ in enumerate(TYPE_IDS):
                p = float(prob[i, t])
                if p < threshold:
                    continue
                has_before, has_after = SIDES[type_]
                objs = {}
                for side, on, image in (("before", has_before, before), ("after", has_after, after)):
                    if not on:
                        continue
                    pick = {name: int(out[f"{side}_{name}"][i, t].argmax()) for name in OBJECT_HEADS}
                    box = boxes[i, t, 0 if side == "before" else 1][None].to(image.dtype)
                    if self.shapes is not None:
                        for name, v in self.shapes(image[i : i + 1], box).items():
                            joint = v[0].float().log_softmax(-1) + out[f"{side}_{name}"][i, t].float().log_softmax(-1)
                            pick[name] = int(joint.argmax())
                    kind = KINDS[pick["kind"]]
                    text = ""
                    if kind == "sign":
                        text = WORDS[int(self.words(image[i : i + 1], box).argmax())]
                    objs[side] = ObjectFact(
                        kind, COLORS[pick["color"]], SIZE_NAMES[pick["size"]], HORIZONTAL[pick["h"]],
                        VERTICAL[domains[i]][pick["v"]], text=text,
                        direction=HEADINGS[pick["direction"]] if kind == "arrow" else "",
                        pose=POSES[pick["pose"]] if kind == "figure" else "")
                counting = type_ == "counting"
                facts.append(ChangeFact(
                    type_, objs.get("before"), objs.get("after"),
                    int(out["before_count"][i, t].argmax()) if counting else 0,
                    int(out["after_count"][i, t].argmax()) if counting else 0,
                    DETAILS[int(out["detail"][i, t].argmax())] if type_ in ("viewpoint", "illumination") else "",
                    tuple((boxes[i, t, 0] * scale).tolist()) if has_before else None,
                    tuple((boxes[i, t, 1] * scale).tolist()) if has_after else None,
                    round(p, 4)))
            results.append(facts)
        return results


def centred_boxes(maps: torch.Tensor, boxes: torch.Tensor, grid: int, radius: int = 3,
                  floor: float = 0.3) -> torch.Tensor:
    """Each box moved to where its type's map points, keeping the box's own width and height.

    ``maps`` [B, grid², 12, 2] (probabilities), ``boxes`` [B, 12, 2, 4] (0..1). The new centre is the
    probability-weighted mean of the cells within ``radius`` cells of the map's peak that reach
    ``floor`` times the peak. Why: the regressed boxes miss (mean IoU 0.33 with the true box on 300
    seed-777 pairs) where the map's peak lies on the changed object 84% of the time; centred there,
    IoU 0.49, and the crop readers name the object's kind 81% of the time instead of 67%, a sign's
    word 57% instead of 38%."""
    b, _, n, s = maps.shape
    g = maps.permute(0, 2, 3, 1).reshape(b, n, s, grid, grid)
    peak = g.flatten(-2).argmax(-1)  # [B, 12, 2]
    py, px = (peak // grid).float(), (peak % grid).float()
    cells = torch.arange(grid, device=maps.device, dtype=maps.dtype)
    near_y = (cells - py[..., None]).abs() <= radius  # [B, 12, 2, grid]
    near_x = (cells - px[..., None]).abs() <= radius
    near = near_y[..., :, None] & near_x[..., None, :]
    top = g.flatten(-2).amax(-1)[..., None, None]
    w = torch.where(near & (g >= floor * top), g, torch.zeros_like(g))
    w = w / w.sum((-2, -1), keepdim=True).clamp(min=1e-12)
    cy = ((cells[:, None] + 0.5) * w).sum((-2, -1)) / grid
    cx = ((cells[None, :] + 0.5) * w).sum((-2, -1)) / grid
    half_w, half_h = (boxes[..., 2] - boxes[..., 0]) / 2, (boxes[..., 3] - boxes[..., 1]) / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)


def ordered_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes whose corners came out swapped, as (min, min, max, max)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([torch.minimum(x0, x1), torch.minimum(y0, y1), torch.maximum(x0, x1), torch.maximum(y0, y1)], -1)
