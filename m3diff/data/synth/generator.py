"""``m3diff synth``: an OmniDiff-style procedural benchmark with all 12 change types.

Pair ``i`` is a pure function of (seed, i): its split from ``i`` (8:1:1), its primary change type
and domain from its position inside that split (so every split holds every type as soon as it has
12 pairs), and everything random from ``numpy.random.default_rng([seed, i])``. Scenes are split
8:1:1 by scene index and a pair draws its scene from its own split's scenes, so no scene crosses
splits. Output is byte-identical for any number of worker processes.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.layout import dumps_records
from m3diff.data.synth import photo as photo_mod
from m3diff.data.synth import render as render_mod
from m3diff.data.synth.captions import Ref, cell, relation, write_captions, write_no_change_captions
from m3diff.data.synth.changes import Change, apply_changes, base_scene, ground_coords, populate
from m3diff.data.synth.fonts import FontCache
from m3diff.data.synth.scene import Scene

SEMANTIC = tuple(t for t in TYPE_IDS if t not in DISTRACTORS)
DOMAINS = ("render", "photo")
SPLIT_OF_DIGIT = ("train",) * 8 + ("val", "test")
N_CHANGES_P = {1: 0.4, 2: 0.25, 3: 0.2, 4: 0.15}


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    pairs: int = 1000
    size: int = 128
    references: int = 3
    render_scenes: int = 100
    distractor_only: float = 0.5  # share of viewpoint/illumination-primary pairs with no semantic change
    mixed_distractor: float = 0.2  # chance that a semantic pair also carries a camera or light change
    # share of pairs whose after image shows the same scene as the before image (identical, or only
    # re-encoded as JPEG / with sensor noise); the first 24 pairs of a split never are, so any split
    # of 24 pairs still holds every type in both domains
    no_change: float = 0.06

    def __post_init__(self):
        if not 64 <= self.size <= 512:
            raise ValueError(f"size must be between 64 and 512 pixels, got {self.size}")
        if self.pairs < 1:
            raise ValueError("pairs must be at least 1")
        if self.references < 1:
            raise ValueError("references must be at least 1")
        if not 0 <= self.no_change < 1:
            raise ValueError(f"no_change must be a share in [0, 1), got {self.no_change}")

    @classmethod
    def from_dict(cls, settings) -> SynthConfig:
        """Settings as ``synth_config.json`` (or a report's ``meta.generator``) holds them, checked: a
        report may come from anyone, and regenerating its pairs must stay a small, bounded job."""
        if not isinstance(settings, dict):
            raise ValueError(f"generator settings must be a JSON object, got {type(settings).__name__}")
        known = {f: type(v) for f, v in asdict(cls()).items()}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown generator settings: {', '.join(map(str, unknown))}")
        values = {}
        for name, value in settings.items():
            kind = known[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"generator setting {name} must be a number{' (whole)' if kind is int else ''}, got {value!r}")
            values[name] = kind(value)
        cfg = cls(**values)
        for name, most in (("pairs", 10**8), ("references", 50), ("render_scenes", 100_000)):
            if getattr(cfg, name) > most:
                raise ValueError(f"generator setting {name}={getattr(cfg, name)} is more than {most}")
        return cfg


def split_position(index: int) -> tuple[str, int]:
    """(split, index of the pair inside its split)."""
    block, digit = divmod(index, 10)
    split = SPLIT_OF_DIGIT[digit]
    return split, (block * 8 + digit if split == "train" else block)


def scene_catalog(cfg: SynthConfig) -> dict[tuple[str, str], list[int]]:
    """Scene indices per (domain, split): scene ``s`` belongs to split ``SPLIT_OF_DIGIT[s % 10]``."""
    out: dict[tuple[str, str], list[int]] = {}
    counts = {"render": cfg.render_scenes, "photo": len(photo_mod.photo_tiles())}
    for domain, n in counts.items():
        for s in range(n):
            out.setdefault((domain, SPLIT_OF_DIGIT[s % 10]), []).append(s)
    return out


def plan_types(primary: str, cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    if primary in DISTRACTORS:
        if rng.random() < cfg.distractor_only:
            return [primary]
        k = int(rng.integers(1, 4))
        return [primary] + [str(t) for t in rng.choice(SEMANTIC, k, replace=False)]
    n = int(rng.choice(list(N_CHANGES_P), p=list(N_CHANGES_P.values())))
    others = [t for t in SEMANTIC if t != primary]
    types = [primary] + [str(t) for t in rng.choice(others, n - 1, replace=False)]
    if n < 4 and rng.random() < cfg.mixed_distractor:
        types.append("viewpoint" if rng.random() < 0.5 else "illumination")
    return types


@dataclass(frozen=True)
class _Plan:
    id: str
    split: str
    domain: str
    scene_id: str
    before: Scene
    after: Scene
    changes: list
    rng: np.random.Generator  # goes on to phrase the references
    unchanged: np.random.Generator  # a no-change pair's own stream (perturbation, references)
    no_change: bool


class Worker:
    """Everything one process needs to make pairs: config, scene list and its caches."""

    def __init__(self, cfg: SynthConfig, out: Path | None):
        self.cfg = cfg
        self.out = out
        self.catalog = scene_catalog(cfg)
        self.tiles = photo_mod.photo_tiles()
        self.fonts = FontCache()
        self.render_cache = render_mod.RenderCache(self.fonts)
        self.photos = photo_mod.PhotoLibrary()

    def draw(self, scene: Scene):
        if scene.domain == "render":
            return render_mod.render(scene, self.cfg.size, self.render_cache)
        return photo_mod.render(scene, self.cfg.size, self.photos, self.fonts)

    def _plan(self, index: int) -> _Plan:
        """Everything pair ``index`` is before it is drawn: scenes, changes and whether it is a no-change pair."""
        cfg = self.cfg
        split, k = split_position(index)
        primary = TYPE_IDS[k % len(TYPE_IDS)]
        domain = DOMAINS[(k // len(TYPE_IDS)) % 2]
        rng = np.random.default_rng([cfg.seed, index])
        scenes = self.catalog[(domain, split)]
        s = scenes[int(rng.integers(len(scenes)))]
        spec_rng = np.random.default_rng([cfg.seed, 1_000_003, DOMAINS.index(domain), s])
        scene_id = f"{domain}-{s:03d}"
        tile = self.tiles[s] if domain == "photo" else None
        for attempt in range(20):
            types = plan_types(primary, cfg, rng)
            before = populate(base_scene(domain, scene_id, spec_rng if attempt == 0 else
                                         np.random.default_rng([cfg.seed, 1_000_003, DOMAINS.index(domain), s]),
                                         rng, tile), types, rng)
            after, changes = apply_changes(before, types, rng)
            if any(c.type == primary for c in changes):
                break
        else:  # pragma: no cover - the scene builder always makes room for the primary type
            raise RuntimeError(f"pair {index}: could not apply a {primary} change")
        unchanged = np.random.default_rng([cfg.seed, index, 17])  # its own stream: other pairs stay as they were
        no_change = k >= 24 and unchanged.random() < cfg.no_change
        return _Plan(f"s{cfg.seed}-{index:06d}", split, domain, scene_id, before, after, changes, rng, unchanged,
                     no_change)

    def facts(self, index: int) -> tuple:
        """What the references of pair ``index`` can say, as a hashable key: two pairs with the same key
        get references drawn from the same phrasings, so no describer that learnt from them can tell
        the pairs apart in words (a no-change pair's key is empty)."""
        plan = self._plan(index)
        if plan.no_change:
            return ()
        changes = describe(plan.before, plan.after, plan.changes)
        said = [c for c in changes if c.type not in DISTRACTORS] or changes
        distractor_only = all(c.type in DISTRACTORS for c in said)
        items = sorted(repr((c.type, c.n_before, c.n_after, c.detail, c.ref_before, c.ref_after)) for c in said)
        # the backdrop is only named in captions of semantic changes (write_caption's context phrase)
        backdrop = "" if distractor_only else (plan.before.floor if plan.domain == "render" else plan.before.photo)
        return (plan.domain, backdrop, *items)

    def make(self, index: int):
        """(record, before image, after image, scene objects) of pair ``index``."""
        cfg = self.cfg
        plan = self._plan(index)
        pid, split, domain, scene_id, before, after, changes, rng = (
            plan.id, plan.split, plan.domain, plan.scene_id, plan.before, plan.after, plan.changes, plan.rng)
        img_b, boxes_b = self.draw(before)
        if plan.no_change:
            img_a, perturbation = perturb(img_b, plan.unchanged)
            record = {
                "id": pid, "before": f"images/{pid}_before.png", "after": f"images/{pid}_after.png",
                "captions": write_no_change_captions(plan.unchanged, cfg.references), "change_types": [],
                "domain": domain, "scene": scene_id, "regions": [], "no_change": perturbation,
                "objects": {"before": object_boxes(before, boxes_b), "after": object_boxes(before, boxes_b)},
                "changes": [],
            }
            return split, record, img_b, img_a
        img_a, boxes_a = self.draw(after)
        changes = describe(before, after, changes)
        semantic = [c for c in changes if c.type not in DISTRACTORS]
        captions = write_captions(semantic or changes, domain, rng, cfg.references,
                                  backdrop=before.floor if domain == "render" else before.photo)
        regions = []
        for c in changes:
            regions.append({"type": c.type, "before": _union(boxes_b, c.before_uids),
                            "after": _union(boxes_a, c.after_uids)})
        record = {
            "id": pid, "before": f"images/{pid}_before.png", "after": f"images/{pid}_after.png",
            "captions": captions,
            "change_types": [t for t in TYPE_IDS if any(c.type == t for c in changes)],
            "domain": domain, "scene": scene_id, "regions": regions,
            "objects": {"before": object_boxes(before, boxes_b), "after": object_boxes(after, boxes_a)},
            "changes": [change_record(c, boxes_b, boxes_a) for c in changes],
        }
        return split, record, img_b, img_a


def pair_index(cfg: SynthConfig, pair_id: str) -> int:
    """The index of pair ``pair_id`` (``s{seed}-{index:06d}``) in the data set ``cfg`` generates.
    Raises ValueError when the id was not made by these settings (another seed, or past ``cfg.pairs``)."""
    m = re.fullmatch(r"s(-?\d+)-(\d+)", str(pair_id))
    if m is None:
        raise ValueError(f"{pair_id!r} is not a generated pair id (expected 's<seed>-<index>', e.g. 's0-000042')")
    seed, index = int(m.group(1)), int(m.group(2))
    if seed != cfg.seed:
        raise ValueError(f"pair {pair_id} was generated with seed {seed}, not with these settings' seed {cfg.seed}")
    if index >= cfg.pairs:
        raise ValueError(f"pair {pair_id}: index {index} is past the {cfg.pairs} pairs these settings generate")
    return index


def regenerate(cfg: SynthConfig, pair_id: str, worker: Worker | None = None):
    """(record, before image, after image) of one pair, exactly as ``generate(cfg, ...)`` wrote it:
    a pair is a pure function of (settings, index), so a report of generated data needs no images.
    ``worker`` reuses one ``Worker(cfg, None)`` (its caches) across calls."""
    index = pair_index(cfg, pair_id)
    if worker is not None and worker.cfg != cfg:
        raise ValueError("the worker was built for other settings than the pair's")
    _, record, before, after = (worker or Worker(cfg, None)).make(index)
    return record, before, after


def pair_facts(cfg: SynthConfig, pair_ids) -> list[tuple]:
    """``Worker.facts`` of each generated pair (ids as ``pair_index`` reads them), without drawing images."""
    worker = Worker(cfg, None)
    return [worker.facts(pair_index(cfg, pid)) for pid in pair_ids]


def object_boxes(scene: Scene, boxes) -> list[dict]:
    """Every object drawn in one image: what it is and its pixel box, and for a sign, an arrow or a
    figure its word, heading or pose — the ground truth that grounded training reads (no real dataset
    has it). Members of a counting group share kind and colour (no other objects do)."""
    out = []
    for o in scene.objects:
        if o.uid not in boxes:
            continue
        rec = {"uid": o.uid, "kind": o.kind, "color": o.color, "size": o.size, "box": list(boxes[o.uid])}
        rec.update({k: v for k, v in (("text", o.text), ("direction", o.direction), ("pose", o.pose)) if v})
        out.append(rec)
    return out


def change_record(c: Change, boxes_b, boxes_a) -> dict:
    """One change as the facts a caption is written from (``m3diff.facts.ChangeFact.from_json`` reads
    it): the object as it was and as it is, counts, a camera or light change's detail, and a box in
    each image (the changed instances, else the object referred to)."""
    def ref(r):
        if r is None:
            return None
        out = {"kind": r.kind, "color": r.color, "size": r.size, "h": r.h, "v": r.v}
        out.update({k: v for k, v in (("text", r.text), ("direction", r.direction), ("pose", r.pose)) if v})
        return out

    rec = {"type": c.type, "before": ref(c.ref_before), "after": ref(c.ref_after),
           "box_before": _union(boxes_b, c.before_uids or (c.subject,)) if c.ref_before is not None else None,
           "box_after": _union(boxes_a, c.after_uids or (c.result,)) if c.ref_after is not None else None}
    if c.type == "counting":
        rec.update(n_before=c.n_before, n_after=c.n_after)
    if c.detail:
        rec["detail"] = dict(c.detail)
    return rec


def perturb(img, rng: np.random.Generator):
    """The after image of a no-change pair: the same pixels, a JPEG re-encoding, or faint sensor noise."""
    kind = ("identical", "jpeg", "noise")[int(rng.integers(3))]
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), kind
    if kind == "noise":
        a = np.asarray(img, np.float32) + rng.normal(0, float(rng.uniform(1, 3)), (img.height, img.width, 3))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)), kind
    return img.copy(), kind


