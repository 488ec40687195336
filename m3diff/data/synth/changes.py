"""Building a scene for a planned set of change types, and applying the changes to it.

Every object that is not a counting-group member has a (kind, colour) no other object shares, so
"the red cube" always names one object in both images; group members share theirs with each other
only. A change acts on its own object (no two changes touch the same one), and records which
instances differ in each image — the regions that tests and pointing-game analyses check.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth import photo as photo_mod
from m3diff.data.synth import render as render_mod
from m3diff.data.synth.captions import cell
from m3diff.data.synth.scene import (
    COLOR_NAMES,
    DIRECTIONS,
    FLOOR_COLORS,
    FLOOR_PATTERNS,
    POSE_NAMES,
    SHAPES,
    SIGN_WORDS,
    WALL_COLORS,
    Camera,
    Light,
    Obj,
    Scene,
    footprint,
)

BASIC_TARGETS = ("disappearance", "removal", "substitution", "size", "color")


@dataclass(frozen=True)
class Change:
    type: str
    before_uids: tuple[int, ...] = ()  # instances that differ, as they were
    after_uids: tuple[int, ...] = ()  # as they are
    subject: int = -1  # uid referred to in the before image (a group: any member)
    result: int = -1  # uid referred to in the after image
    n_before: int = 0  # counting
    n_after: int = 0
    detail: tuple[tuple[str, str], ...] = ()  # distractors: what an annotator would say changed
    ref_before: object = None  # captions.Ref, filled once both images are known
    ref_after: object = None


def ground_coords(scene: Scene, o: Obj) -> tuple[float, float]:
    mod = render_mod if scene.domain == "render" else photo_mod
    return mod.ground_coords(scene, o)


class Placer:
    """Free spots for new objects: no overlaps, inside the frame of the scene's camera."""

    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.domain = scene.domain
        self.camera = scene.camera
        self.rng = rng
        self.view = render_mod.make_view(scene, 1) if self.domain == "render" else None
        self.gap = 0.2 if self.domain == "render" else 0.03

    def fits(self, o: Obj, others) -> bool:
        r = footprint(o, self.domain)
        for p in others:
            if p.uid != o.uid and math.hypot(p.x - o.x, p.y - o.y) < r + footprint(p, self.domain) + self.gap:
                return False
        if self.domain == "photo":
            return r + 0.02 <= o.x <= 1 - r - 0.02 and r + 0.02 <= o.y <= 1 - r - 0.02
        tall = 1.5 if o.kind in ("figure", "sign") else 0.85
        pts = np.array([[o.x - r, o.y, 0], [o.x + r, o.y, 0], [o.x, o.y - r, 0], [o.x, o.y + r, 0],
                        [o.x, o.y, tall]])
        q = render_mod.project(self.view, pts)
        return bool(np.all((q > 0.03) & (q < 0.97)))

    def sample_xy(self, near: tuple[float, float] | None = None, spread: float = 0.0) -> tuple[float, float]:
        if near is not None:
            return near[0] + spread * float(self.rng.normal()), near[1] + spread * float(self.rng.normal())
        if self.domain == "photo":
            return float(self.rng.uniform(0.1, 0.9)), float(self.rng.uniform(0.1, 0.9))
        return float(self.rng.uniform(-2.6, 2.6)), float(self.rng.uniform(-2.1, 2.3))

    def place(self, o: Obj, others, tries: int = 60, near=None, spread=0.0, accept=None) -> Obj | None:
        for _ in range(tries):
            x, y = self.sample_xy(near, spread)
            cand = replace(o, x=x, y=y)
            if self.fits(cand, others) and (accept is None or accept(cand)):
                return cand
        return None


