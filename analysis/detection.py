"""Does the change reader read each true change? Detection recall and precision of the facts a model's
change reader (``m3diff.reader``) read, against the changes the generator recorded.

The caption's change scores (``analysis.changes``) say what the language model wrote; these say what it
was handed. A caption that misses a change the reader found is the language model's fault, one that
misses a change the reader never found is the reader's: the two sections together tell them apart.

- **Matching is by type.** The generator never makes two changes of one type in a pair and the reader
  has one slot per type, so a true change and a detected change of the same type in the same pair are
  the same change; no box or set matching is needed (a pair holding two of one type is refused).
- **recall**: true changes whose type was detected; **precision**: detected changes that are true.
  Camera and light changes count like any other: the reader reads them whether or not a caption says them.
- **the new value** (``value_right``), on matched changes whose type has one (``NEW_VALUE``): the sign's
  new word, the new colour, the arrow's new heading, the figure's new pose, the group's new count, the
  new size, what was added or what took the old object's place (kind and colour), and where a moved
  object went (its image cell).
- **the object** (``object_right``): the kind and colour of the object as it was (as it is, for an
  addition), on matched changes that touch an object.
- **pointing**: per image where the true change and the detected one both have a box, whether the
  detected box's centre lies inside the true box (both in the pair's image pixels).
- **no-change pairs** (no true change): ``false_change_rate`` is the share of them in which the reader
  detected anything.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from m3diff.change_types import TYPE_IDS
from m3diff.facts import ChangeFact, ChangeReading, ObjectFact, facts_of_record


def _after(*names: str) -> Callable[[ChangeFact], tuple | None]:
    def value(c: ChangeFact) -> tuple | None:
        if c.after is None:
            return None
        v = tuple(getattr(c.after, n) for n in names)
        return v if any(v) else None  # a fact without the field has no value to compare

    return value


# The value a change of each type has after it: what a caption must get right beyond "something changed".
# Types not listed (disappearance, viewpoint, illumination) have none.
NEW_VALUE: Mapping[str, Callable[[ChangeFact], tuple | None]] = {
    "ocr": _after("text"), "color": _after("color"), "orientation": _after("direction"), "pose": _after("pose"),
    "size": _after("size"), "addition": _after("kind", "color"), "substitution": _after("kind", "color"),
    "removal": _after("h", "v"), "counting": lambda c: (c.n_after,),
}


def new_value(c: ChangeFact) -> tuple | None:
    """The change's new value (``NEW_VALUE``); None when its type has none or the fact does not say it."""
    read = NEW_VALUE.get(c.type)
    return None if read is None else read(c)


def changed_object(c: ChangeFact) -> tuple[str, str] | None:
    """(kind, colour) of the object the change touched: as it was, or as it is for an addition."""
    o = c.after if c.type == "addition" else c.before
    return None if o is None else (o.kind, o.color)


def _centre_inside(box, true_box) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return true_box[0] <= cx <= true_box[2] and true_box[1] <= cy <= true_box[3]


def pointing(truth: ChangeFact, detected: ChangeFact) -> list[bool]:
    """Per image (before, after) where both facts have a box: does the detected box's centre lie inside
    the true box?"""
    return [_centre_inside(d, t) for t, d in ((truth.box_before, detected.box_before),
                                              (truth.box_after, detected.box_after))
            if t is not None and d is not None]


