"""Does the caption name each true change, and does it invent changes? Change recall and precision on
generated data, where every pair records each change's type and the objects it touched.

Caption metrics (BLEU, CIDEr) reward shared n-grams, not facts; change-level precision/recall is
what agrees with people. Here a change is **named** when one clause of the caption names its object
and says its kind of change:

- **the truth**: each change of a generated record (``regions``: type + before/after boxes) is tied
  to the object(s) it touched by box: the record's ``objects`` (every drawn object with its kind,
  colour, size and box) holding the same box, or, for a counting change whose region is the union
  of several group members, the objects whose boxes lie inside the region box. A change is known by
  the (kind, colour) of its object before and after (a colour change: either colour; a
  substitution: the old or the new object). The generator makes (kind, colour) unique in a scene
  (counting groups share theirs among members only), so colour + noun identify one object.
- **clauses**: the caption is split at ``. ! ? ;`` — the grammar writes one sentence per change,
  with openings ("three things changed"), closings ("nothing else changed") and a few ``;`` tails
  ("…; it used to be on the left") that name no object and are ignored.
- **objects in a clause**: colour + noun (with the grammar's synonyms and plurals, ``NOUNS``, and
  an optional size word), "person in / wearing / dressed in <colour>", "<colour> stick figure";
  "sign / signboard / board" for the one sign (its colour is never said). Neighbours used to
  locate an object ("next to the blue ball", "behind the red cube") are removed first: they name
  an object that did not change.
- **kind of change**: each type has the verbs and phrases the grammar uses for it (``CUES``);
  a clause can carry cues of several types ("appears bigger": addition and size) and matches a
  change of any of them.
- **recall**: the share of true changes that some clause names (object and kind). A camera or light
  change counts only when it is the pair's only change (the references describe it only then).
  ``object_recall`` counts the object alone, whatever the clause says happened to it.
- **precision**: the share of described changes (clauses that name an object, or that describe a
  camera or light change) that match a true change of the pair by object and kind; a camera or
  light clause is right when that distractor is in the pair. A clause naming an object with no
  cue of any kind is a described change that matches nothing.
- **no-change pairs** (no change at all): any described change is invented; ``false_change_rate``
  is the share of such pairs whose caption describes one.
- **the new value** (``value_recall``): for the six types whose change has one — the sign's new word
  (ocr), the new colour, the arrow's new heading, the figure's new pose, the group's new count, and
  whether the object grew or shrank — the share of such changes for which a clause that recalls the
  change states the new value, and no value but the old and the new one. Recall says the caption saw
  *that* the sign changed; this says it read *what* it says now. (A clause that swaps old and new is
  not caught: the old value is allowed beside the new one.)
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.captions import DIRECTION_WORDS, NOUNS, NUMBERS, PHOTO_WORDS, PLURALS, POSE_WORDS, SIZE_WORDS
from m3diff.data.synth.scene import COLOR_NAMES

from analysis.localization import setting_of

# -- the words of the grammar ---------------------------------------------------------------------
_NOUN_KIND = {w: kind for kind, words in NOUNS.items() for w in words}
_NOUN_KIND.update({PLURALS.get(w, w + "s"): _NOUN_KIND[w] for w in list(_NOUN_KIND)})
_NOUN_KIND.update({"people": "figure", "persons": "figure"})
_NOUN_RE = "|".join(sorted(map(re.escape, _NOUN_KIND), key=len, reverse=True))
_COLOUR_RE = "|".join(COLOR_NAMES) + "|grey"
_SIZE_RE = "|".join(sorted({w for ws in SIZE_WORDS.values() for w in ws}))
_NUM = "one|two|three|four|five|six"

_SHAPE = re.compile(rf"\b(?:({_SIZE_RE}) )?({_COLOUR_RE}) ({_NOUN_RE})\b")
_FIGURE = re.compile(rf"\b(?:person|people|figure|stick figure) (?:in|wearing|dressed in) (?:an? |the )?({_COLOUR_RE})\b")
_SIGN = re.compile(r"\b(?:sign|signboard|signs|board)\b")
# a neighbour that locates the changed object ("next to the blue ball"): an object that did not change
_NEIGHBOUR = re.compile(
    rf"\b(?:next to|beside|near|close to|to the left of|to the right of|behind|in front of|above|below) "
    rf"the (?:(?:{_SIZE_RE}) )?(?:(?:{_COLOUR_RE}) (?:{_NOUN_RE})|sign|(?:person|figure) in (?:{_COLOUR_RE}))\b")

_POSE_PHRASES = "|".join(sorted({re.escape(p) for ps in POSE_WORDS.values() for p in ps}, key=len, reverse=True))
# Per type: what the grammar says when that kind of change happens (m3diff/data/synth/captions.py),
# written as phrases rather than single words where a word alone is ambiguous ("now", "changed").
CUES: dict[str, re.Pattern] = {k: re.compile(v) for k, v in {
    "viewpoint": r"\b(camera|zoom(ed)?|crop|framing|viewpoint|angle|view)\b",
    "illumination": r"\b(light|lighting|illumination|darker|brighter|shadows)\b",
    "addition": r"\b(added|appears|appeared|a new|placed|shows up|showed up|was put|popped up|additional|"
                r"introduced|was not there before|was empty before|there is now|now sits)\b",
    "disappearance": r"\b(disappeared|is gone|no longer there|taken away|vanished|missing|no longer anything|"
                     r"deleted|can no longer be seen|absent|removed)\b",
    "removal": r"\b(moved|relocated|shifted|no longer stands|carried|slid|changed its location|used to be|"
               r"is now (on|in|at|near|along) the)\b",
    "substitution": r"\b(replaced|now stands where|swapped|in place of|turned into|exchanged|taken its place|"
                    r"gave way|traded|we now see)\b",
    "size": r"\b(bigger|larger|smaller|tinier|grew|shrank|shrunk|enlarged|reduced in size|expanded|doubled|"
            r"size|is now (large|small|big|little))\b",
    "color": rf"\b(colou?r|painted|recolou?red|hue|shirt|turned ({_COLOUR_RE})|is now ({_COLOUR_RE})|"
             rf"now (appears|wears) ({_COLOUR_RE})|changed (from ({_COLOUR_RE}) )?to ({_COLOUR_RE})|"
             rf"is ({_COLOUR_RE}) in the second image)\b",
    "orientation": r"\b(points?|pointing|pointed|faces|facing|direction|heading|aimed|spun|rotated|turned around|"
                   r"flipped|quarter turn)\b",
    "pose": rf"\b(pose|limbs|{_POSE_PHRASES}|arms?|legs?)\b",
    "ocr": r"\b(text|reads|word|says?|showed|shows|writing|label|displays|rewritten)\b",
    "counting": rf"\b(group|cluster|number of|more|fewer|in total|went from|now has ({_NUM})|"
                rf"(there are now|now there are) ({_NUM})|where there were|instead of ({_NUM}))\b",
}.items()}
_CLAUSE = re.compile(r"[.!?;]+")

# -- the values a clause states (old or new) ---------------------------------------------------------
_WORD_VALUE = re.compile(r"\b[A-Z][A-Z]+\b")  # the grammar writes a sign's word in capitals
# a colour that is not part of an object's name ("the red cube", "the person in red", "in the yellow
# shirt") nor of the backdrop ("on top of green grass")
_COLOUR_VALUE = re.compile(rf"(?<!in )(?<!wearing )\b({_COLOUR_RE})\b(?! (?:stick )?(?:{_NOUN_RE}|shirt)\b)")
_BACKDROP = re.compile("|".join(re.escape(w) for w in PHOTO_WORDS.values()))
_DIRECTION_KEY = {p: d for d, ps in DIRECTION_WORDS.items() for p in ps}
_DIRECTION_VALUE = re.compile(
    r"\b(?:points?|pointing|pointed|faces|facing|aimed|to|from|of) ("
    + "|".join(sorted(map(re.escape, _DIRECTION_KEY), key=len, reverse=True)) + r")\b")
_POSE_KEY = {p: k for k, ps in POSE_WORDS.items() for p in ps}
_POSE_VALUE = re.compile("|".join(sorted(map(re.escape, _POSE_KEY), key=len, reverse=True)))
_NUMBER_KEY = {w: n for n, w in NUMBERS.items()}
# the count a group has now: "now has three", "there are now three", "went from two to three", "three in total"
# (not the difference: "two more pink cones", "two pink cones fewer")
_COUNT_VALUE = re.compile(rf"\b(?:has|now|are|to) ({_NUM})\b(?! more\b)(?! (?:\w+ ){{1,3}}fewer\b)|\b({_NUM}) in total\b")
_GREW = re.compile(r"\b(bigger|larger|grew|increased|enlarged|expanded|doubled|is now (?:large|big))\b")
_SHRANK = re.compile(r"\b(smaller|tinier|shrank|shrunk|decreased|reduced|lost about half|is now (?:small|little))\b")


def stated_values(type_: str, clause: str) -> set[str]:
    """The values of a ``type_`` change that a clause (as written, not lower-cased) states: sign words,
    colours, headings, poses, counts, or "grew" / "shrank"."""
    low = _BACKDROP.sub(" ", _NEIGHBOUR.sub(" ", clause.lower()))
    if type_ == "ocr":
        return set(_WORD_VALUE.findall(clause))
    if type_ == "color":
        return {_colour(m.group(1)) for m in _COLOUR_VALUE.finditer(low)}
    if type_ == "orientation":
        return {_DIRECTION_KEY[m.group(1)] for m in _DIRECTION_VALUE.finditer(low)}
    if type_ == "pose":
        return {_POSE_KEY[m.group(0)] for m in _POSE_VALUE.finditer(low)}
    if type_ == "counting":
        return {str(_NUMBER_KEY[m.group(1) or m.group(2)]) for m in _COUNT_VALUE.finditer(low)}
    if type_ == "size":
        return ({"grew"} if _GREW.search(low) else set()) | ({"shrank"} if _SHRANK.search(low) else set())
    return set()


def clauses(caption: str) -> list[str]:
    return [c.lower() for c in _raw_clauses(caption)]


def _raw_clauses(caption: str) -> list[str]:
    """The clauses as written: a sign's word is told by its capitals."""
    return [c.strip() for c in _CLAUSE.split(caption or "") if c.strip()]