def _union(boxes, uids):
    bs = [boxes[u] for u in uids if u in boxes]
    if not bs:
        return None
    return [min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs)]


def make_ref(scene: Scene, uid: int, exclude: set[int]) -> Ref:
    objs = scene.by_uid()
    o = objs[uid]
    domain = scene.domain
    if o.group >= 0:  # a counting group is referred to by where its members stand together
        members = [p for p in scene.objects if p.group == o.group]
        a = sum(ground_coords(scene, p)[0] for p in members) / len(members)
        b = sum(ground_coords(scene, p)[1] for p in members) / len(members)
    else:
        a, b = ground_coords(scene, o)
    h, v = cell(domain, a, b)
    neighbor = None
    best = 0.75
    for p in scene.objects:
        if p.uid == o.uid or p.uid in exclude or p.group >= 0:
            continue
        pa, pb = ground_coords(scene, p)
        d = float(np.hypot(a - pa, b - pb))
        if d < best:
            best = d
            neighbor = (p.kind, p.color, relation(domain, a - pa, b - pb))
    return Ref(o.kind, o.color, o.size, h, v, neighbor, text=o.text, pose=o.pose, direction=o.direction)


def describe(before: Scene, after: Scene, changes: list[Change]) -> list[Change]:
    """Attach what an annotator sees of each changed object in each image."""
    exclude = {u for c in changes for u in (*c.before_uids, *c.after_uids, c.subject, c.result)}
    out = []
    for c in changes:
        rb = make_ref(before, c.subject, exclude) if c.subject >= 0 else None
        ra = make_ref(after, c.result, exclude) if c.result >= 0 and c.result in after.by_uid() else None
        out.append(replace(c, ref_before=rb, ref_after=ra))
    return out