@dataclass(frozen=True)
class DetectionHit:
    """One change type of one pair: the true change and the detected one (either may be missing)."""

    type: str
    truth: ChangeFact | None  # the generator's fact; None: the reader invented this type
    detected: ChangeFact | None  # the reader's fact; None: the reader missed this change
    value_right: bool | None = None  # matched and the type has a new value: did the reader get it?
    object_right: bool | None = None  # matched and the change touches an object: its kind and colour right?
    pointed: bool | None = None  # matched, both with a box in some image: the detected centre inside in each

    def __post_init__(self):
        if self.truth is None and self.detected is None:
            raise ValueError(f"a {self.type} hit needs a true or a detected change")
        for fact in (self.truth, self.detected):
            if fact is not None and fact.type != self.type:
                raise ValueError(f"a {self.type} hit holds a {fact.type} change")
        if not self.matched and (self.value_right, self.object_right, self.pointed) != (None, None, None):
            raise ValueError(f"a {self.type} change that was not matched has no value, object or pointing verdict")

    @property
    def matched(self) -> bool:
        return self.truth is not None and self.detected is not None

    def to_dict(self) -> dict:
        return {"type": self.type, "truth": None if self.truth is None else self.truth.to_json(),
                "detected": None if self.detected is None else self.detected.to_json(), "matched": self.matched,
                "value_right": self.value_right, "object_right": self.object_right, "pointed": self.pointed}


def _by_type(facts: Sequence[ChangeFact], what: str) -> dict[str, ChangeFact]:
    out: dict[str, ChangeFact] = {}
    for f in facts:
        if f.type in out:
            raise ValueError(f"{what} hold two {f.type} changes; detection is matched by type, one change per type")
        out[f.type] = f
    return out


def score_pair(truth: Sequence[ChangeFact], detected: Sequence[ChangeFact]) -> list[DetectionHit]:
    """The hits of one pair, one per type that is true or detected, in ``TYPE_IDS`` order."""
    true_by, found_by = _by_type(truth, "the true changes"), _by_type(detected, "the detected changes")
    hits = []
    for t in TYPE_IDS:
        tr, de = true_by.get(t), found_by.get(t)
        if tr is None and de is None:
            continue
        if tr is None or de is None:
            hits.append(DetectionHit(t, tr, de))
            continue
        want_value, want_object, points = new_value(tr), changed_object(tr), pointing(tr, de)
        hits.append(DetectionHit(
            t, tr, de, None if want_value is None else new_value(de) == want_value,
            None if want_object is None else changed_object(de) == want_object, all(points) if points else None))
    return hits


# -- aggregation ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionScore:
    n_pairs: int
    n_true: int  # true changes
    n_detected: int  # detected changes
    n_matched: int  # true changes whose type was detected (each also a detected change that is true)
    recall: float | None  # n_matched / n_true
    precision: float | None  # n_matched / n_detected
    n_valued: int  # matched changes whose type has a new value
    value_accuracy: float | None  # of those, the share whose new value the reader got right
    n_objects: int  # matched changes that touch an object
    object_accuracy: float | None  # of those, the share whose object (kind, colour) the reader got right
    n_boxed: int  # images of matched changes where both the true and the detected change have a box
    pointing: float | None  # of those, the share where the detected box's centre lies in the true box

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _score(pairs: Mapping[str, Sequence[DetectionHit]], type_: str | None = None) -> DetectionScore:
    hits = [h for hs in pairs.values() for h in hs if type_ is None or h.type == type_]
    n_true = sum(h.truth is not None for h in hits)
    n_det = sum(h.detected is not None for h in hits)
    matched = [h for h in hits if h.matched]
    valued = [h.value_right for h in matched if h.value_right is not None]
    objects = [h.object_right for h in matched if h.object_right is not None]
    boxes = [p for h in matched for p in pointing(h.truth, h.detected)]  # per image, not per change
    n_pairs = sum(any(type_ is None or h.type == type_ for h in hs) for hs in pairs.values()) if type_ else len(pairs)
    return DetectionScore(n_pairs, n_true, n_det, len(matched), _share(len(matched), n_true),
                          _share(len(matched), n_det), len(valued), _share(sum(valued), len(valued)), len(objects),
                          _share(sum(objects), len(objects)), len(boxes), _share(sum(boxes), len(boxes)))


@dataclass
class DetectionSummary:
    overall: DetectionScore
    per_type: dict[str, DetectionScore] = field(default_factory=dict)  # types true or detected somewhere
    no_change_pairs: int = 0
    false_change_rate: float | None = None  # no-change pairs in which the reader detected a change

    def to_dict(self) -> dict:
        return {"overall": self.overall.to_dict(), "per_type": {k: v.to_dict() for k, v in self.per_type.items()},
                "no_change_pairs": self.no_change_pairs,
                "false_change_rate": None if self.false_change_rate is None else round(self.false_change_rate, 6)}