def mentions(clause: str) -> list[tuple[str, str | None]]:
    """(kind, colour) of every object a clause names, neighbours left out; colour None for the sign."""
    text = _NEIGHBOUR.sub(" ", clause.lower())
    found: list[tuple[int, tuple[str, str | None]]] = []
    for m in _FIGURE.finditer(text):
        found.append((m.start(), ("figure", _colour(m.group(1)))))
    for m in _SHAPE.finditer(text):
        found.append((m.start(), (_NOUN_KIND[m.group(3)], _colour(m.group(2)))))
    for m in _SIGN.finditer(text):
        found.append((m.start(), ("sign", None)))
    return list(dict.fromkeys(k for _, k in sorted(found)))


def _colour(word: str) -> str:
    return "gray" if word == "grey" else word


def cue_types(clause: str) -> tuple[str, ...]:
    """The types whose cue phrases a clause contains, in TYPE_IDS order."""
    return tuple(t for t in TYPE_IDS if CUES[t].search(clause.lower()))


# -- the truth of a generated pair ------------------------------------------------------------------
@dataclass(frozen=True)
class TrueChange:
    type: str
    objects: frozenset  # acceptable (kind, colour) names of its object(s); empty for a camera/light change
    label: str  # "red cube", "yellow pyramids", "viewpoint": for people reading a report
    new: str | None = None  # the value it has now (stated_values' terms); None: a type without one
    old: str | None = None  # the value it had, which a caption may state beside the new one

    def value_right(self, said: set[str]) -> bool:
        """Do these values, stated by one clause, hold the new value and none but the old and the new?"""
        return self.new in said and said <= {self.new, self.old}

    @property
    def distractor(self) -> bool:
        return self.type in DISTRACTORS


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _objects_at(box, objects: Sequence[Mapping]) -> list[Mapping]:
    """The objects a region box stands for: the one with the same box, else those inside it (a
    counting change's union of members), else the one it overlaps most."""
    if box is None:
        return []
    box = list(box)
    same = [o for o in objects if list(o["box"]) == box]
    if same:
        return same
    inside = [o for o in objects if o["box"][0] >= box[0] and o["box"][1] >= box[1]
              and o["box"][2] <= box[2] and o["box"][3] <= box[3]]
    if inside:
        return inside
    best = max(objects, key=lambda o: _overlap(o["box"], box), default=None)
    return [best] if best is not None and _overlap(best["box"], box) > 0 else []


