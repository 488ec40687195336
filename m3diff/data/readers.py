"""Readers for the six difference-captioning layouts, all yielding ``DiffPair``s.

The exact published layouts are in PAPER.md §9. Reference conventions follow the literature:
Spot-the-Diff merges an ``img_id``'s annotator records and every sentence is a reference;
CLEVR-Change yields a semantic pair and a distractor pair per scene, typed from ``type_mapping.json``.

``read_dataset(path, format=None, split=None, images="require")`` is the entry point; ``FORMATS``
lists the accepted format names. With ``images="optional"`` a missing image is collected in
``Dataset.missing_images`` instead of failing (statistics and evaluation need only annotations).
"""
from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from m3diff.change_types import map_label
from m3diff.data.layout import SPLITS, Dataset, DatasetError, ImagePaths, load_json, read_split
from m3diff.data.record import DiffPair

# Published split names → ours.
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# CLEVR-DC's six blocks of 8,000 ids in id order (the order is not confirmed by its authors, PAPER.md §9).
CLEVR_DC_ACTIONS = ("color", "texture", "add", "remove", "move", "nothing")
CLEVR_DC_BLOCK = 8000
BIRDS_COLUMNS = ("img1ObservationURL", "img1ImgURL", "img1Species", "img1Selection", "img2ObservationURL",
                 "img2ImgURL", "img2Species", "img2Selection", "split", "annN", "description")


def _splits(split: str | None, available=SPLITS) -> tuple[str, ...]:
    if split is None:
        return tuple(available)
    s = SPLIT_ALIASES.get(split)
    if s is None:
        raise ValueError(f"unknown split {split!r}; expected one of train, val, test")
    return (s,)


def _images(root: Path, images: str, allow_outside: bool) -> ImagePaths:
    if images not in ("require", "optional"):
        raise ValueError(f"images must be 'require' or 'optional', not {images!r}")
    return ImagePaths(root, required=images == "require", allow_outside=allow_outside)


def _dataset(fmt: str, root: Path, pairs, imgs: ImagePaths) -> Dataset:
    return Dataset(fmt, root, pairs, imgs.missing, imgs.outside)


# What a pair whose every reference is empty keeps: one empty reference, as the authors' own evaluation
# files keep it (Spot-the-Diff's test split: 1,270 pairs and 2,107 references in DDLA's, FINER-MLLM's and
# CARD's ground truth, seven of them "") and as pycocoevalcap then scores it.
EMPTY_REFERENCES = ("",)


