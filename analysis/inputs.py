"""Loading predictions and references, and checking that they fit together before anything is scored.

Predictions: a JSON list of ``{"id", "caption"}``, the COCO results format ``[{"image_id", "caption"}]``,
or an object ``{id: caption}``. References: any dataset layout ``m3diff.data.read_dataset`` knows, or a
COCO caption ground-truth file ``{"images", "annotations": [{"image_id", "caption"}]}``.
Ids are compared as strings (COCO's integer image ids become "42"). `m3diff predict`'s file also holds,
beside the captions, each pair's image digest, its maps (``--maps``) and, for a model with a change
reader, the changes it read (``ChangeReading.to_json``), each checked as it is read.

Nothing is dropped silently: ids that do not match, duplicates and empty captions raise an
``InputError`` listing them, unless the caller chose a policy; whatever a policy did is recorded in
``Aligned.notes`` (and so in report.json).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from analysis.detection import read_reading
from analysis.localization import SanityCheck
from analysis.report import ReportError, atomic_write, read_sanity
from m3diff.data.layout import DatasetError
from m3diff.data.readers import read_dataset
from m3diff.data.record import DiffPair

# Captions are cut to this many words (and characters) before scoring. Real captions are far shorter
# (the longest references of the six datasets run to a few hundred words); a degenerate model output of
# 20,000 words stopped the METEOR jar, and a 50 MB reference kept eval busy for minutes.
MAX_CAPTION_WORDS = 1000
MAX_CAPTION_CHARS = 30_000
MISMATCH_POLICIES = ("error", "intersect")
EMPTY_POLICIES = ("error", "score-as-empty")
DUPLICATE_POLICIES = ("error", "first", "last")
_SHOW = 5  # how many offending ids a message names before it says "+N more"


class InputError(ValueError):
    """Predictions or references that cannot be scored as they are; the message says what to do."""


def listing(items, show: int = _SHOW) -> str:
    items = list(items)
    head = ", ".join(repr(x) for x in items[:show])
    return head + (f", ... (+{len(items) - show} more)" if len(items) > show else "")


@dataclass
class Predictions:
    """A predictions file: captions by pair id, and what `m3diff predict` records beside them."""

    path: Path | None
    captions: dict[str, str]  # id -> caption (first occurrence kept until a policy says otherwise)
    occurrences: dict[str, list[str]] = field(default_factory=dict)  # ids seen more than once -> all captions
    model: str = ""
    # `m3diff predict --maps`: id -> the pair's maps (analysis.localization.encode_maps' JSON form), and
    # the sanity check of those maps
    maps: dict[str, dict] = field(default_factory=dict)
    sanity: SanityCheck | None = None
    data: str | None = None  # the dataset and split it was predicted on
    split: str | None = None
    min_end_probability: float | None = None  # the decoding's end threshold (None: plain greedy)
    # a model with a change reader given every change read in one prompt (`--joint-facts`), not one per change
    joint_facts: bool = False
    images: dict[str, str] = field(default_factory=dict)  # id -> digest of both images, as predicted
    # a model with a change reader: id -> what it read (m3diff.facts.ChangeReading.to_json), checked on load
    changes: dict[str, dict] = field(default_factory=dict)

    def to_json(self, order: list[str] | None = None) -> dict:
        """`m3diff predict`'s file: rows in ``order`` (then any others), and what it was made from."""
        ids = [i for i in (order or []) if i in self.captions]
        ids += [i for i in self.captions if i not in set(ids)]
        data = {"model": self.model, "data": self.data, "split": self.split,
                "predictions": [{"id": i, "caption": self.captions[i]} for i in ids],
                "images": {i: self.images[i] for i in ids if i in self.images}}
        if self.min_end_probability is not None:
            data["min_end_probability"] = self.min_end_probability
        if self.joint_facts:
            data["joint_facts"] = True
        if self.maps:
            data["maps"] = {i: self.maps[i] for i in ids if i in self.maps}
        if self.changes:
            data["changes"] = {i: self.changes[i] for i in ids if i in self.changes}
        if self.sanity is not None:
            data["sanity"] = self.sanity.to_dict()
        return data

    def save(self, path, order: list[str] | None = None) -> None:
        """Rewrite the file atomically (a run killed mid-write keeps the previous one)."""
        atomic_write(Path(path), json.dumps(self.to_json(order), ensure_ascii=False, indent=1))