def _name(o: Mapping) -> tuple[str, str | None]:
    return (o["kind"], None if o["kind"] == "sign" else o["color"])


def true_changes(record) -> list[TrueChange]:
    """The changes a caption of this pair should name: its semantic changes, or its camera/light
    change when that is all there is. ``record``: a split-file dict or a ``DiffPair``."""
    extra = record if isinstance(record, Mapping) else record.extra
    rid = extra.get("id", getattr(record, "id", "?"))
    if "regions" not in extra or "objects" not in extra:
        raise ValueError(f"pair {rid}: change recall needs the generator's 'regions' and 'objects'")
    regions = list(extra["regions"])
    semantic = [r for r in regions if r["type"] not in DISTRACTORS]
    out = []
    for r in semantic or regions:
        if r["type"] in DISTRACTORS:
            out.append(TrueChange(r["type"], frozenset(), r["type"]))
            continue
        objs = _objects_at(r.get("before"), extra["objects"]["before"]) + _objects_at(r.get("after"), extra["objects"]["after"])
        if not objs:
            raise ValueError(f"pair {rid}: no object has the box of its {r['type']} change")
        names = frozenset(_name(o) for o in objs)
        k, c = _name(objs[0])
        old, new = _old_new(r, extra["objects"])
        out.append(TrueChange(r["type"], names, k if c is None else f"{c} {k}", new, old))
    return out


