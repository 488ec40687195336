"""Do the maps point at the true change? Localization of evidence maps against ground-truth boxes.

A map is one value per vision patch of each image of the pair (``[2, g, g]``: before, after), on
the grid of the model's input. The model's input is not the original image: the processor pads a
non-square image to a centred square (the short side split floor/ceil, as transformers'
``pad_to_square`` does) and resizes that square to the model's side. Every score here is computed
on the patch grid, each patch weighted by the number of ORIGINAL pixels it shows — exactly the same
as up-sampling the map piecewise-constantly onto the original image and scoring pixels, but without
materialising the up-sampled map. Patches that show only padding weigh nothing: they hold no image,
so a map cannot point at anything there.

Scores (per image that has at least one changed box; RobustChangeCaptioning's ``evaluate_pointing``
scores the before and the after image separately and divides the hits by the number of boxes that
exist — an added object has no before box; we do the same, with the union of all changed boxes of
an image as its mask, since our pairs hold up to four changes):

- **pointing**: the map's peak lies in a changed box. Rule ``center``: the peak patch's centre lies
  in a box — what RobustChangeCaptioning measures, since it up-samples the map bilinearly and the
  maximum of a bilinear interpolant lies on a sample point, i.e. a patch centre. Rule ``overlap``
  (lenient): any pixel of the peak patch lies in a box. Ties are scored by their expectation (the
  share of the tied peak area that hits), so a flat map scores its chance level instead of "hit"
  (Quantus' pointing game counts a hit when any tied maximum hits) or "patch 0" (``np.argmax``).
- **energy**: the share of the map's non-negative mass inside the boxes (the fairer score with
  several changes, where one peak can hit only one of them). A uniform map scores the boxes' area
  share, which is reported beside it as ``area``; a map with no positive mass carries no
  information and scores as a uniform one.
- **AUROC**: how well the map's value ranks changed pixels above unchanged ones (0.5 = chance).

Baselines, scored the same way: the plain pixel difference |before − after| pooled onto the patch
grid (``pixel_difference_map``) and a uniform map (``uniform_map``).

Regions: the generator's boxes cover each changed instance's body AND its cast shadow (render: the
projected shadow polygon; photo: the drop-shadow offset), so a moved or resized object's shadow is
inside its region. ``docs/analysis.md`` reports how often the pixel-difference baseline still misses
a single change, and why.
"""
from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from m3diff.change_types import DISTRACTORS
from m3diff.describing import MAP_KINDS
from m3diff.geometry import PatchGeometry
from m3diff.images import load_image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original pixels, x1/y1 exclusive
RULES = ("center", "overlap")
SETTINGS = ("single", "multi", "distractor")  # pairs with boxes; see ``setting_of``


# -- where the model's patches lie on the original image ------------------------------------------
# -- one map against one image's boxes ---------------------------------------------------------------
@dataclass(frozen=True)
class ImageLocalization:
    pointing: float  # center rule, in [0, 1] (a fraction only when the peak is tied)
    pointing_overlap: float
    energy: float
    auroc: float | None  # None when every pixel, or none, is in a box
    area: float  # share of the image's pixels in the boxes: a uniform map's energy

    def to_dict(self) -> dict:
        return {k: (None if v is None else round(float(v), 6)) for k, v in asdict(self).items()}