def base_scene(domain: str, scene_id: str, spec_rng: np.random.Generator, pair_rng: np.random.Generator,
               tile=None) -> Scene:
    """The scene's fixed backdrop (from ``spec_rng``, the same for every pair of the scene) and
    a per-pair camera jitter/flip (from ``pair_rng``)."""
    az = float(spec_rng.uniform(0, 2 * math.pi))
    if domain == "render":
        i, j = spec_rng.choice(len(FLOOR_COLORS), 2, replace=False)
        cam = Camera(yaw=float(spec_rng.uniform(-0.3, 0.3)), elev=float(spec_rng.uniform(0.68, 0.82)),
                     dist=float(spec_rng.uniform(6.6, 7.3)))
        cam = replace(cam, yaw=cam.yaw + float(pair_rng.uniform(-0.05, 0.05)))
        return Scene("render", scene_id, floor=FLOOR_PATTERNS[int(spec_rng.integers(len(FLOOR_PATTERNS)))],
                     floor_colors=(FLOOR_COLORS[i], FLOOR_COLORS[j]),
                     wall=WALL_COLORS[int(spec_rng.integers(len(WALL_COLORS)))], camera=cam,
                     light=Light(azimuth=az, elevation=float(spec_rng.uniform(0.75, 1.1))))
    name, box = tile
    return Scene("photo", scene_id, photo=name, tile=box, camera=Camera(flip=bool(pair_rng.random() < 0.5)),
                 light=Light(azimuth=az, elevation=1.0))


def populate(scene: Scene, types: list[str], rng: np.random.Generator) -> Scene:
    """Add the objects the planned changes need (a figure for pose, a sign for ocr, an arrow for
    orientation, a group for counting, enough plain shapes), and some that no change touches so
    that an object's presence does not give its change type away."""
    domain = scene.domain
    shapes = SHAPES[domain]
    placer = Placer(scene, rng)
    objs: list[Obj] = []
    used: set[tuple[str, str]] = set()
    uid = 0

    def put(o: Obj, **kw) -> bool:
        nonlocal uid
        placed = placer.place(o, objs, **kw)
        if placed is None:
            return False
        objs.append(placed)
        uid += 1
        return True

    def colour_for(kind):
        free = [c for c in COLOR_NAMES if (kind, c) not in used]
        c = free[int(rng.integers(len(free)))]
        used.add((kind, c))
        return c

    specials = {"figure": "pose" in types, "sign": "ocr" in types, "arrow": "orientation" in types}
    for kind in specials:
        specials[kind] = specials[kind] or bool(rng.random() < 0.22)
    # Big or constrained things first, while there is room.
    if specials["sign"]:
        put(Obj(uid, "sign", "gray", "large", 0, 0, angle=-scene.camera.yaw,
                text=SIGN_WORDS[int(rng.integers(len(SIGN_WORDS)))]))
    if specials["figure"]:
        put(Obj(uid, "figure", COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))], "large", 0, 0,
                angle=-scene.camera.yaw, pose=POSE_NAMES[int(rng.integers(len(POSE_NAMES)))]))
    if specials["arrow"]:
        d = DIRECTIONS[domain][int(rng.integers(4))]
        put(Obj(uid, "arrow", colour_for("arrow"), pick_size(rng), 0, 0, angle=_arrow_angle(scene, d), direction=d))
    if "counting" in types or rng.random() < 0.15:
        kind = shapes[int(rng.integers(len(shapes)))]
        colour = colour_for(kind)
        size = "small" if rng.random() < 0.75 else "large"
        n = int(rng.integers(2, 6))
        first = placer.place(Obj(uid, kind, colour, size, 0, 0, group=0), objs)
        if first is not None:
            objs.append(first)
            uid += 1
            spread = 0.55 if domain == "render" else 0.09
            for _ in range(n - 1):
                put(Obj(uid, kind, colour, size, 0, 0, group=0, angle=first.angle), near=(first.x, first.y), spread=spread)
    need = sum(t in BASIC_TARGETS for t in types)
    n_basic = need + int(rng.integers(1, 4))
    placed = 0
    for _ in range(n_basic + 4):
        if placed >= n_basic:
            break
        kind = shapes[int(rng.integers(len(shapes)))]
        if put(Obj(uid, kind, colour_for(kind), pick_size(rng), 0, 0, angle=float(rng.uniform(0, math.pi / 2)))):
            placed += 1
    return replace(scene, objects=tuple(objs))


def pick_size(rng) -> str:
    return "large" if rng.random() < 0.5 else "small"


def _arrow_angle(scene: Scene, d: str) -> float:
    if scene.domain == "render":
        return render_mod.facing_axes(scene.camera.yaw)[d]
    return 0.0


def _kc(scene: Scene, exclude_uid: int = -1) -> set[tuple[str, str]]:
    return {(o.kind, o.color) for o in scene.objects if o.uid != exclude_uid}