def summarize_detection(pairs: Mapping[str, Sequence[DetectionHit]]) -> DetectionSummary:
    """Overall and per type over ``pairs`` ({pair id: its hits}; a pair without hits is a no-change pair
    in which nothing was detected)."""
    out = DetectionSummary(_score(pairs))
    for t in TYPE_IDS:
        if any(h.type == t for hs in pairs.values() for h in hs):
            out.per_type[t] = _score(pairs, t)
    unchanged = [hs for hs in pairs.values() if all(h.truth is None for h in hs)]
    out.no_change_pairs = len(unchanged)
    out.false_change_rate = _share(sum(bool(hs) for hs in unchanged), len(unchanged))
    return out


def evaluate_detection(readings: Mapping[str, ChangeReading], records: Iterable
                       ) -> tuple[DetectionSummary, dict[str, list[DetectionHit]]]:
    """Score ``readings`` ({pair id: what the reader read}) against the records with those ids (split-file
    dicts or ``DiffPair``s); records without true changes (real data) and ids without a reading are skipped.
    Raises ValueError naming the pair whose changes cannot be matched by type."""
    pairs: dict[str, list[DetectionHit]] = {}
    for rec in records:
        extra = rec if isinstance(rec, Mapping) else rec.extra
        rid = str(extra.get("id", getattr(rec, "id", "")))
        truth = facts_of_record(extra)
        if truth is None or rid not in readings:
            continue
        try:
            pairs[rid] = score_pair(truth, readings[rid].changes)
        except ValueError as exc:
            raise ValueError(f"pair {rid!r}: {exc}") from None
    return summarize_detection(pairs), pairs


# -- a reading as the predictions file holds it (ChangeReading.to_json), checked -----------------------
_OBJECT_FIELDS = tuple(ObjectFact.__dataclass_fields__)


def read_reading(data) -> ChangeReading:
    """``ChangeReading.to_json``'s form read back, every field checked (a predictions file may come from
    anyone); ValueError names the first wrong field."""
    if not isinstance(data, dict):
        raise ValueError(f"expected an object with 'changes', got {type(data).__name__}")
    changes = data.get("changes", [])
    if not isinstance(changes, list):
        raise ValueError("'changes' must be a list")
    facts = tuple(_fact(c, f"changes[{i}]") for i, c in enumerate(changes))
    _by_type(facts, "'changes'")
    size = data.get("size", [0, 0])
    if not (isinstance(size, list) and len(size) == 2 and all(_whole(v) and v >= 0 for v in size)):
        raise ValueError("'size' must be [width, height] in pixels")
    threshold = data.get("threshold", 0.5)
    if not _number(threshold):
        raise ValueError("'threshold' must be a number")
    return ChangeReading(facts, (size[0], size[1]), float(threshold))


def _fact(data, where: str) -> ChangeFact:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    if data.get("type") not in TYPE_IDS:
        raise ValueError(f"{where}.type: {data.get('type')!r} is not one of the change types")
    for side in ("before", "after"):
        obj = data.get(side)
        if obj is not None and not (isinstance(obj, dict)
                                    and all(isinstance(obj.get(k, ""), str) for k in _OBJECT_FIELDS)):
            raise ValueError(f"{where}.{side}: expected an object of strings ({', '.join(_OBJECT_FIELDS)})")
    for key in ("n_before", "n_after"):
        if not _whole(data.get(key, 0)):
            raise ValueError(f"{where}.{key}: expected a whole number")
    if not isinstance(data.get("detail", ""), str):
        raise ValueError(f"{where}.detail: expected a string")
    for key in ("box_before", "box_after"):
        box = data.get(key)
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))):
            raise ValueError(f"{where}.{key}: expected a box [x0, y0, x1, y1]")
    if not _number(data.get("confidence", 1.0)):
        raise ValueError(f"{where}.confidence: expected a number")
    return ChangeFact.from_json(data)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