def score_map(values: np.ndarray, boxes: Sequence[Sequence[float]], geometry: PatchGeometry) -> ImageLocalization | None:
    """Score one image's map [g, g] against its changed boxes; None when the image has no box."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    m = np.asarray(values, np.float64)
    g = geometry.grid
    if m.shape != (g, g):
        raise ValueError(f"a map on a {g}×{g} patch grid was expected, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("the map holds NaN or infinite values")
    w = geometry.content()
    b = geometry.inside(boxes)
    total_px = w.sum()
    area = float(b.sum() / total_px)
    shown = w > 0
    peak = m[shown].max()
    tied = shown & (m >= peak - 1e-6 * max(abs(peak), 1e-12))  # ties within float32 rounding
    tw = w[tied]
    pointing = float((tw * geometry.centers_inside(boxes)[tied]).sum() / tw.sum())
    overlap = float((tw * (b[tied] > 0)).sum() / tw.sum())
    pos = np.clip(m, 0, None)
    total = (pos * w).sum()
    energy = float((pos * b).sum() / total) if total > 0 else area
    return ImageLocalization(pointing, overlap, energy, weighted_auroc(m[shown], b[shown], w[shown] - b[shown]), area)


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float | None:
    """AUROC of ``scores`` where each entry stands for ``positive`` positive and ``negative`` negative
    samples (pixel counts of a patch): P(score of a positive > score of a negative) + ½ P(tie).

    Rank-based (Mann–Whitney) rather than scikit-learn's ``roc_auc_score``: scikit-learn is not a
    dependency of this project, and the statistic is a few lines once tied scores are grouped."""
    s = np.asarray(scores, np.float64).ravel()
    pos = np.asarray(positive, np.float64).ravel()
    neg = np.asarray(negative, np.float64).ravel()
    P, N = pos.sum(), neg.sum()
    if P <= 0 or N <= 0:
        return None
    uniq, inv = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inv, pos, len(uniq))
    neg_at = np.bincount(inv, neg, len(uniq))
    neg_below = np.cumsum(neg_at) - neg_at
    return float((pos_at * (neg_below + 0.5 * neg_at)).sum() / (P * N))


# -- ground truth of a generated pair ------------------------------------------------------------------
@dataclass(frozen=True)
class RegionTruth:
    """Where a pair changed: the union boxes of its semantic changes in each image."""

    id: str
    types: tuple[str, ...]
    domain: str
    setting: str  # see ``setting_of``
    before_size: tuple[int, int]  # (width, height)
    after_size: tuple[int, int]
    before_boxes: tuple[Box, ...]
    after_boxes: tuple[Box, ...]

    @property
    def has_boxes(self) -> bool:
        return bool(self.before_boxes or self.after_boxes)


def setting_of(types: Iterable[str], no_change: bool = False) -> str:
    """``single`` (one semantic change), ``multi`` (several), ``distractor`` (semantic changes with a
    camera or light change mixed in), ``distractor_only`` (a camera or light change alone) or
    ``no_change`` (the same scene twice)."""
    types = list(types)
    semantic = [t for t in types if t not in DISTRACTORS]
    if not semantic:
        return "distractor_only" if types and not no_change else "no_change"
    if len(semantic) < len(types):
        return "distractor"
    return "single" if len(semantic) == 1 else "multi"


def region_truth(record, before_size: tuple[int, int], after_size: tuple[int, int] | None = None) -> RegionTruth:
    """The truth of one generated pair: a split-file record (dict) or a ``DiffPair`` (its ``extra``
    holds ``regions``). ``before_size`` / ``after_size`` are the images' (width, height)."""
    if isinstance(record, Mapping):
        rid, types, domain, extra = record["id"], record.get("change_types", ()), record.get("domain", ""), record
    else:
        rid, types, domain, extra = record.id, record.change_types, record.domain, record.extra
    if "regions" not in extra:
        raise ValueError(f"pair {rid}: no 'regions' — only generated data records where its changes are")
    sem = [r for r in extra["regions"] if r.get("type") not in DISTRACTORS]
    boxes_b = tuple(tuple(r["before"]) for r in sem if r.get("before"))
    boxes_a = tuple(tuple(r["after"]) for r in sem if r.get("after"))
    return RegionTruth(rid, tuple(types), domain, setting_of(types, bool(extra.get("no_change"))),
                       tuple(before_size), tuple(after_size or before_size), boxes_b, boxes_a)


# -- baselines -----------------------------------------------------------------------------------------
def _pixels(image) -> np.ndarray:
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.float64)
    return a if a.ndim == 3 else a[..., None]


def pixel_difference_map(before, after, grid: int) -> np.ndarray:
    """|before − after| (mean over colour channels), averaged over each patch's pixels → [2, g, g].
    Images are PIL images or [H, W(, C)] arrays; an after image of another size is resized to the
    before image's size for the before map and vice versa (a difference needs aligned pixels)."""
    b, a = _pixels(before), _pixels(after)
    out = []
    for x, y in ((b, a), (a, b)):
        if y.shape[:2] != x.shape[:2]:
            img = Image.fromarray(np.clip(y, 0, 255).astype(np.uint8).squeeze())
            y = _pixels(img.resize((x.shape[1], x.shape[0]), Image.BILINEAR))
        geom = PatchGeometry(x.shape[1], x.shape[0], grid)
        diff = np.abs(x - y).mean(-1)
        out.append(geom.pool(diff) / np.maximum(geom.content(), 1))
    return np.stack(out)


