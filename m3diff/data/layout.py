"""Our own on-disk layout (OmniDiff and the synthetic data): one JSON file per split.

``DIR/{train,val,test}.json`` is a list of records
``{id, before, after, captions: [str], change_types: [ids], domain, scene}`` (PAPER.md §9), image
paths relative to ``DIR``. Extra keys are kept in ``DiffPair.extra`` (the generator stores the changed
regions there). Every record is validated on read; an error names the file, the record and the fault.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from m3diff.change_types import BY_ID, TYPE_IDS
from m3diff.data.record import DiffPair

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("id", "before", "after", "captions", "change_types", "domain", "scene")


class DatasetError(ValueError):
    """A dataset file that cannot be read as promised: names the file, the record and the fault."""

    def __init__(self, path, problem: str, record: str | None = None):
        self.path = Path(path)
        self.record = record
        where = f"{self.path}" + (f", record {record}" if record is not None else "")
        super().__init__(f"{where}: {problem}")


@dataclass
class Dataset:
    """What a reader returns: the pairs, and the images it looked for and did not find."""

    format: str
    root: Path
    pairs: list[DiffPair]
    missing_images: list[Path] = field(default_factory=list)
    # image paths outside ``root``, read because the caller allowed it (said once by the CLI)
    outside_images: list[Path] = field(default_factory=list)

    @property
    def empty_reference_pairs(self) -> list[str]:
        """Ids of the pairs whose every reference is empty (kept with one "" reference, as the authors'
        evaluation files keep them)."""
        return [p.id for p in self.pairs if not any(c.strip() for c in p.captions)]

    def notes(self) -> list[str]:
        """One line per thing a person should know about this read (for the CLI's warnings)."""
        out = []
        empty = self.empty_reference_pairs
        if empty:
            out.append(f"{len(empty)} pair(s) of {self.root} have only empty references (first: {empty[0]!r}); "
                       "kept with an empty reference, as the authors' evaluation files keep them")
        if self.outside_images:
            out.append(f"{len(self.outside_images)} image path(s) lie outside the dataset folder {self.root} "
                       f"(first: {self.outside_images[0]}); read because outside paths were allowed")
        return out


def load_json(path: Path):
    """``json.load`` whose errors say which file and where."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"not UTF-8 text ({exc.reason})") from None


class ImagePaths:
    """Where a reader's image paths may lead: inside the dataset folder, unless the caller allowed more.

    A record whose image path leaves ``root`` (an absolute path, ``../``, a symlink pointing out) is
    refused: a dataset is data, and must not make a program read files elsewhere on the machine.
    ``allow_outside=True`` reads such paths and lists them in ``outside`` so the caller can say so once.
    ``required=False`` collects missing images in ``missing`` instead of failing (annotations only).
    """

    def __init__(self, root, required: bool = True, allow_outside: bool = False):
        self.root = Path(root)
        self.required = required
        self.allow_outside = allow_outside
        self.missing: list[Path] = []
        self.outside: list[Path] = []
        self._real_root = self.root.resolve()

    def resolve(self, rel, path: Path, record: str, base=None) -> Path | None:
        """The image ``rel`` (relative to ``base``, default the root) as a path, or an error naming the record."""
        p = Path(rel)
        p = p if p.is_absolute() else Path(base if base is not None else self.root) / p
        real = p.resolve()  # follows symlinks and "..": what would really be opened
        if not real.is_relative_to(self._real_root):
            if not self.allow_outside:
                raise DatasetError(path, f"image path {str(rel)!r} leads outside the dataset folder {self.root} "
                                         "(refused; pass --allow-outside-root if you trust this dataset)", record)
            self.outside.append(p)
        if p.is_file():
            return p
        if self.required:
            raise DatasetError(path, f"image {p} does not exist (pass images='optional' for annotations only)", record)
        self.missing.append(p)
        return None


def resolve_image(root: Path, rel, missing: list[Path] | None, path: Path, record: str) -> Path | None:
    """Absolute image path inside ``root``; a missing image is fatal unless ``missing`` collects it."""
    images = ImagePaths(root, required=missing is None)
    found = images.resolve(rel, path, record)
    if missing is not None:
        missing.extend(images.missing)
    return found


def _check_record(raw, path: Path, index: int) -> str:
    label = f"#{index}"
    if not isinstance(raw, dict):
        raise DatasetError(path, f"expected an object, got {type(raw).__name__}", label)
    rid = raw.get("id")
    if isinstance(rid, str) and rid:
        label = f"#{index} (id {rid!r})"
    absent = [k for k in REQUIRED_KEYS if k not in raw]
    if absent:
        raise DatasetError(path, f"missing key(s) {', '.join(absent)}", label)
    if not isinstance(rid, str) or not rid:
        raise DatasetError(path, "'id' must be a non-empty string", label)
    for key in ("before", "after", "domain"):
        if not isinstance(raw[key], str):
            raise DatasetError(path, f"{key!r} must be a string", label)
    if not isinstance(raw["scene"], (str, int)):
        raise DatasetError(path, "'scene' must be a string", label)
    caps = raw["captions"]
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
        raise DatasetError(path, "'captions' must be a non-empty list of non-empty strings", label)
    types = raw["change_types"]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise DatasetError(path, "'change_types' must be a list of strings", label)
    unknown = [t for t in types if t not in BY_ID]
    if unknown:
        raise DatasetError(path, f"unknown change type(s) {unknown}; known: {', '.join(TYPE_IDS)}", label)
    return label


def read_split(path, *, root=None, split: str = "", source: str = "omnidiff",
               missing: list[Path] | None = None, images: ImagePaths | None = None) -> list[DiffPair]:
    """Read and validate one split file of our layout.

    ``missing`` is None to require every image, or a list that collects the absent ones (their
    ``DiffPair.before``/``after`` is then None). ``images`` (an ``ImagePaths``) replaces both.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    own = images is None
    if own:
        images = ImagePaths(root, required=missing is None)
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(path, f"expected a list of records, got {type(data).__name__}")
    pairs, seen = [], {}
    for i, raw in enumerate(data):
        label = _check_record(raw, path, i)
        if raw["id"] in seen:
            raise DatasetError(path, f"duplicate id, first used by record #{seen[raw['id']]}", label)
        seen[raw["id"]] = i
        extra = {k: v for k, v in raw.items() if k not in REQUIRED_KEYS}
        pairs.append(DiffPair(
            id=raw["id"],
            before=images.resolve(raw["before"], path, label),
            after=images.resolve(raw["after"], path, label),
            captions=tuple(raw["captions"]),
            change_types=tuple(raw["change_types"]),
            domain=raw["domain"],
            scene=str(raw["scene"]),
            source=source,
            split=split,
            extra=extra,
        ))
    if own and missing is not None:
        missing.extend(images.missing)
    return pairs


def record_json(pair: DiffPair, root) -> dict:
    """The on-disk record of a pair, its image paths relative to ``root`` where they lie under it."""
    root = Path(root)

    def rel(p):
        if p is None:
            return ""
        p = Path(p)
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return p.as_posix()

    out = {"id": pair.id, "before": rel(pair.before), "after": rel(pair.after),
           "captions": list(pair.captions), "change_types": list(pair.change_types),
           "domain": pair.domain, "scene": pair.scene}
    out.update({k: v for k, v in pair.extra.items() if k not in out})
    return out


def dumps_records(records: list[dict]) -> str:
    """The exact bytes of a split file: stable key order and formatting, so equal data → equal files."""
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records) + "\n]\n"


def write_split(path, pairs: list[DiffPair], root=None) -> None:
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    path.write_text(dumps_records([record_json(p, root) for p in pairs]), encoding="utf-8")