def load_predictions(path) -> Predictions:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such predictions file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_predictions(data, path)


def parse_predictions(data, path: Path | None = None) -> Predictions:
    where = str(path) if path else "predictions"
    wrapper: dict = {}
    if isinstance(data, dict) and isinstance(data.get("predictions"), list):
        wrapper = data  # the file `m3diff predict` writes
        data = data["predictions"]
    if isinstance(data, dict):
        rows = [(k, v) for k, v in data.items()]
    elif isinstance(data, list):
        rows = []
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise InputError(f"{where}: record #{i} is {type(rec).__name__}, expected an object with 'id' and 'caption'")
            # COCO results name the pair by image_id; an "id" beside it is an annotation id (loadRes renumbers it)
            key = "image_id" if "image_id" in rec else "id" if "id" in rec else None
            if key is None or "caption" not in rec:
                raise InputError(f"{where}: record #{i} needs 'id' (or COCO's 'image_id') and 'caption'; it has {sorted(rec)}")
            rows.append((rec[key], rec["caption"]))
    else:
        raise InputError(f"{where}: expected a list of {{'id', 'caption'}} records, got {type(data).__name__}")
    captions: dict[str, str] = {}
    all_caps: dict[str, list[str]] = {}
    for rid, cap in rows:
        if not isinstance(cap, str):
            raise InputError(f"{where}: the caption of id {rid!r} is {type(cap).__name__}, expected a string")
        rid = str(rid)
        all_caps.setdefault(rid, []).append(cap)
        captions.setdefault(rid, cap)
    dup = {k: v for k, v in all_caps.items() if len(v) > 1}
    out = Predictions(path=path, captions=captions, occurrences=dup)
    if wrapper:
        _wrapper_fields(out, wrapper, where)
    return out


def _wrapper_fields(out: Predictions, data: dict, where: str) -> None:
    """What `m3diff predict` records beside the captions, checked (a file may come from anyone)."""
    def text(key):
        v = data.get(key)
        if v is not None and not isinstance(v, str):
            raise InputError(f"{where}: '{key}' must be a string, got {type(v).__name__}")
        return v

    out.model, out.data, out.split = text("model") or "", text("data"), text("split")
    end = data.get("min_end_probability")
    if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float))):
        raise InputError(f"{where}: 'min_end_probability' must be a number")
    out.min_end_probability = None if end is None else float(end)
    joint = data.get("joint_facts", False)
    if not isinstance(joint, bool):
        raise InputError(f"{where}: 'joint_facts' must be true or false")
    out.joint_facts = joint
    for key in ("images", "maps", "changes"):
        v = data.get(key, {})
        if not isinstance(v, dict):
            raise InputError(f"{where}: '{key}' must be an object keyed by pair id")
    out.images = {str(k): str(v) for k, v in data.get("images", {}).items()}
    out.maps = dict(data.get("maps", {}))
    for rid, reading in data.get("changes", {}).items():
        try:
            read_reading(reading)  # checked here, so that eval and the app trust what they get
        except ValueError as exc:
            raise InputError(f"{where}: the changes read in pair {rid!r} are not a reading ({exc}); predict that "
                             "pair again (--restart) or remove its entry") from None
    out.changes = dict(data.get("changes", {}))
    if data.get("sanity") is not None:
        try:
            out.sanity = read_sanity(data["sanity"], f"{where} sanity")
        except ReportError as exc:
            raise InputError(str(exc)) from None