def _cell(scene: Scene, o: Obj) -> tuple[str, str]:
    return cell(scene.domain, *ground_coords(scene, o))


@dataclass
class _Edit:
    """The after scene while one pair's changes are applied to it, and what they have touched so far."""

    before: Scene
    after: Scene
    rng: np.random.Generator
    changes: list[Change]
    touched: set[int]  # uids a change already used: no object changes twice
    next_uid: int

    @property
    def shapes(self) -> tuple[str, ...]:
        return SHAPES[self.before.domain]

    def taken(self) -> set[tuple[str, str]]:
        """(kind, colour) pairs in either image: a new object must not be confusable with one of them."""
        return _kc(self.after) | _kc(self.before)

    def swap(self, old: Obj, new: Obj) -> None:
        self.after = replace(self.after, objects=tuple(new if o.uid == old.uid else o for o in self.after.objects))

    def drop(self, uids) -> None:
        self.after = replace(self.after, objects=tuple(p for p in self.after.objects if p.uid not in uids))

    def add(self, o: Obj) -> None:
        self.after = replace(self.after, objects=self.after.objects + (o,))
        self.next_uid += 1


def apply_changes(scene: Scene, types: list[str], rng: np.random.Generator) -> tuple[Scene, list[Change]]:
    """The after scene and one ``Change`` per type that could be applied (semantic ones first;
    a type with no possible target is dropped, which the caller checks for the primary type)."""
    unknown = [t for t in types if t not in SEMANTIC_APPLIERS and t not in DISTRACTOR_APPLIERS]
    if unknown:
        raise ValueError(f"no applier for change type(s) {unknown}; known: {', '.join(TYPE_IDS)}")
    e = _Edit(scene, scene, rng, [], set(), max((o.uid for o in scene.objects), default=-1) + 1)
    for t in [t for t in types if t not in DISTRACTORS]:
        SEMANTIC_APPLIERS[t](e, Placer(e.after, rng), t)
    for t in [t for t in types if t in DISTRACTORS]:
        e.after, change = DISTRACTOR_APPLIERS[t](scene, e.after, rng)
        e.changes.append(change)
    return e.after, e.changes


# ---------------------------------------------------------------------------- one applier per change type
# Each takes the edit, a Placer of the scene as it stands, and the type; it appends its Change, or
# leaves everything as it was when the scene offers no target. The random draws happen in a fixed
# order per type, so a seed gives the same pairs whatever else changes.
def _addition(e: _Edit, placer: Placer, t: str) -> None:
    rng = e.rng
    kind = e.shapes[int(rng.integers(len(e.shapes)))]
    free = [c for c in COLOR_NAMES if (kind, c) not in e.taken()]
    if not free:
        return
    o = placer.place(Obj(e.next_uid, kind, free[int(rng.integers(len(free)))], pick_size(rng), 0, 0,
                         angle=float(rng.uniform(0, math.pi / 2))), e.after.objects + e.before.objects)
    if o is None:
        return
    e.add(o)
    e.changes.append(Change(t, (), (o.uid,), -1, o.uid))
    e.touched.add(o.uid)


def _basic_targets(e: _Edit) -> list[Obj]:
    return [o for o in e.after.objects if o.kind in e.shapes and o.group < 0 and o.uid not in e.touched]


def _disappearance(e: _Edit, placer: Placer, t: str) -> None:
    cands = _basic_targets(e)
    if not cands:
        return
    o = cands[int(e.rng.permutation(len(cands))[0])]  # drawn like the other basic changes' target order
    e.drop({o.uid})
    e.changes.append(Change(t, (o.uid,), (), o.uid, -1))
    e.touched.add(o.uid)


def _one_target(make: Callable[[_Edit, Placer, Obj], Obj | None]):
    """An applier that changes the first basic object, in random order, that ``make`` finds a new state for."""

    def apply(e: _Edit, placer: Placer, t: str) -> None:
        cands = _basic_targets(e)
        if not cands:
            return
        for i in e.rng.permutation(len(cands)):
            o = cands[int(i)]
            new = make(e, placer, o)
            if new is None:
                continue
            e.swap(o, new)
            if new.uid != o.uid:
                e.next_uid += 1
            e.changes.append(Change(t, (o.uid,), (new.uid,), o.uid, new.uid))
            e.touched.update((new.uid, o.uid))
            return

    return apply