_FIELD = {"ocr": "text", "color": "color", "orientation": "direction", "pose": "pose"}


def _old_new(region, objects) -> tuple[str | None, str | None]:
    """The value a change's object had and has (stated_values' terms), where its type has one."""
    t = region["type"]
    before = _objects_at(region.get("before"), objects["before"])
    after = _objects_at(region.get("after"), objects["after"])
    if t in _FIELD and before and after:
        return before[0].get(_FIELD[t]), after[0].get(_FIELD[t])
    if t == "size" and before and after:
        grew = (after[0]["size"], before[0]["size"]) == ("large", "small") or (
            after[0]["size"] == before[0]["size"] and _area(after[0]["box"]) > _area(before[0]["box"]))
        return None, "grew" if grew else "shrank"
    if t == "counting":  # the region holds the members added or dropped; the group is their kind and colour
        members = [(o["kind"], o["color"]) for o in before or after]
        if members:  # the most common name inside the box: another object may lie within it too
            group = max(dict.fromkeys(members), key=members.count)
            n = [sum((o["kind"], o["color"]) == group for o in objects[i]) for i in ("before", "after")]
            return str(n[0]), str(n[1])
    return None, None


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


# -- one caption against its pair --------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeHit:
    type: str
    object: str
    named: bool  # some clause names the object
    recalled: bool  # some clause names the object and says this kind of change
    value_right: bool | None = None  # a recalling clause states the new value; None: no value to state
    old: str | None = None  # the true values before and after (TrueChange's)
    new: str | None = None
    stated: tuple[str, ...] = ()  # the values the recalling clauses state

    def to_dict(self) -> dict:
        out = {"type": self.type, "object": self.object, "named": self.named, "recalled": self.recalled,
               "value_right": self.value_right}
        if self.new is not None:
            out |= {"old": self.old, "new": self.new, "stated": list(self.stated)}
        return out


@dataclass(frozen=True)
class DescribedChange:
    clause: str
    types: tuple[str, ...]  # the kinds of change its words say
    names: tuple[tuple[str, str | None], ...]  # (kind, colour) of the objects it names
    matched: str | None  # the type of the true change it matches; None = invented

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(_label(n) for n in self.names)

    def to_dict(self) -> dict:
        return {"clause": self.clause, "types": list(self.types), "objects": list(self.objects), "matched": self.matched}


@dataclass(frozen=True)
class PairChanges:
    """One pair's caption against its true changes: which were named, and what the caption described."""

    id: str
    domain: str
    setting: str  # setting_of(): single | multi | distractor | distractor_only | no_change
    types: tuple[str, ...]
    truth: tuple[ChangeHit, ...] = ()  # one per true change
    described: tuple[DescribedChange, ...] = ()  # one per change-describing clause of the caption

    @property
    def recall(self) -> float | None:
        return sum(h.recalled for h in self.truth) / len(self.truth) if self.truth else None

    @property
    def precision(self) -> float | None:
        return sum(d.matched is not None for d in self.described) / len(self.described) if self.described else None

    def to_dict(self) -> dict:
        r, p = self.recall, self.precision
        return {"id": self.id, "domain": self.domain, "setting": self.setting, "types": list(self.types),
                "recall": None if r is None else round(r, 6), "precision": None if p is None else round(p, 6),
                "truth": [h.to_dict() for h in self.truth], "described": [d.to_dict() for d in self.described]}


def _label(name: tuple[str, str | None]) -> str:
    return name[0] if name[1] is None else f"{name[1]} {name[0]}"


