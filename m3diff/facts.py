"""What changed in a pair, as facts: the closed vocabularies of the change reader, the facts it reads,
and the plain text the language model is given to copy them from.

A change is one ``ChangeFact``: its type, the object as it was and as it is (``ObjectFact``: kind,
colour, size, image cell and, for a sign, an arrow or a figure, its word, heading or pose), the
group's count before and after (counting), what a camera or light change did (``detail``), a box in
each image and the reader's confidence. Generated data records the true facts (``changes`` in each
record); the change reader (``m3diff.reader``) predicts them from the pixels; ``facts_prompt`` turns
either into the words the language model reads after the instruction. Captions describe a camera or
light change only when it is the pair's only change, so the prompt does the same (``said``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.scene import COLOR_NAMES, DIRECTIONS, PHOTO_SHAPES, POSE_NAMES, RENDER_SHAPES, SIGN_WORDS

KINDS: tuple[str, ...] = (*RENDER_SHAPES, *PHOTO_SHAPES, "figure", "sign", "arrow")
COLORS: tuple[str, ...] = COLOR_NAMES
HORIZONTAL: tuple[str, ...] = ("left", "middle", "right")
# The vertical cell by domain: the reader predicts its index (far, middle, near), the domain names it.
VERTICAL: Mapping[str, tuple[str, str, str]] = {"render": ("back", "middle", "front"), "photo": ("top", "middle", "bottom")}
HEADINGS: tuple[str, ...] = tuple(dict.fromkeys(d for ds in DIRECTIONS.values() for d in ds))
POSES: tuple[str, ...] = POSE_NAMES
WORDS: tuple[str, ...] = SIGN_WORDS
MAX_COUNT = 6
# A camera or light change's detail, as one closed label ("side=left distance=closer"): the values
# the generator draws (m3diff/data/synth/changes.py), each combination one class.
_TOWARD = ("", "the left", "the right", "the top", "the bottom", "the top left", "the top right",
           "the bottom left", "the bottom right")
DETAILS: tuple[str, ...] = (
    "",
    *(f"side={s}" + (f" distance={d}" if d else "") for s in ("left", "right") for d in ("", "closer", "further")),
    *(f"toward={t}" for t in _TOWARD if t),
    *(f"light={li}" + (f" tint={t}" if t else "") + (" shadows=moved" if sh else "")
      for li in ("darker", "brighter") for t in ("", "warmer", "cooler") for sh in (False, True)),
)


def detail_label(detail: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """The closed label of a distractor's detail (``DETAILS``); unknown keys are an error."""
    items = dict(detail)
    label = " ".join(f"{k}={items[k]}" for k in ("side", "distance", "toward", "light", "tint", "shadows") if items.get(k))
    if label not in DETAILS:
        raise ValueError(f"unknown camera or light detail {items!r}")
    return label


@dataclass(frozen=True)
class ObjectFact:
    """One changed object as it looks in one image."""

    kind: str
    color: str
    size: str = ""
    h: str = ""  # left | middle | right
    v: str = ""  # back | middle | front (render), top | middle | bottom (photo)
    text: str = ""  # a sign's word
    direction: str = ""  # an arrow's heading
    pose: str = ""  # a figure's pose

    def phrase(self) -> str:
        words = [self.size, self.color, self.kind]
        if self.h or self.v:
            words += ["at", self.h or "middle", self.v or "middle"]
        for key in ("text", "direction", "pose"):
            value = getattr(self, key)
            if value:
                words += [key if key != "text" else "reading", value.replace("_", " ")]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class ChangeFact:
    """One change: what the generator recorded, or what the change reader read."""

    type: str
    before: ObjectFact | None = None
    after: ObjectFact | None = None
    n_before: int = 0
    n_after: int = 0
    detail: str = ""  # DETAILS label of a camera or light change
    box_before: tuple[float, float, float, float] | None = None  # pixels of the image it was read from
    box_after: tuple[float, float, float, float] | None = None
    confidence: float = 1.0

    def __post_init__(self):
        if self.type not in TYPE_IDS:
            raise ValueError(f"unknown change type {self.type!r}")

    @property
    def distractor(self) -> bool:
        return self.type in DISTRACTORS

    def line(self) -> str:
        """The fact as the language model reads it: ``type: before -> after`` and the values."""
        parts = [f"{self.type}:"]
        if self.before is not None:
            parts.append(self.before.phrase())
        if self.after is not None:
            parts += ["->", self.after.phrase()]
        if self.type == "counting":
            parts.append(f"count {self.n_before} -> {self.n_after}")
        if self.detail:
            parts.append(self.detail.replace("=", " "))
        return " ".join(parts)

    def to_json(self) -> dict:
        out = asdict(self)
        for side in ("before", "after"):
            if out[side] is not None:
                out[side] = {k: v for k, v in out[side].items() if v}
        for box in ("box_before", "box_after"):
            if out[box] is not None:
                out[box] = [round(float(x), 1) for x in out[box]]
        return {k: v for k, v in out.items() if v not in (None, "", 0) or k in ("type", "confidence")}

    @classmethod
    def from_json(cls, data: Mapping) -> "ChangeFact":
        def obj(d):
            return None if d is None else ObjectFact(**{k: d[k] for k in ObjectFact.__dataclass_fields__ if k in d})

        def box(b):
            return None if b is None else tuple(float(x) for x in b)

        detail = data.get("detail") or ""
        if not isinstance(detail, str):
            detail = detail_label(detail)
        return cls(str(data["type"]), obj(data.get("before")), obj(data.get("after")), int(data.get("n_before") or 0),
                   int(data.get("n_after") or 0), detail, box(data.get("box_before")), box(data.get("box_after")),
                   float(data.get("confidence", 1.0)))


@dataclass(frozen=True)
class ChangeReading:
    """Everything the change reader read in one pair: its changes, and the pair it read them at."""

    changes: tuple[ChangeFact, ...] = ()
    size: tuple[int, int] = (0, 0)  # (width, height) of the images the boxes are in
    threshold: float = 0.5

    def to_json(self) -> dict:
        return {"changes": [c.to_json() for c in self.changes], "size": list(self.size), "threshold": self.threshold}


def said(changes: Sequence[ChangeFact]) -> list[ChangeFact]:
    """The changes a caption describes: the semantic ones, or the camera / light change when it is alone."""
    semantic = [c for c in changes if not c.distractor]
    return semantic or list(changes)


def facts_prompt(changes: Sequence[ChangeFact]) -> str:
    """The text after the instruction that hands the read changes to the language model."""
    lines = [c.line() for c in said(changes)]
    return "Changes read: " + ("; ".join(lines) if lines else "none") + "."


def facts_of_record(record: Mapping) -> list[ChangeFact] | None:
    """The true changes of a generated record (its ``changes``); None when the record has none recorded
    (real data, or generated before the generator wrote them)."""
    changes = record.get("changes")
    if changes is None:
        return None
    return [ChangeFact.from_json(c) for c in changes]