def _moved(e: _Edit, placer: Placer, o: Obj) -> Obj | None:  # "removal": the object moves to another cell
    after = e.after
    old_cell = _cell(after, o)
    return placer.place(o, after.objects + e.before.objects, tries=80, accept=lambda c: _cell(after, c) != old_cell)


def _substituted(e: _Edit, placer: Placer, o: Obj) -> Obj | None:
    rng = e.rng
    kinds = [k for k in e.shapes if k != o.kind]
    k2 = kinds[int(rng.integers(len(kinds)))]
    colours = [c for c in COLOR_NAMES if (k2, c) not in e.taken()]
    if rng.random() < 0.4 and o.color in colours:
        colours = [o.color]
    if not colours:
        return None
    new = replace(o, uid=e.next_uid, kind=k2, color=colours[int(rng.integers(len(colours)))], size=pick_size(rng))
    others = [p for p in e.after.objects if p.uid != o.uid]
    if placer.fits(new, others):
        return new
    new = replace(new, size="small")
    return new if placer.fits(new, others) else None


def _resized(e: _Edit, placer: Placer, o: Obj) -> Obj | None:
    new = replace(o, size="small" if o.size == "large" else "large")
    return new if placer.fits(new, e.after.objects) else None


def _recoloured(e: _Edit, placer: Placer, o: Obj) -> Obj | None:
    colours = [c for c in COLOR_NAMES if (o.kind, c) not in e.taken()]
    return replace(o, color=colours[int(e.rng.integers(len(colours)))]) if colours else None


def _one_of_kind(kind: str, make: Callable[[_Edit, Placer, Obj], Obj | None]):
    """An applier that changes the first untouched object of ``kind`` (arrow, figure, sign) in place."""

    def apply(e: _Edit, placer: Placer, t: str) -> None:
        o = next((p for p in e.after.objects if p.kind == kind and p.uid not in e.touched), None)
        if o is None:
            return
        new = make(e, placer, o)
        if new is None:
            return
        e.swap(o, new)
        e.touched.add(o.uid)
        e.changes.append(Change(t, (o.uid,), (o.uid,), o.uid, o.uid))

    return apply


def _turned(e: _Edit, placer: Placer, o: Obj) -> Obj | None:
    d2 = [d for d in DIRECTIONS[e.before.domain] if d != o.direction][int(e.rng.integers(3))]
    new = replace(o, direction=d2, angle=_arrow_angle(e.after, d2))
    return new if placer.fits(new, e.after.objects) else None


def _posed(e: _Edit, placer: Placer, o: Obj) -> Obj:
    return replace(o, pose=[p for p in POSE_NAMES if p != o.pose][int(e.rng.integers(len(POSE_NAMES) - 1))])


def _retexted(e: _Edit, placer: Placer, o: Obj) -> Obj:
    words = [w for w in SIGN_WORDS if w != o.text]
    return replace(o, text=words[int(e.rng.integers(len(words)))])


def _counting(e: _Edit, placer: Placer, t: str) -> None:
    members = [p for p in e.after.objects if p.group == 0]
    if len(members) < 2:
        return
    rng = e.rng
    n1 = len(members)
    options = [n for n in range(2, 6) if n != n1 and abs(n - n1) <= 2]
    n2 = options[int(rng.integers(len(options)))]
    if n2 < n1:
        ids = {p.uid for p in members[n2:]}
        e.drop(ids)
        e.changes.append(Change(t, tuple(sorted(ids)), (), members[0].uid, members[0].uid, n1, n2))
    else:
        cx = sum(p.x for p in members) / n1
        cy = sum(p.y for p in members) / n1
        spread = 0.55 if e.before.domain == "render" else 0.09
        added = []
        for _ in range(n2 - n1):
            o = placer.place(replace(members[0], uid=e.next_uid), e.after.objects + e.before.objects,
                             near=(cx, cy), spread=spread, tries=80)
            if o is None:
                break
            e.add(o)
            added.append(o.uid)
        if not added:
            return
        e.changes.append(Change(t, (), tuple(added), members[0].uid, members[0].uid, n1, n1 + len(added)))
    e.touched.update(p.uid for p in members)


def _camera_moved(before: Scene, after: Scene, rng) -> tuple[Scene, Change]:
    return _viewpoint(before, after, rng)