def load_references(path, format: str | None = None, split: str | None = None,
                    allow_outside: bool = False, warn=lambda line: None) -> list[DiffPair]:
    """Reference pairs from a dataset (any layout the readers know) or a COCO ground-truth file;
    ``warn`` receives one line per thing a person should know about the read."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json" and format in (None, "coco"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        if isinstance(data, dict) and "annotations" in data:
            return _coco_references(data, path)
        if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()) and format is None:
            format = "card"  # {pair: caption}: CARD's change_multi_captions.json under any name
        if format == "coco":
            raise InputError(f"{path}: a COCO ground-truth file needs an 'annotations' list")

    try:
        ds = read_dataset(path, format=format, split=split, images="optional", allow_outside=allow_outside)
    except (DatasetError, ValueError) as exc:
        raise InputError(str(exc)) from None
    for note in ds.notes():
        warn(note)
    return list(ds.pairs)


def _coco_references(data: dict, path: Path) -> list[DiffPair]:
    """A COCO caption ground truth read as pycocotools' ``COCO`` reads it: ``images`` may list an id once
    per annotation (authors publish it so, e.g. Spot-the-Diff's DDLA ground truth) and annotation ids may
    repeat; captions are grouped by ``image_id`` in file order, pairs ordered by first appearance in
    ``images`` (the order COCOEvalCap tokenises in). An image without any caption cannot be scored and
    is left out (a prediction for it is reported as not in the references)."""
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise InputError(f"{path}: 'annotations' must be a list of {{'image_id', 'caption'}}")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise InputError(f"{path}: 'images' must be a list of {{'id'}}")
    caps: dict[str, list[str]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or not isinstance(a.get("caption"), str):
            raise InputError(f"{path}: annotation #{i} needs 'image_id' and a string 'caption'")
        caps.setdefault(str(a["image_id"]), []).append(a["caption"])
    order = list(dict.fromkeys(str(im["id"]) for im in images if isinstance(im, dict) and "id" in im))
    ids = [k for k in order if k in caps] + [k for k in caps if k not in set(order)]
    return [DiffPair(id=k, before=None, after=None, captions=tuple(caps[k]), source="coco") for k in ids]


@dataclass
class Aligned:
    """Predictions matched to references, in reference order, with what any policy did."""

    ids: list[str]
    hyps: list[str]
    pairs: list[DiffPair]
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids not scored
    # how prediction ids were matched to reference ids: "exact", "dataset aliases" (a dataset's own
    # naming, e.g. CLEVR-Change's '000003.png_n') or "image extension" ('256' for '256.png')
    id_matching: str = "exact"


def align(preds: Predictions, pairs: list[DiffPair], on_mismatch: str = "error", on_empty: str = "error",
          on_duplicate: str = "error", references: str = "the references") -> Aligned:
    """Check ids, duplicates and empty predictions; apply the chosen policies or raise one clear error
    (``references`` names the reference file in messages)."""
    for name, val, allowed in (("on_mismatch", on_mismatch, MISMATCH_POLICIES),
                               ("on_empty", on_empty, EMPTY_POLICIES),
                               ("on_duplicate", on_duplicate, DUPLICATE_POLICIES)):
        if val not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
    where = str(preds.path) if preds.path else "predictions"
    notes: list[str] = []
    dropped: dict[str, list[str]] = {}
    captions = dict(preds.captions)

    # duplicates: in the predictions (two captions for one id) and in the references
    ref_counts = Counter(p.id for p in pairs)
    ref_dups = [k for k, c in ref_counts.items() if c > 1]
    if ref_dups:
        raise InputError(f"{references}: {len(ref_dups)} duplicate id(s): {listing(ref_dups)}; give each pair one id "
                         "in the reference file")
    if preds.occurrences:
        dups = list(preds.occurrences)
        msg = f"{where}: {len(dups)} id(s) appear more than once: {listing(dups)}"
        if on_duplicate == "error":
            raise InputError(msg + "; pass --on-duplicate first|last to keep one caption per id")
        for k, caps in preds.occurrences.items():
            captions[k] = caps[0] if on_duplicate == "first" else caps[-1]
        notes.append(msg + f"; kept the {on_duplicate} caption of each")

    ref_ids = [p.id for p in pairs]
    ref_set = set(ref_ids)
    id_matching = "exact"
    aliased = _by_alias(captions, pairs, ref_set)
    if aliased is not captions:
        captions, id_matching = aliased, "dataset aliases"
    if any(k not in ref_set for k in captions):
        captions, renamed = _by_extension(captions, ref_ids)
        if renamed:
            id_matching = "image extension"
            example = renamed[0]
            notes.append(f"{where}: {len(renamed)} prediction id(s) matched to reference ids that differ only by an "
                         f"image extension ({example[0]!r} for {example[1]!r})")
    extra = [k for k in captions if k not in ref_set]
    missing = [k for k in ref_ids if k not in captions]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} prediction id(s) not in the references: {listing(extra)}")
        if missing:
            parts.append(f"{len(missing)} reference id(s) without a prediction: {listing(missing)}")
        both = len(ref_set) - len(missing)
        msg = f"{where}: " + "; ".join(parts)
        if on_mismatch == "error" or both == 0:
            hint = (f"; pass --on-mismatch intersect to score the {both} id(s) present in both" if both
                    else f"; no id is in both it and {references} (the wrong --split, or the wrong file?)")
            raise InputError(msg + hint)
        notes.append(msg + f"; scored the {both} id(s) present in both")
        dropped.update({"prediction_not_in_references": extra, "reference_without_prediction": missing})

    kept = [p for p in pairs if p.id in captions]
    empty_pred = [p.id for p in kept if not captions[p.id].strip()]
    if empty_pred:
        msg = f"{where}: {len(empty_pred)} empty prediction(s): {listing(empty_pred)}"
        if on_empty == "error":
            raise InputError(msg + "; pass --on-empty score-as-empty to score them as empty strings (they score ~0)")
        notes.append(msg + "; scored as empty strings")
    # An empty reference is data: the authors' evaluation files keep it (Spot-the-Diff's seven pairs whose
    # every sentence is ""), and pycocoevalcap scores it as a reference like any other.
    hyps = [captions[p.id] for p in kept]
    kept, hyps = _cut_long_captions(kept, hyps, where, notes)
    return Aligned(ids=[p.id for p in kept], hyps=hyps, pairs=kept, notes=notes, dropped=dropped,
                   id_matching=id_matching)


def cut_caption(text: str, words: int = MAX_CAPTION_WORDS, chars: int = MAX_CAPTION_CHARS) -> str:
    """The caption's first ``words`` words (and at most ``chars`` characters); short captions unchanged."""
    if len(text) > chars:
        text = text[:chars]
    parts = text.split(None, words)  # stops splitting after `words`: cheap on a 50 MB string
    return " ".join(parts[:words]) if len(parts) > words else text


def _cut_long_captions(pairs: list[DiffPair], hyps: list[str], where: str, notes: list[str]):
    long_pred = [p.id for p, h in zip(pairs, hyps) if cut_caption(h) != h]
    long_ref = [p.id for p in pairs if any(cut_caption(c) != c for c in p.captions)]
    if not long_pred and not long_ref:
        return pairs, hyps
    hyps = [cut_caption(h) for h in hyps]
    pairs = [replace(p, captions=tuple(cut_caption(c) for c in p.captions)) if p.id in set(long_ref) else p
             for p in pairs]
    parts = []
    if long_pred:
        parts.append(f"{len(long_pred)} prediction(s) {listing(long_pred)}")
    if long_ref:
        parts.append(f"the references of {len(long_ref)} pair(s) {listing(long_ref)}")
    notes.append(f"{where}: " + " and ".join(parts) + f" are longer than {MAX_CAPTION_WORDS:,} words "
                 f"({MAX_CAPTION_CHARS:,} characters); scored on their first {MAX_CAPTION_WORDS:,} words")
    return pairs, hyps


def _by_alias(captions: dict[str, str], pairs: list[DiffPair], ref_set: set[str]) -> dict[str, str]:
    """Prediction ids written in a dataset's own naming, renamed to the reader's ids. CLEVR-Change's
    authors name a scene's pairs '000003.png' and '000003.png_n' (the reader: sc_000003, nsc_000003);
    readers list such names in ``extra['aliases']``. An id that is already a reference id is never renamed."""
    alias = {a: p.id for p in pairs for a in p.extra.get("aliases", ()) if a not in ref_set}
    if not alias or not any(k in alias for k in captions):
        return captions
    out: dict[str, str] = {}
    for k, cap in captions.items():
        out.setdefault(alias.get(k, k), cap)
    return out


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def _stem(name: str) -> str:
    low = name.lower()
    return next((name[: -len(e)] for e in IMAGE_EXTENSIONS if low.endswith(e)), name)


def _by_extension(captions: dict[str, str], ref_ids: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Prediction ids renamed to the reference id they equal but for an image extension ('256' and
    '256.png': FINER-MLLM's COCO references name Spot-the-Diff pairs by file). Only unambiguous matches;
    an id that is already a reference id is never renamed. Returns the captions and (old, new) pairs."""
    ref_set = set(ref_ids)
    by_stem: dict[str, list[str]] = {}
    for r in ref_ids:
        by_stem.setdefault(_stem(r), []).append(r)
    out: dict[str, str] = {}
    renamed = []
    for k, cap in captions.items():
        target = k
        if k not in ref_set:
            found = by_stem.get(_stem(k), [])
            if len(found) == 1 and found[0] not in captions:
                target = found[0]
        if target in out:  # two predictions for one pair after renaming: keep the exact one
            continue
        out[target] = cap
        if target != k:
            renamed.append((k, target))
    return out, renamed