def score_caption(caption: str, record) -> PairChanges:
    """Which true changes of ``record`` the caption names, and which changes it describes."""
    extra = record if isinstance(record, Mapping) else record.extra
    rid = extra.get("id", getattr(record, "id", "?"))
    types = tuple(extra.get("change_types", getattr(record, "change_types", ())))
    domain = extra.get("domain", getattr(record, "domain", ""))
    truth = true_changes(record)
    present = set(types)
    described, written = [], {}
    for raw in _raw_clauses(caption):
        clause = raw.lower()
        written[clause] = raw
        names = mentions(clause)
        cues = cue_types(clause)
        if not names:
            cues = tuple(t for t in cues if t in DISTRACTORS)
            if not cues:
                continue  # openings, closings, "nothing changed": no change described
        match = None
        if names:
            for t in truth:
                if t.type in cues and t.objects & set(names):
                    match = t.type
                    break
        else:
            match = next((t for t in cues if t in present), None)
        described.append(DescribedChange(clause, cues, tuple(names), match))
    hits = []
    for t in truth:
        if t.distractor:
            rec = any(not d.names and t.type in d.types for d in described)
            hits.append(ChangeHit(t.type, t.label, rec, rec))
            continue
        said = [d for d in described if t.objects & set(d.names)]
        recalling = [d for d in said if t.type in d.types]
        per_clause = [stated_values(t.type, written[d.clause]) for d in recalling] if t.new is not None else []
        right = None if t.new is None else any(t.value_right(v) for v in per_clause)
        hits.append(ChangeHit(t.type, t.label, bool(said), bool(recalling), right, t.old, t.new,
                              tuple(sorted(set().union(*per_clause)))))
    return PairChanges(rid, domain, setting_of(types, bool(extra.get("no_change"))), types, tuple(hits), tuple(described))


# -- aggregation ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeScore:
    n_pairs: int
    n_changes: int
    recall: float | None  # named (object + kind) / true changes
    object_recall: float | None  # object named / true changes
    n_described: int
    precision: float | None  # matched / described changes
    invented: int  # described changes that match no true change
    n_valued: int = 0  # true changes whose type has a new value to state
    value_recall: float | None = None  # of those, the share whose new value a recalling clause states

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _score(rows: list[PairChanges], type_: str | None = None) -> ChangeScore:
    hits = [h for r in rows for h in r.truth if type_ is None or h.type == type_]
    # per type, a described change belongs to the type it matched, else to the first type its words say
    desc = [d for r in rows for d in r.described
            if type_ is None or (d.matched or (d.types[0] if d.types else None)) == type_]
    ok = sum(d.matched is not None for d in desc)
    valued = [h for h in hits if h.value_right is not None]
    return ChangeScore(len(rows), len(hits), sum(h.recalled for h in hits) / len(hits) if hits else None,
                       sum(h.named for h in hits) / len(hits) if hits else None, len(desc),
                       ok / len(desc) if desc else None, len(desc) - ok, len(valued),
                       sum(h.value_right for h in valued) / len(valued) if valued else None)


@dataclass
class ChangeSummary:
    overall: ChangeScore
    per_type: dict[str, ChangeScore] = field(default_factory=dict)
    per_domain: dict[str, ChangeScore] = field(default_factory=dict)
    per_setting: dict[str, ChangeScore] = field(default_factory=dict)
    no_change_pairs: int = 0
    false_change_rate: float | None = None  # no-change pairs whose caption describes a change

    def to_dict(self) -> dict:
        return {"overall": self.overall.to_dict(), "per_type": {k: v.to_dict() for k, v in self.per_type.items()},
                "per_domain": {k: v.to_dict() for k, v in self.per_domain.items()},
                "per_setting": {k: v.to_dict() for k, v in self.per_setting.items()},
                "no_change_pairs": self.no_change_pairs,
                "false_change_rate": None if self.false_change_rate is None else round(self.false_change_rate, 6)}


def summarize_changes(rows: Iterable[PairChanges]) -> ChangeSummary:
    rows = list(rows)
    out = ChangeSummary(_score(rows))
    for t in TYPE_IDS:
        if any(h.type == t for r in rows for h in r.truth):
            out.per_type[t] = _score(rows, t)
    for d in dict.fromkeys(r.domain for r in rows):
        out.per_domain[d] = _score([r for r in rows if r.domain == d])
    for s in dict.fromkeys(r.setting for r in rows):
        out.per_setting[s] = _score([r for r in rows if r.setting == s])
    unchanged = [r for r in rows if r.setting == "no_change"]
    out.no_change_pairs = len(unchanged)
    if unchanged:
        out.false_change_rate = sum(bool(r.described) for r in unchanged) / len(unchanged)
    return out


def evaluate_changes(captions: Mapping[str, str], records: Iterable) -> tuple[ChangeSummary, list[PairChanges]]:
    """Score ``captions`` ({pair id: caption}) against the generated ``records`` with those ids
    (records without ``regions``/``objects``, i.e. not generated, are skipped)."""
    rows = []
    for rec in records:
        extra = rec if isinstance(rec, Mapping) else rec.extra
        rid = extra.get("id", getattr(rec, "id", None))
        if rid in captions and "regions" in extra and "objects" in extra:
            rows.append(score_caption(captions[rid], rec))
    return summarize_changes(rows), rows