def _relit(before: Scene, after: Scene, rng) -> tuple[Scene, Change]:
    return _illumination(after, rng)


def _viewpoint(before: Scene, after: Scene, rng) -> tuple[Scene, Change]:
    cam = after.camera
    if after.domain == "render":
        for _ in range(12):
            dy = float(rng.uniform(0.2, 0.38)) * (1 if rng.random() < 0.5 else -1)
            dist = cam.dist * float(rng.uniform(0.9, 1.1))
            cand = replace(after, camera=replace(cam, yaw=cam.yaw + dy, elev=cam.elev + float(rng.uniform(-0.06, 0.06)),
                                                 dist=dist))
            v = render_mod.make_view(cand, 1)
            pts = np.array([[o.x, o.y, 0.3] for o in after.objects]).reshape(-1, 3)
            q = render_mod.project(v, pts)
            if np.all((q > 0.02) & (q < 0.98)):
                break
        detail = [("side", "left" if dy > 0 else "right")]
        if abs(dist / cam.dist - 1) > 0.05:
            detail.append(("distance", "closer" if dist < cam.dist else "further"))
        return cand, Change("viewpoint", detail=tuple(detail))
    objs = before.objects + after.objects
    best = None
    for _ in range(20):
        scale = float(rng.uniform(1.15, 1.3))
        half = 0.5 / scale
        cx, cy = float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half))
        ok = all(cx - half + 0.6 * footprint(o, "photo") <= o.x <= cx + half - 0.6 * footprint(o, "photo")
                 and cy - half + 0.6 * footprint(o, "photo") <= o.y <= cy + half - 0.6 * footprint(o, "photo")
                 for o in objs)
        if ok:
            best = (scale, cx, cy)
            break
    if best is None:
        best = (1.1, 0.5, 0.5)
    scale, cx, cy = best
    h = "left" if cx < 0.47 else "right" if cx > 0.53 else ""
    v = "top" if cy < 0.47 else "bottom" if cy > 0.53 else ""
    toward = {("", ""): "", ("left", ""): "the left", ("right", ""): "the right", ("", "top"): "the top",
              ("", "bottom"): "the bottom"}.get((h, v), f"the {v} {h}")
    detail = (("toward", toward),) if toward else ()
    return replace(after, camera=replace(cam, magnification=scale, cx=cx, cy=cy)), Change("viewpoint", detail=detail)


def _illumination(after: Scene, rng) -> tuple[Scene, Change]:
    li = after.light
    darker = bool(rng.random() < 0.5)
    intensity = float(rng.uniform(0.58, 0.75)) if darker else float(rng.uniform(1.22, 1.38))
    tint_name = ["", "warmer", "cooler"][int(rng.integers(3))]
    tint = {"": (1.0, 1.0, 1.0), "warmer": (1.1, 0.98, 0.8), "cooler": (0.84, 0.95, 1.12)}[tint_name]
    shadows = bool(rng.random() < 0.6)
    az = li.azimuth + (float(rng.uniform(1.4, 2.4)) * (1 if rng.random() < 0.5 else -1) if shadows else 0.0)
    detail = [("light", "darker" if darker else "brighter")]
    if tint_name:
        detail.append(("tint", tint_name))
    if shadows:
        detail.append(("shadows", "moved"))
    return replace(after, light=replace(li, intensity=intensity, tint=tint, azimuth=az)), \
        Change("illumination", detail=tuple(detail))


SEMANTIC_APPLIERS: Mapping[str, Callable[[_Edit, Placer, str], None]] = MappingProxyType({
    "addition": _addition,
    "disappearance": _disappearance,
    "removal": _one_target(_moved),
    "substitution": _one_target(_substituted),
    "size": _one_target(_resized),
    "color": _one_target(_recoloured),
    "orientation": _one_of_kind("arrow", _turned),
    "pose": _one_of_kind("figure", _posed),
    "ocr": _one_of_kind("sign", _retexted),
    "counting": _counting,
})
# Distractors change the whole picture (camera, light) after the semantic changes: (before, after, rng).
DISTRACTOR_APPLIERS: Mapping[str, Callable[[Scene, Scene, np.random.Generator], tuple[Scene, Change]]] = \
    MappingProxyType({"viewpoint": _camera_moved, "illumination": _relit})