def _captions(value, path: Path, record: str) -> tuple[str, ...]:
    """The non-empty captions of a record (stripped); ``EMPTY_REFERENCES`` when none is. Published files
    hold empty sentences beside real ones (Spot-the-Diff's annotators): those are dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise DatasetError(path, "captions must be a list of strings", record)
    return tuple(c.strip() for c in value if c.strip()) or EMPTY_REFERENCES


def read_omnidiff(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """Our layout (OmniDiff and ``m3diff synth``): ``root/{split}.json``, or one split file."""
    if root.is_file():
        imgs = _images(root.parent, images, allow_outside)
        split_name = SPLIT_ALIASES.get(root.stem, root.stem)
        pairs = read_split(root, split=split_name, images=imgs)
        return _dataset("omnidiff", root.parent, pairs, imgs)
    imgs = _images(root, images, allow_outside)
    wanted = _splits(split)
    files = [(s, root / f"{s}.json") for s in wanted]
    present = [(s, f) for s, f in files if f.is_file()]
    if not present:
        raise DatasetError(root / f"{wanted[0]}.json", "no such file (our layout keeps one JSON file per split)")
    if split is not None and len(present) < len(files):
        raise DatasetError(files[0][1], "no such file")
    pairs, seen = [], {}
    for s, f in present:
        for p in read_split(f, root=root, split=s, images=imgs):
            if p.id in seen:
                raise DatasetError(f, f"duplicate id, also in {seen[p.id]}", f"id {p.id!r}")
            seen[p.id] = f.name
            pairs.append(p)
    return _dataset("omnidiff", root, pairs, imgs)


def read_spot_the_diff(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """``annotations/{split}.json`` of ``{img_id, sentences}``, one record per annotator: merged per
    ``img_id``, every non-empty sentence a reference; ``extra['annotators']`` keeps each annotator's
    sentences. The published test.json has annotators whose only sentence is empty: they are dropped, and
    a pair left with no sentence at all keeps one empty reference (``EMPTY_REFERENCES``), as the authors'
    evaluation files do."""
    imgs = _images(root, images, allow_outside)
    pairs = []
    for s in _splits(split):
        path = root / "annotations" / f"{s}.json"
        data = load_json(path)
        if not isinstance(data, list):
            raise DatasetError(path, "expected a list of {img_id, sentences} records")
        merged: dict[str, list[tuple[str, ...]]] = {}
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "img_id" not in rec or "sentences" not in rec:
                raise DatasetError(path, "expected keys img_id and sentences", f"#{i}")
            sents = _captions(rec["sentences"], path, f"#{i}")
            annotators = merged.setdefault(str(rec["img_id"]), [])
            if sents != EMPTY_REFERENCES:
                annotators.append(sents)
        for img_id, annotators in merged.items():
            label = f"img_id {img_id!r}"
            pairs.append(DiffPair(
                id=img_id,
                before=imgs.resolve(f"resized_images/{img_id}.png", path, label),
                after=imgs.resolve(f"resized_images/{img_id}_2.png", path, label),
                captions=tuple(c for sents in annotators for c in sents) or EMPTY_REFERENCES,
                domain="real", scene=img_id, source="spot_the_diff", split=s,
                extra={"annotators": [list(a) for a in annotators]},
            ))
    return _dataset("spot_the_diff", root, pairs, imgs)


def read_iedit(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """``{train,valid,test}.json`` of ``{img0, img1, sents, uid}``; image files relative to the
    dataset folder or its ``images/``. The same image pair can occur under several uids (one per
    request): each uid is its own pair. A record with no non-empty request keeps one empty reference."""
    imgs = _images(root, images, allow_outside)
    pairs, seen = [], {}
    file_of = {"train": "train", "val": "valid", "test": "test"}
    for s in _splits(split):
        path = root / f"{file_of[s]}.json"
        data = load_json(path)
        if not isinstance(data, list):
            raise DatasetError(path, "expected a list of {img0, img1, sents, uid} records")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or not {"img0", "img1", "sents", "uid"} <= rec.keys():
                raise DatasetError(path, "expected keys img0, img1, sents, uid", f"#{i}")
            uid = str(rec["uid"])
            label = f"#{i} (uid {uid!r})"
            if uid in seen:
                raise DatasetError(path, f"duplicate uid, first used in {seen[uid]}", label)
            seen[uid] = path.name

            def img(name):
                base = root / "images" if (root / "images" / str(name)).is_file() else root
                return imgs.resolve(str(name), path, label, base=base)

            caps = _captions(rec["sents"], path, label)
            pairs.append(DiffPair(
                id=uid, before=img(rec["img0"]), after=img(rec["img1"]), captions=caps,
                domain="real", scene=uid, source="iedit", split=s,
            ))
    return _dataset("iedit", root, pairs, imgs)


def read_clevr_change(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """Per scene id: a semantic pair ``sc_%06d`` and a distractor pair ``nsc_%06d``.

    The authors' evaluation (RobustChangeCaptioning's utils/eval_utils.py) names the same pairs
    ``%06d.png`` and ``%06d.png_n`` in its COCO files; ``extra['aliases']`` keeps those names so
    predictions written that way match (analysis.inputs.align)."""
    imgs = _images(root, images, allow_outside)
    splits_path = root / "splits.json"
    splits = load_json(splits_path)
    if not isinstance(splits, dict):
        raise DatasetError(splits_path, "expected {train: [ids], val: [...], test: [...]}")
    change = load_json(root / "change_captions.json")
    no_change = load_json(root / "no_change_captions.json")
    type_of: dict[int, str] = {}
    tm_path = root / "type_mapping.json"
    if tm_path.is_file():
        tm = load_json(tm_path)
        if not isinstance(tm, dict):
            raise DatasetError(tm_path, "expected {type: [file names]}")
        for label, names in tm.items():
            map_label("clevr_change", label)  # fails loudly on a label the table does not know
            for name in names:
                m = re.search(r"(\d+)", str(name))
                if m:
                    type_of[int(m.group(1))] = label
    pairs = []
    for s in _splits(split):
        ids = splits.get(s)
        if not isinstance(ids, list):
            raise DatasetError(splits_path, f"no list of ids for split {s!r}")
        for n in ids:
            key = f"CLEVR_default_{int(n):06d}.png"
            scene = f"{int(n):06d}"
            for kind, caps_by, after_rel, types, alias in (
                ("sc", change, f"sc_images/CLEVR_semantic_{int(n):06d}.png",
                 map_label("clevr_change", type_of[int(n)]) if int(n) in type_of else (), f"{scene}.png"),
                ("nsc", no_change, f"nsc_images/CLEVR_nonsemantic_{int(n):06d}.png",
                 map_label("clevr_change", "distractor"), f"{scene}.png_n"),
            ):
                label = f"{key} ({kind})"
                src = root / ("change_captions.json" if kind == "sc" else "no_change_captions.json")
                if key not in caps_by:
                    raise DatasetError(src, "no captions for this image", key)
                pairs.append(DiffPair(
                    id=f"{kind}_{scene}",
                    before=imgs.resolve(f"images/{key}", splits_path, label),
                    after=imgs.resolve(after_rel, splits_path, label),
                    captions=_captions(caps_by[key], src, key), change_types=types,
                    domain="render", scene=scene, source="clevr_change", split=s,
                    extra={"label": type_of.get(int(n), "") if kind == "sc" else "distractor",
                           "aliases": [alias]},
                ))
    return _dataset("clevr_change", root, pairs, imgs)


def read_clevr_dc(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """``bef/<id>.png``, ``aft/<id>.png``, ``captions.json`` keyed by the unpadded id, ``split.json``."""
    imgs = _images(root, images, allow_outside)
    split_path = root / "split.json"
    splits = load_json(split_path)
    if not isinstance(splits, dict):
        raise DatasetError(split_path, "expected {train: [ids], val: [...], test: [...]}")
    cap_path = root / "captions.json"
    caps = load_json(cap_path)
    pairs = []
    for s in _splits(split):
        ids = splits.get(s, splits.get("valid") if s == "val" else None)
        if not isinstance(ids, list):
            raise DatasetError(split_path, f"no list of ids for split {s!r}")
        for n in ids:
            key = str(int(n))
            if key not in caps:
                raise DatasetError(cap_path, "no captions for this id", key)
            block = int(n) // CLEVR_DC_BLOCK
            action = CLEVR_DC_ACTIONS[block] if 0 <= block < len(CLEVR_DC_ACTIONS) else ""
            pairs.append(DiffPair(
                id=key,
                before=imgs.resolve(f"bef/{key}.png", split_path, f"id {key}"),
                after=imgs.resolve(f"aft/{key}.png", split_path, f"id {key}"),
                captions=_captions(caps[key], cap_path, key),
                change_types=map_label("clevr_dc", action) if action else (),
                domain="render", scene=key, source="clevr_dc", split=s, extra={"action": action},
            ))
    return _dataset("clevr_dc", root, pairs, imgs)


def _birds_tsv(root: Path) -> Path:
    if root.is_file():
        return root
    found = sorted(root.glob("*.tsv"))
    if not found:
        raise DatasetError(root, "no .tsv file (Birds-to-Words is one TSV with the columns of PAPER.md §9)")
    return found[0]


def read_birds_to_words(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """One TSV; a pair is the two image URLs, up to five descriptions. Images are URLs: a local copy
    is looked for under ``images/`` + the URL's path (``https://static.inaturalist.org/photos/647514/
    medium.jpg`` → ``images/photos/647514/medium.jpg``, what ``wget -x -nH`` writes): iNaturalist's file
    names are all ``medium.jpg``, so the name alone would give every pair the same image.
    ``extra`` keeps the URLs and species."""
    path = _birds_tsv(root)
    base = path.parent
    imgs = _images(base, images, allow_outside)
    wanted = set(_splits(split))
    groups: dict[tuple[str, str], dict] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        absent = [c for c in BIRDS_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise DatasetError(path, f"missing column(s) {', '.join(absent)}")
        for line, row in enumerate(reader, start=2):
            s = SPLIT_ALIASES.get((row["split"] or "").strip().lower())
            if s is None:
                raise DatasetError(path, f"unknown split {row['split']!r}", f"line {line}")
            if s not in wanted or not (row["description"] or "").strip():
                continue
            key = (row["img1ImgURL"], row["img2ImgURL"])
            g = groups.setdefault(key, {"split": s, "captions": [], "row": row, "line": line})
            if g["split"] != s:
                raise DatasetError(path, f"pair is in split {g['split']} and {s}", f"line {line}")
            g["captions"].append(row["description"].strip())
    pairs = []
    for (url1, url2), g in groups.items():
        row, label = g["row"], f"line {g['line']}"
        pid = hashlib.sha1(f"{url1}\t{url2}".encode()).hexdigest()[:12]

        def img(url):
            return imgs.resolve(_url_path(url), path, label, base=base / "images")

        pairs.append(DiffPair(
            id=pid, before=img(url1), after=img(url2), captions=tuple(g["captions"]),
            domain="real", scene=pid, source="birds_to_words", split=g["split"],
            extra={"before_url": url1, "after_url": url2,
                   "species": [row["img1Species"], row["img2Species"]]},
        ))
    return _dataset("birds_to_words", base, pairs, imgs)


CARD_CAPTIONS = "change_multi_captions.json"


def read_card(root: Path, split=None, images="require", allow_outside=False) -> Dataset:
    """CARD's multi-change Spot-the-Diff (Tu et al., 2024): ``change_multi_captions.json``, a dict from a
    pair (its image name, "256.png", or its id) to one caption — an annotator's sentences joined — and
    ``splits.json`` ``{"train", "val", "test": [ids]}`` beside it. A pair's id is its name without the
    extension (Spot-the-Diff's ``img_id``); an empty caption is kept as the pair's one reference. Images:
    ``images/<name>`` and ``sc_images/<name>`` (CARD's layout) or Spot-the-Diff's ``resized_images/``."""
    path = root / CARD_CAPTIONS if root.is_dir() else root
    root = path.parent
    imgs = _images(root, images, allow_outside)
    data = load_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetError(path, "expected an object from pair name to its caption (CARD's change_multi_captions.json)")
    by_id = {_strip_image_ext(str(k)): str(k) for k in data}
    splits_path = root / "splits.json"
    if splits_path.is_file():
        raw = load_json(splits_path)
        if not isinstance(raw, dict):
            raise DatasetError(splits_path, "expected {train, val, test: [pair ids]}")
        splits = {SPLIT_ALIASES.get(k, k): v for k, v in raw.items()}
    elif split is not None:
        raise DatasetError(splits_path, f"no such file: split {split!r} needs CARD's splits.json beside {path.name}")
    else:
        splits = {"": list(by_id)}
    pairs = []
    for s in _splits(split) if split is not None or splits_path.is_file() else ("",):
        ids = splits.get(s)
        if not isinstance(ids, list):
            raise DatasetError(splits_path, f"no list of pair ids for split {s!r}")
        for raw_id in ids:
            pid = _strip_image_ext(str(raw_id))
            key = by_id.get(pid)
            if key is None:
                raise DatasetError(path, f"no caption for pair {raw_id!r} of {splits_path.name}'s {s} split")
            label = f"pair {key!r}"
            name = key if Path(key).suffix else f"{key}.png"
            if (root / "images").is_dir() and (root / "sc_images").is_dir():
                before, after = f"images/{name}", f"sc_images/{name}"
            else:
                before, after = f"resized_images/{pid}.png", f"resized_images/{pid}_2.png"
            pairs.append(DiffPair(
                id=pid, before=imgs.resolve(before, path, label), after=imgs.resolve(after, path, label),
                captions=_captions(data[key], path, label), domain="real", scene=pid, source="card", split=s,
            ))
    return _dataset("card", root, pairs, imgs)


def _strip_image_ext(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg") else name


def _url_path(url: str) -> str:
    """The path part of an image URL, relative (no host, no query): where its local copy lies under images/."""
    return unquote(urlsplit(url.strip()).path).lstrip("/") or "?"


FORMATS: dict[str, Callable[..., Dataset]] = {
    "omnidiff": read_omnidiff,
    "spot_the_diff": read_spot_the_diff,
    "iedit": read_iedit,
    "clevr_change": read_clevr_change,
    "clevr_dc": read_clevr_dc,
    "birds_to_words": read_birds_to_words,
    "card": read_card,
}
FORMAT_ALIASES = {"synth": "omnidiff", "synthetic": "omnidiff", "ours": "omnidiff", "spot": "spot_the_diff",
                  "image_editing_request": "iedit", "clevr-change": "clevr_change", "clevr-dc": "clevr_dc",
                  "birds": "birds_to_words", "spot-the-diff": "spot_the_diff", "birds-to-words": "birds_to_words",
                  "card-spot": "card", "spot-the-diff-multi": "card", "spot_the_diff_multi": "card"}


def format_name(name: str) -> str:
    key = name.strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(FORMATS)}")
    return key


def detect_format(path: Path) -> str:
    """The layout of ``path`` from its marker files; an error that lists the formats otherwise."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    if path.is_file():
        if path.suffix == ".tsv":
            return "birds_to_words"
        if path.name == CARD_CAPTIONS:
            return "card"
        if path.suffix == ".json":
            return "omnidiff"
    else:
        if (path / CARD_CAPTIONS).is_file():  # before annotations/: CARD's folder may also hold Spot-the-Diff's
            return "card"
        if (path / "annotations").is_dir():
            return "spot_the_diff"
        if (path / "change_captions.json").is_file():
            return "clevr_change"
        if (path / "split.json").is_file() and (path / "captions.json").is_file():
            return "clevr_dc"
        if (path / "valid.json").is_file():
            return "iedit"
        if any((path / f"{s}.json").is_file() for s in SPLITS):
            return "omnidiff"
        if any(path.glob("*.tsv")):
            return "birds_to_words"
    raise DatasetError(path, f"cannot tell the dataset format; pass one of: {', '.join(FORMATS)}")


def read_dataset(path, format: str | None = None, split: str | None = None, images: str = "require",
                 allow_outside: bool = False) -> Dataset:
    """Read any supported layout. ``format`` None detects it; ``split`` None reads every split.

    Image paths must stay inside the dataset folder; ``allow_outside=True`` reads paths that leave it
    and lists them in ``Dataset.outside_images`` (``Dataset.notes()`` says so in one line)."""
    path = Path(path)
    name = format_name(format) if format else detect_format(path)
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    return FORMATS[name](path, split=split, images=images, allow_outside=allow_outside)