def _work(args):
    worker, index = args
    split, record, img_b, img_a = worker.make(index)
    images = worker.out / "images"
    # zlib level 1: a third of level 6's time for files ~20% larger; PNG stays lossless either way.
    img_b.save(images / f"{record['id']}_before.png", compress_level=1)
    img_a.save(images / f"{record['id']}_after.png", compress_level=1)
    return split, record


_WORKER = None  # set only inside pool processes, by _init_pool (the process is the owner)


def _init_pool(cfg: SynthConfig, out: str):
    global _WORKER
    _WORKER = Worker(cfg, Path(out))


def _work_in_pool(index: int):
    return _work((_WORKER, index))


def generate(cfg: SynthConfig, out, workers: int = 1, progress: bool = True) -> dict[str, int]:
    """Write ``out/{train,val,test}.json`` and ``out/images/``; returns pairs per split."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    bar = tqdm(total=cfg.pairs, desc="synth", unit="pair", disable=not progress)
    if workers <= 1:
        worker = Worker(cfg, out)
        results = (_work((worker, i)) for i in range(cfg.pairs))
        for split, rec in results:
            records[split].append(rec)
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_pool, initargs=(cfg, str(out))) as pool:
            for split, rec in pool.imap(_work_in_pool, range(cfg.pairs), chunksize=16):
                records[split].append(rec)
                bar.update()
    bar.close()

    for split, recs in records.items():
        (out / f"{split}.json").write_text(dumps_records(recs), encoding="utf-8")
    (out / "synth_config.json").write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return {s: len(r) for s, r in records.items()}


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