def uniform_map(grid: int) -> np.ndarray:
    return np.ones((2, grid, grid))


def baseline_maps(before, after, grid: int) -> dict[str, np.ndarray]:
    """The two baselines scored beside every map: ``pixel_difference`` and ``uniform``."""
    return {"pixel_difference": pixel_difference_map(before, after, grid), "uniform": uniform_map(grid)}


# -- a pair's maps against its truth ------------------------------------------------------------------
def flatten_maps(maps: Mapping) -> dict[tuple[str, int | None], np.ndarray]:
    """{kind: [2, g, g]} or {kind: {layer: [2, g, g]}} (the trace's layout) → {(kind, layer): map}."""
    out: dict[tuple[str, int | None], np.ndarray] = {}
    for kind, v in maps.items():
        if isinstance(v, Mapping):
            for layer, m in v.items():
                out[(str(kind), int(layer))] = np.asarray(m)
        else:
            out[(str(kind), None)] = np.asarray(v)
    return out


def maps_from_trace(trace) -> dict[str, dict[int, np.ndarray]]:
    """The MDP maps of a trace (a ``PairTrace``: ``Description.trace`` / ``MDPTrace.pair``, or its
    JSON form) in the layout ``localize`` takes: {kind: {layer: [2, g, g]}}. ‖ΔF‖ (eq. 3) is one grid
    for the pair — ΔF mixes both images patch by patch — so it is scored on both images."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for kind in MAP_KINDS:
        by_layer = trace.get(kind) if isinstance(trace, Mapping) else getattr(trace, kind, None)
        for layer, m in (by_layer or {}).items():
            m = np.asarray(m, np.float64)
            if m.ndim == 2 and m.shape[0] == m.shape[1]:
                m = np.stack([m, m])
            if m.ndim != 3 or m.shape[0] != 2:
                raise ValueError(f"trace map {kind}@{layer}: expected [g, g] or [2, g, g], got {m.shape}")
            out.setdefault(kind, {})[int(layer)] = m
    return out


FEATURE_DIFFERENCE = "feature_difference"  # m3diff.modeling.feature_difference: any model has it


def description_maps(trace=None, feature_difference=None) -> dict[str, np.ndarray]:
    """Every map of one described pair by report name ({"attn_eq5@4": [2, g, g], ...,
    "feature_difference": [2, g, g]}): a ``Description``'s ``trace`` (None without MDP) and
    ``feature_difference`` ([g, g], one map for the pair, scored on both images)."""
    out = {map_name(k, l): m for k, by_layer in (maps_from_trace(trace) if trace is not None else {}).items()
           for l, m in by_layer.items()}
    if feature_difference is not None:
        fd = np.asarray(feature_difference, np.float64)
        out[FEATURE_DIFFERENCE] = np.stack([fd, fd])
    return out


def encode_maps(maps: Mapping[str, np.ndarray]) -> dict:
    """A pair's maps ({name: [2, g, g]}) as compact JSON: float16 on the patch grid, base64 — about
    1.4 kB per pair for the embedded model's 7 maps of 2 × 8 × 8 (what ``m3diff predict --maps`` stores)."""
    names = list(maps)
    stack = np.stack([np.asarray(maps[n], np.float32) for n in names]) if names else np.zeros((0, 2, 0, 0))
    if stack.ndim != 4 or stack.shape[1] != 2 or stack.shape[2] != stack.shape[3]:
        raise ValueError(f"maps must be [2, g, g] each, got {stack.shape[1:]}")
    data = np.clip(stack, -65504, 65504).astype("<f2")  # float16's range: a huge value stays huge, not inf
    return {"names": names, "grid": int(stack.shape[-1]), "float16": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_maps(entry: Mapping) -> dict[str, np.ndarray]:
    """``encode_maps``' JSON back to {name: [2, g, g] float32}; a damaged entry is a ValueError."""
    try:
        names, g = list(entry["names"]), int(entry["grid"])
        raw = base64.b64decode(entry["float16"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ValueError(f"not a maps entry written by m3diff predict --maps ({exc})") from None
    if len(raw) != len(names) * 2 * g * g * 2:
        raise ValueError(f"maps entry holds {len(raw)} bytes; {len(names)} maps of 2 × {g} × {g} float16 need "
                         f"{len(names) * 8 * g * g}")
    arr = np.frombuffer(raw, "<f2").astype(np.float32).reshape(len(names), 2, g, g)
    return {n: arr[i] for i, n in enumerate(names)}


def map_name(kind: str, layer: int | None) -> str:
    """How a (kind, layer) is named in report.json: ``attn_eq5@4``, ``pixel_difference``."""
    return kind if layer is None else f"{kind}@{layer}"


@dataclass(frozen=True)
class PairLocalization:
    id: str
    map: str  # map_name(kind, layer)
    types: tuple[str, ...]
    domain: str
    setting: str
    before: ImageLocalization | None
    after: ImageLocalization | None

    @property
    def images(self) -> list[ImageLocalization]:
        return [s for s in (self.before, self.after) if s is not None]

    def to_dict(self) -> dict:
        return {"id": self.id, "map": self.map, "types": list(self.types), "domain": self.domain,
                "setting": self.setting, "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}


def localize(truth: RegionTruth, maps: Mapping) -> list[PairLocalization]:
    """Score every map of one pair ([2, g, g] each, before then after) against its boxes; [] for a
    pair without boxes (no change, or a camera/light change alone)."""
    if not truth.has_boxes:
        return []
    out = []
    for (kind, layer), m in flatten_maps(maps).items():
        if m.ndim != 3 or m.shape[0] != 2 or m.shape[1] != m.shape[2]:
            raise ValueError(f"map {map_name(kind, layer)} of pair {truth.id}: expected [2, g, g], got {m.shape}")
        g = m.shape[1]
        sb = score_map(m[0], truth.before_boxes, PatchGeometry(*truth.before_size, g))
        sa = score_map(m[1], truth.after_boxes, PatchGeometry(*truth.after_size, g))
        out.append(PairLocalization(truth.id, map_name(kind, layer), truth.types, truth.domain, truth.setting, sb, sa))
    return out


# -- aggregation ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalizationScore:
    """One map kind on one slice. Like RobustChangeCaptioning, hits are summed over images with boxes
    and divided by their number (``n_images``); AUROC is the mean over images where it is defined."""

    n_pairs: int
    n_images: int
    pointing: float
    pointing_overlap: float
    energy: float
    area: float  # mean box share: a uniform map's energy
    auroc: float | None

    def to_dict(self) -> dict:
        return {k: (None if v is None else (v if isinstance(v, int) else round(float(v), 6)))
                for k, v in asdict(self).items()}


def _score(rows: list[PairLocalization]) -> LocalizationScore:
    imgs = [s for r in rows for s in r.images]
    au = [s.auroc for s in imgs if s.auroc is not None]
    mean = (lambda xs: float(np.mean(xs)) if xs else float("nan"))
    return LocalizationScore(len(rows), len(imgs), mean([s.pointing for s in imgs]),
                             mean([s.pointing_overlap for s in imgs]), mean([s.energy for s in imgs]),
                             mean([s.area for s in imgs]), float(np.mean(au)) if au else None)


@dataclass
class LocalizationSummary:
    """Per map: overall and per change type (a pair counts in each of its types), domain and setting."""

    maps: list[str]
    overall: dict[str, LocalizationScore] = field(default_factory=dict)
    per_type: dict[str, dict[str, LocalizationScore]] = field(default_factory=dict)  # type -> map -> score
    per_domain: dict[str, dict[str, LocalizationScore]] = field(default_factory=dict)
    per_setting: dict[str, dict[str, LocalizationScore]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def table(t):
            return {s: {m: v.to_dict() for m, v in row.items()} for s, row in t.items()}

        return {"maps": self.maps, "overall": {m: v.to_dict() for m, v in self.overall.items()},
                "per_type": table(self.per_type), "per_domain": table(self.per_domain),
                "per_setting": table(self.per_setting)}


def summarize(rows: Iterable[PairLocalization]) -> LocalizationSummary:
    rows = list(rows)
    maps = list(dict.fromkeys(r.map for r in rows))
    by_map = {m: [r for r in rows if r.map == m] for m in maps}
    out = LocalizationSummary(maps, {m: _score(rs) for m, rs in by_map.items()})
    for attr, table in (("types", out.per_type), ("domain", out.per_domain), ("setting", out.per_setting)):
        keys = {}
        for r in rows:
            for k in ([t for t in r.types if t not in DISTRACTORS] if attr == "types" else [getattr(r, attr)]):
                keys.setdefault(k, None)
        for k in keys:
            table[k] = {}
            for m, rs in by_map.items():
                sel = [r for r in rs if (k in r.types if attr == "types" else getattr(r, attr) == k)]
                if sel:
                    table[k][m] = _score(sel)
    return out


# -- a model's maps over a dataset (report.json's ``localization``) ---------------------------------------
@dataclass
class LocalizationRun:
    """One run's maps over a dataset: the summary per slice, the maps' peakedness on pairs with and
    without a change, and each scored pair's pointing per map (for the error browser)."""

    grid: int | None
    n_pairs: int
    summary: LocalizationSummary
    no_change: list["NoChangeComparison"] = field(default_factory=list)
    pairs: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"grid": self.grid, "n_pairs": self.n_pairs, "summary": self.summary.to_dict(),
                "no_change": [c.to_dict() for c in self.no_change], "pairs": self.pairs}


def evaluate_localization(maps_by_id: Mapping[str, Mapping[str, np.ndarray]], pairs: Sequence,
                          load=None) -> LocalizationRun:
    """Report.json's ``localization`` section for one run: every pair with maps and regions scored
    with its maps and the two baselines (drawn from its images), summarised overall and per type,
    domain and setting; the maps' peakedness on pairs where nothing semantic changed against pairs
    where something did; and each pair's pointing per map (mean over its images with boxes) for the
    app's error browser. ``pairs``: ``DiffPair``s (``extra`` holds ``regions``); ``load``: path →
    PIL image (default ``m3diff.images.load_image``)."""
    if load is None:
        load = load_image
    rows: list[PairLocalization] = []
    changed, unchanged = [], []
    per_pair: dict[str, dict[str, float | None]] = {}
    grid = None
    for pair in pairs:
        maps = maps_by_id.get(pair.id)
        if not maps or "regions" not in pair.extra:
            continue
        before, after = load(pair.before), load(pair.after)
        grid = next(iter(maps.values())).shape[-1]
        full = {**maps, **baseline_maps(before, after, grid)}
        truth = region_truth(pair, before.size, after.size)
        peaked = {k: v for k, v in full.items() if k != "uniform"}  # the pixel difference beside the model's maps
        if truth.setting == "no_change":
            unchanged.append(peaked)
        elif truth.has_boxes:
            changed.append(peaked)
        scored = localize(truth, full)
        rows += scored
        if scored:
            per_pair[pair.id] = {r.map: (round(float(np.mean([s.pointing for s in r.images])), 4) if r.images else None)
                                 for r in scored}
    return LocalizationRun(grid, len(per_pair), summarize(rows), compare_no_change(changed, unchanged), per_pair)


# -- no-change behaviour and one colour scale -----------------------------------------------------------
@dataclass(frozen=True)
class Peakedness:
    peak_to_mean: float  # max / mean of the non-negative map (1 = flat)
    entropy: float  # entropy of the normalised non-negative map / log(#patches): 1 = flat, 0 = one patch
    level: float  # mean value in the map's own units: how strong it is, not where

    def to_dict(self) -> dict:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def peakedness(values: np.ndarray) -> Peakedness:
    """How concentrated a map (any shape, e.g. [2, g, g]) is. A map with no positive mass is flat."""
    m = np.clip(np.asarray(values, np.float64).ravel(), 0, None)
    level = float(np.asarray(values, np.float64).mean())
    if m.sum() <= 0:
        return Peakedness(1.0, 1.0, level)
    p = m / m.sum()
    nz = p[p > 0]
    ent = float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 1.0
    return Peakedness(float(m.max() / m.mean()), ent, level)


@dataclass(frozen=True)
class NoChangeComparison:
    """One map on pairs where something changed vs pairs where nothing did. ``separability`` is the
    AUROC of peak-to-mean for telling the two apart: 0.5 means the map looks the same either way."""

    map: str
    n_changed: int
    n_unchanged: int
    changed: Peakedness  # means over pairs
    unchanged: Peakedness
    separability: float | None

    def to_dict(self) -> dict:
        return {"map": self.map, "n_changed": self.n_changed, "n_unchanged": self.n_unchanged,
                "changed": self.changed.to_dict(), "unchanged": self.unchanged.to_dict(),
                "separability": None if self.separability is None else round(self.separability, 6)}


def compare_no_change(changed: Iterable[Mapping], unchanged: Iterable[Mapping]) -> list[NoChangeComparison]:
    """``changed`` / ``unchanged``: each pair's maps ({kind: [2, g, g]} or {kind: {layer: ...}})."""
    def collect(pairs):
        out: dict[str, list[Peakedness]] = {}
        for maps in pairs:
            for (kind, layer), m in flatten_maps(maps).items():
                out.setdefault(map_name(kind, layer), []).append(peakedness(m))
        return out

    ch, un = collect(changed), collect(unchanged)
    result = []
    for name in [n for n in ch if n in un]:
        a, b = ch[name], un[name]
        mean = (lambda ps: Peakedness(*(float(np.mean([getattr(p, f) for p in ps]))
                                        for f in ("peak_to_mean", "entropy", "level"))))
        sep = weighted_auroc(np.array([p.peak_to_mean for p in a + b]), np.r_[np.ones(len(a)), np.zeros(len(b))],
                             np.r_[np.zeros(len(a)), np.ones(len(b))])
        result.append(NoChangeComparison(name, len(a), len(b), mean(a), mean(b), sep))
    return result


@dataclass(frozen=True)
class ColourScale:
    """One absolute colour scale for several maps (both images of a pair, or a pair and a reference)."""

    vmin: float
    vmax: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Values mapped to [0, 1] on this scale (clipped), for a colour map."""
        return np.clip((np.asarray(values, np.float64) - self.vmin) / (self.vmax - self.vmin), 0.0, 1.0)

    def to_dict(self) -> dict:
        return {"vmin": float(self.vmin), "vmax": float(self.vmax)}


def shared_scale(maps: Iterable[np.ndarray], vmax: float | None = None) -> ColourScale:
    """A scale anchored at 0 (non-negative maps) or symmetric around 0 (signed maps) with the largest
    value of all the maps at the top, or ``vmax`` when given (e.g. the typical peak on changed pairs).

    Not min–max per map: that stretches any map, however flat, over the whole colour range, which is
    how two identical images got a "full-strength" map. Anchored at 0, a flat map is one colour."""
    arrs = [np.asarray(m, np.float64) for m in maps]
    lo = min(float(a.min()) for a in arrs)
    hi = max(float(np.abs(a).max()) for a in arrs)
    top = float(vmax) if vmax is not None else hi
    if top <= 0:
        top = 1.0  # all-zero maps: show them as zero, not as a blown-up flat colour
    return ColourScale(0.0 if lo >= 0 else -top, top)


# -- sanity check (Adebayo et al. 2018): do the maps depend on the weights? -----------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened; tied values get their mean rank). Two
    constant maps are identical (1.0); a constant map against a varying one has no rank order (0.0)."""
    from scipy.stats import rankdata

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different shapes: {x.shape} vs {y.shape}")
    cx, cy = np.ptp(x) == 0, np.ptp(y) == 0
    if cx or cy:
        return 1.0 if cx and cy else 0.0
    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class SanityStep:
    randomised: tuple[str, ...]  # submodules re-initialised so far (cascading)
    parameters_changed: int  # parameter tensors whose values the re-initialisation changed
    correlation: dict[str, float]  # map -> mean Spearman correlation with the trained model's map
    n_pairs: int

    def to_dict(self) -> dict:
        return {"randomised": list(self.randomised), "parameters_changed": self.parameters_changed,
                "n_pairs": self.n_pairs, "correlation": {k: round(v, 6) for k, v in self.correlation.items()}}


@dataclass
class SanityCheck:
    steps: list[SanityStep]
    threshold: float
    skipped: list[str] = field(default_factory=list)  # module paths the model does not have

    @property
    def flags(self) -> dict[str, list[str]]:
        """map -> the steps after which it still correlates ≥ threshold with the trained model's map."""
        out: dict[str, list[str]] = {}
        for s in self.steps:
            for name, r in s.correlation.items():
                if r >= self.threshold:
                    out.setdefault(name, []).append("+".join(s.randomised))
        return out

    @property
    def verdicts(self) -> dict[str, str]:
        flags = self.flags
        names = list(dict.fromkeys(n for s in self.steps for n in s.correlation))
        return {n: (f"evidence does not depend on the weights: with {', '.join(flags[n])} re-initialised the map "
                    f"still correlates ≥ {self.threshold} with the trained model's" if n in flags else
                    "the map changes when the weights are destroyed (passes)") for n in names}

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "steps": [s.to_dict() for s in self.steps], "skipped": self.skipped,
                "flags": self.flags, "verdicts": self.verdicts}


def reinitialise(model, path: str) -> int:
    """Re-initialise the submodule at ``path`` (e.g. ``model.mdp``) in place with the model's own
    ``_init_weights`` (a transformers model), else each layer's ``reset_parameters``; returns how many
    parameter tensors changed. Layers the first way leaves untouched get the second (transformers
    may skip parameters it marks as already initialised)."""
    import torch

    sub = model.get_submodule(path)
    before = {n: p.detach().clone() for n, p in sub.named_parameters()}
    with torch.no_grad():
        if hasattr(model, "_init_weights"):
            sub.apply(model._init_weights)
        changed = {n for n, p in sub.named_parameters() if not torch.equal(p, before[n])}
        for mod_name, mod in sub.named_modules():
            own = [f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters(recurse=False)]
            if own and not any(n in changed for n in own) and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
    return sum(not torch.equal(p, before[n]) for n, p in sub.named_parameters())


def model_map_fn(processor) -> Callable:
    """A ``map_fn`` for ``sanity_check`` on an M3Diff model, with or without MDP: ``pair`` = (before,
    after) images (any form ``PairProcessor`` takes) → the maps of ``description_maps`` (the MDP's
    trace maps when it has an MDP, and ``feature_difference``), computed by the same call the pipeline
    makes at prefill (no caption is generated)."""
    def map_fn(model, pair):
        import torch

        batch = processor.encode_pairs([tuple(pair)]).to(model.device)
        with torch.inference_mode():
            features = model.model.get_image_features(
                batch["pixel_values"].to(model.dtype), batch["image_sizes"],
                batch_num_images=batch["batch_num_images"], output_mdp_trace=model.model.mdp is not None)
        from m3diff.modeling import feature_difference  # lazy: torch, which the web process never imports

        diff = feature_difference(features.pooler_output, model.config.patch_grid)[0].numpy()
        trace = features.mdp_trace.pair(0) if features.mdp_trace is not None else None
        return description_maps(trace, diff)

    return map_fn


def sanity_check(model, pairs: Sequence, map_fn: Callable, modules: Sequence[str] = ("model.mdp", "model.vision_tower"),
                 threshold: float = 0.8, seed: int = 20181013) -> SanityCheck:
    """Cascading randomisation: the maps of ``model`` and of copies with ``modules[0]``, then also
    ``modules[1]``, ... re-initialised, compared by Spearman rank correlation (mean over ``pairs``).

    ``map_fn(model, pair) -> maps`` ({name: array} or {kind: {layer: array}}) computes the maps; the
    trained model itself is never modified; ``seed`` is not 0 because a model built with seed 0 and
    re-initialised with seed 0 gets its own weights back (the check refuses a re-initialisation
    that changed nothing). A map that still correlates ≥ ``threshold`` after its
    weights were destroyed is flagged (``SanityCheck.flags``): such evidence shows the input, not
    what the model learned (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018)."""
    import torch

    def maps_of(m):
        return [{map_name(k, l): np.asarray(v) for (k, l), v in flatten_maps(map_fn(m, p)).items()} for p in pairs]

    reference = maps_of(model)
    work = copy.deepcopy(model)
    done: list[str] = []
    skipped: list[str] = []
    steps = []
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        for path in modules:
            try:
                sub = work.get_submodule(path)
            except AttributeError:
                sub = None
            if sub is None or not any(True for _ in sub.parameters()):
                skipped.append(path)
                continue
            n_changed = reinitialise(work, path)
            if n_changed == 0:
                raise RuntimeError(f"re-initialising {path} changed no weights; the sanity check would be void")
            done.append(path)
            current = maps_of(work)
            names = [n for n in reference[0] if all(n in c for c in current)] if reference else []
            corr = {n: float(np.mean([spearman(r[n], c[n]) for r, c in zip(reference, current)])) for n in names}
            steps.append(SanityStep(tuple(done), n_changed, corr, len(pairs)))
    return SanityCheck(steps, threshold, skipped)
