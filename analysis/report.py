"""report.json: the one typed object an evaluation produces, and the only code that knows its keys.

``Report`` holds everything ``m3diff eval`` measured — per run its scores per slice (an
``analysis.breakdown.Breakdown``), its protocol card, its input notes, and where the references are
generated its change-level scores, its change reader's detections, its maps' localization and their
sanity check — plus the test pairs,
the run-vs-run comparison and the grounding checks. ``Report.to_json`` writes it (schema
``m3diff.eval/2``); ``Report.from_json`` reads it back and refuses, with one line naming the field, a
document that is not one: wrong types, strings or lists past their limits, another schema. A report
may come from anyone (the hosted app takes uploads), so reading one is validation, not trust.

``read_report`` gives a ``LoadedReport``: the report, the folders its images may be read from, and
where each pair's images are — kept beside the report, never written into it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.breakdown import Breakdown, BreakdownConfig, Comparison, Delta, PairScore, SliceDelta, SliceResult
from analysis.changes import ChangeHit, ChangeScore, ChangeSummary
from analysis.detection import DetectionHit, DetectionScore, DetectionSummary
from analysis.grounding import GroundingChecks, GroundingTargets
from analysis.localization import (
    LocalizationRun,
    LocalizationScore,
    LocalizationSummary,
    NoChangeComparison,
    Peakedness,
    SanityCheck,
    SanityStep,
)
from analysis.metrics import METRICS
from analysis.protocol import Protocol
from m3diff.facts import ChangeFact, ObjectFact

SCHEMA = "m3diff.eval/2"
CONVENTIONS = {
    "scale": "all scores x100",
    "tokenisation": "PTB (pycocoevalcap), once for all slices",
    "slices": "every slice re-scored as its own corpus: corpus BLEU, CIDEr-D document frequencies from the "
              "slice's references, METEOR aggregated by the jar over the slice; a pair with several types is in each",
    "macro": "unweighted mean of the per-type scores over the types present",
    "micro": "pooled: all pairs with at least one type, each once, scored as one corpus",
    "ci": "percentile bootstrap over the slice's pairs, every resample re-scored as a corpus",
    "pair_scores": "CIDEr-D with the whole set's document frequencies; smoothed sentence BLEU-4; segment METEOR",
}
PAIR_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")


class ReportError(ValueError):
    """A report.json that is not one ``m3diff eval`` wrote; the message says what is wrong, in one line."""


@dataclass(frozen=True)
class ReportLimits:
    """How large a report may be: an uploaded one is held in memory, per visitor."""

    max_pairs: int = 100_000
    max_string: int = 30_000  # characters: captions are cut to 30,000 before scoring
    max_items: int = 10_000  # entries of any other list or map


# ----------------------------------------------------------------------------------------- the sections
@dataclass(frozen=True)
class Region:
    """One change of a generated pair: its type and its box in each image (original pixels)."""

    type: str
    before: tuple[float, float, float, float] | None
    after: tuple[float, float, float, float] | None


@dataclass
class PairRecord:
    """A test pair as scored: the base run's caption and per-pair scores, its references, and on
    generated data its true changes."""

    score: PairScore
    regions: list[Region] | None = None  # None: the references do not know the changes
    no_change: str | None = None  # a generated no-change pair's kind: "identical", "jpeg", "noise"

    @property
    def id(self) -> str:
        return self.score.id


@dataclass
class ChangesRun:
    """Does the caption name each true change (``analysis.changes``): the summary and each pair's hits."""

    summary: ChangeSummary
    pairs: dict[str, list[ChangeHit]] = field(default_factory=dict)


@dataclass
class DetectionRun:
    """Does the model's change reader read each true change (``analysis.detection``): the summary and each
    pair's hits (one per change type true or detected in it)."""

    summary: DetectionSummary
    pairs: dict[str, list[DetectionHit]] = field(default_factory=dict)


@dataclass
class RunReport:
    scores: Breakdown
    protocol: Protocol | None = None
    notes: list[str] = field(default_factory=list)  # what the input checks and policies did
    dropped: dict[str, list[str]] = field(default_factory=dict)  # why -> ids not scored
    changes: ChangesRun | None = None
    localization: LocalizationRun | None = None
    sanity: SanityCheck | None = None
    detection: DetectionRun | None = None  # a model with a change reader, on generated references


@dataclass
class GroundingSection:
    """``m3diff probe``'s checks: does each model read its images."""

    data: str
    split: str
    pairs: int
    models: dict[str, GroundingChecks]


@dataclass
class ReportMeta:
    model: str = ""
    predictions: dict[str, str] = field(default_factory=dict)
    references: str = ""
    format: str | None = None
    split: str | None = None
    date: str = ""
    metrics_available: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it is not there
    generator: dict | None = None  # ``m3diff synth``'s settings: the pairs can be redrawn from them


@dataclass
class Report:
    meta: ReportMeta
    runs: dict[str, RunReport]  # the first is the base run
    pairs: list[PairRecord]  # the base run's
    comparison: Comparison | None = None
    grounding: GroundingSection | None = None
    conventions: dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))

    @property
    def base(self) -> str:
        return next(iter(self.runs))

    @property
    def run(self) -> RunReport:
        return self.runs[self.base]

    def pair(self, pair_id: str) -> PairRecord:
        for p in self.pairs:
            if p.id == pair_id:
                return p
        raise KeyError(f"the report has no pair {pair_id!r}")

    def grounding_of(self, run: str | None = None) -> GroundingChecks | None:
        """The grounding checks of a run (the base run's by default; a report of one model, that one)."""
        if self.grounding is None:
            return None
        models = self.grounding.models
        run = run or self.base
        return models.get(run) or (next(iter(models.values())) if len(models) == 1 else None)

    # ------------------------------------------------------------------------------ writing
    def to_json(self) -> dict:
        base = self.base
        runs = {}
        for name, r in self.runs.items():
            s = r.scores
            entry = {
                "overall": s.overall.to_json(), "micro": None if s.micro is None else s.micro.to_json(),
                "macro": {m: _round(s.macro.get(m)) for m in METRICS}, "macro_types": list(s.macro_types),
                "absent_types": list(s.absent_types),
                **{key: {k: v.to_json() for k, v in getattr(s, key).items()}
                   for key in ("per_type", "per_domain", "per_source", "per_changes")},
                "protocol": None if r.protocol is None else r.protocol.to_json(),
                "notes": list(r.notes), "dropped": {k: list(v) for k, v in r.dropped.items()},
            }
            if name != base:  # the base run's pairs are the report's own
                entry["pairs"] = {p.id: {"caption": p.caption, **{m: _round(p.scores.get(m)) for m in PAIR_METRICS}}
                                  for p in s.pairs}
            if r.changes is not None:
                entry["changes"] = {**r.changes.summary.to_dict(),
                                    "pairs": {k: [h.to_dict() for h in v] for k, v in r.changes.pairs.items()}}
            if r.detection is not None:
                entry["detection"] = {**r.detection.summary.to_dict(),
                                      "pairs": {k: [h.to_dict() for h in v] for k, v in r.detection.pairs.items()}}
            if r.localization is not None:
                entry["localization"] = r.localization.to_dict()
            if r.sanity is not None:
                entry["sanity"] = r.sanity.to_dict()
            runs[name] = entry
        pairs = []
        for p in self.pairs:
            rec = p.score.to_json()
            if p.regions is not None:
                rec["regions"] = [{"type": g.type, "before": _box_json(g.before), "after": _box_json(g.after)}
                                  for g in p.regions]
            if p.no_change is not None:
                rec["no_change"] = p.no_change
            pairs.append(rec)
        meta = self.meta
        out = {
            "schema": SCHEMA,
            "meta": {"model": meta.model, "predictions": dict(meta.predictions), "references": meta.references,
                     "format": meta.format, "split": meta.split, "date": meta.date,
                     "bootstrap": _config_json(self.run.scores.config),
                     "metrics_available": list(meta.metrics_available), "unavailable": dict(meta.unavailable),
                     "generator": meta.generator},
            "conventions": dict(self.conventions),
            "runs": runs,
            "pairs": pairs,
        }
        if self.comparison is not None:
            out["comparison"] = {"base": self.comparison.base, "runs": {
                run: {key: {"n": d.n, "n_base": d.n_base, "paired": d.paired,
                            **{m: None if v is None else {"delta": _round(v.delta),
                                                          **({"ci": [_round(v.ci[0]), _round(v.ci[1])]} if v.ci else {})}
                               for m, v in d.deltas.items()}}
                      for key, d in table.items()}
                for run, table in self.comparison.runs.items()}}
        if self.grounding is not None:
            out["grounding"] = grounding_json(self.grounding)
        return out

    def headline_json(self) -> dict:
        """The base run's tables, its protocol and the comparison: what ``m3diff eval --json`` prints."""
        data = self.to_json()
        base = data["runs"][self.base]
        keys = ("overall", "micro", "macro", "macro_types", "per_type", "per_domain", "per_source", "per_changes",
                "protocol")
        return {"run": self.base, **{k: base[k] for k in keys}, **({"comparison": data["comparison"]}
                                                                     if "comparison" in data else {})}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False)

    def save(self, path) -> Path:
        path = Path(path)
        atomic_write(path, self.dumps())
        return path

    # ------------------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, data, limits: ReportLimits = ReportLimits()) -> "Report":
        """The report a parsed report.json holds, checked field by field (``ReportError`` names the first
        one that is wrong)."""
        return _read_report(_Node(data, "report", limits))

    @classmethod
    def loads(cls, text: str, limits: ReportLimits = ReportLimits(), name: str = "report") -> "Report":
        try:
            data = json.loads(text)
        except RecursionError:
            raise ReportError(f"{name} is nested too deeply to be a report.json") from None
        except json.JSONDecodeError as exc:
            raise ReportError(f"{name} is not JSON (line {exc.lineno}: {exc.msg}).") from None
        try:
            return cls.from_json(data, limits)
        except ReportError as exc:
            raise ReportError(f"{name}: {exc}") from None


def _round(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


def _box_json(box):
    return None if box is None else [round(float(v), 4) for v in box]


def _config_json(c: BreakdownConfig) -> dict:
    return {"bootstrap": c.bootstrap, "confidence": c.confidence, "seed": c.seed, "worst_k": c.worst_k,
            "min_n_for_ci": c.min_n_for_ci}


# ------------------------------------------------------------------------- reading, field by field
class _Node:
    """A value of the parsed document and its path ("runs.m3diff.per_type.color.CIDEr-D"), with typed
    accessors that raise ReportError naming the path."""

    def __init__(self, value, path: str, limits: ReportLimits):
        self.value, self.path, self.limits = value, path, limits

    def fail(self, expected: str, at: str | None = None):
        raise ReportError(f"{at or self.path}: expected {expected}, got {_kind(self.value)}")

    def __getitem__(self, key: str) -> "_Node":
        obj = self.obj()
        return _Node(obj.get(key), f"{self.path}.{key}", self.limits)

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is not None

    def obj(self) -> dict:
        if not isinstance(self.value, dict):
            self.fail("an object")
        if len(self.value) > self.limits.max_items:
            raise ReportError(f"{self.path}: more than {self.limits.max_items:,} entries")
        return self.value

    def items(self):
        for k in self.obj():
            if not isinstance(k, str):
                raise ReportError(f"{self.path}: keys must be strings")
            self._check_len(k, f"{self.path} key")
            yield k, self[k]

    def list(self, max_items: int | None = None) -> list["_Node"]:
        if not isinstance(self.value, list):
            self.fail("a list")
        most = max_items or self.limits.max_items
        if len(self.value) > most:
            raise ReportError(f"{self.path}: more than {most:,} items")
        return [_Node(v, f"{self.path}[{i}]", self.limits) for i, v in enumerate(self.value)]

    def str(self, optional: bool = False) -> str | None:
        if self.value is None and optional:
            return None
        if not isinstance(self.value, str):
            self.fail("a string")
        self._check_len(self.value, self.path)
        return self.value

    def _check_len(self, s: str, where: str):
        if len(s) > self.limits.max_string:
            raise ReportError(f"{where}: a string of more than {self.limits.max_string:,} characters")

    def num(self, optional: bool = True) -> float | None:
        v = self.value
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail("a number")
        return float(v)

    def number(self) -> int | float:
        """A number as written: a whole number stays an int (settings such as a seed)."""
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail("a number")
        return v

    def int(self) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail("a whole number")
        return v

    def bool(self, optional: bool = False) -> bool | None:
        if self.value is None and optional:
            return None
        if not isinstance(self.value, bool):
            self.fail("true or false")
        return self.value

    def strs(self) -> list[str]:
        return [n.str() for n in self.list()] if self.value is not None else []

    def map(self, read: Callable[["_Node"], object]) -> dict:
        return {k: read(n) for k, n in self.items()} if self.value is not None else {}

    def interval(self) -> tuple[float, float] | None:
        if self.value is None:
            return None
        items = self.list()
        if len(items) != 2:
            self.fail("[low, high]")
        return items[0].num(False), items[1].num(False)

    def box(self) -> tuple[float, float, float, float] | None:
        if self.value is None:
            return None
        items = self.list()
        if len(items) != 4:
            self.fail("a box [x0, y0, x1, y1]")
        return tuple(n.num(False) for n in items)


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _slice(node: _Node, kind: str, name: str) -> SliceResult:
    ci = node["ci"]
    words = node["words"].map(lambda n: n.num(False)) if node.has("words") else None
    if words is not None and set(words) != {"caption", "references"}:
        node["words"].fail("{caption, references}")
    return SliceResult(kind, name, node["n"].int(), {m: node[m].num() for m in METRICS},
                       {m: ci[m].interval() for m in METRICS} if node.has("ci") else {m: None for m in METRICS},
                       node["worst"].strs(), words=words)


def _pair_score(node: _Node) -> PairScore:
    return PairScore(node["id"].str(), node["caption"].str(), node["refs"].strs(), node["types"].strs(),
                     node["domain"].str(optional=True) or "", node["source"].str(optional=True) or "",
                     {m: node[m].num() for m in PAIR_METRICS})


def _breakdown(node: _Node, pairs: list[PairScore], config: BreakdownConfig) -> Breakdown:
    tables = {}
    for key, kind in (("per_type", "type"), ("per_domain", "domain"), ("per_source", "source"),
                      ("per_changes", "changes")):
        tables[key] = {name: _slice(n, kind, name) for name, n in node[key].items()} if node.has(key) else {}
    return Breakdown(_slice(node["overall"], "overall", "overall"),
                     _slice(node["micro"], "micro", "micro") if node.has("micro") else None,
                     tables["per_type"], tables["per_domain"], tables["per_source"],
                     {m: node["macro"][m].num() for m in METRICS}, node["macro_types"].strs(),
                     node["absent_types"].strs(), pairs, config, tables["per_changes"])


def _change_score(node: _Node) -> ChangeScore:
    return ChangeScore(node["n_pairs"].int(), node["n_changes"].int(), node["recall"].num(),
                       node["object_recall"].num(), node["n_described"].int(), node["precision"].num(),
                       node["invented"].int(), node["n_valued"].int() if node.has("n_valued") else 0,
                       node["value_recall"].num())


def _changes(node: _Node) -> ChangesRun:
    summary = ChangeSummary(_change_score(node["overall"]), node["per_type"].map(_change_score),
                            node["per_domain"].map(_change_score), node["per_setting"].map(_change_score),
                            node["no_change_pairs"].int(), node["false_change_rate"].num())

    def hit(n: _Node) -> ChangeHit:
        return ChangeHit(n["type"].str(), n["object"].str(), n["named"].bool(), n["recalled"].bool(),
                         n["value_right"].bool(optional=True), n["old"].str(optional=True),
                         n["new"].str(optional=True), tuple(n["stated"].strs()))

    return ChangesRun(summary, node["pairs"].map(lambda n: [hit(h) for h in n.list()]))


def _detection_score(node: _Node) -> DetectionScore:
    return DetectionScore(node["n_pairs"].int(), node["n_true"].int(), node["n_detected"].int(),
                          node["n_matched"].int(), node["recall"].num(), node["precision"].num(),
                          node["n_valued"].int(), node["value_accuracy"].num(), node["n_objects"].int(),
                          node["object_accuracy"].num(), node["n_boxed"].int(), node["pointing"].num())


def _object_fact(node: _Node) -> ObjectFact | None:
    if node.value is None:
        return None
    node.obj()
    return ObjectFact(**{k: node[k].str(optional=True) or "" for k in ObjectFact.__dataclass_fields__})


def _change_fact(node: _Node) -> ChangeFact | None:
    """A fact as ``ChangeFact.to_json`` wrote it (empty fields left out)."""
    if node.value is None:
        return None
    count = lambda n: n.int() if n.value is not None else 0  # noqa: E731
    try:
        return ChangeFact(node["type"].str(), _object_fact(node["before"]), _object_fact(node["after"]),
                          count(node["n_before"]), count(node["n_after"]), node["detail"].str(optional=True) or "",
                          node["box_before"].box(), node["box_after"].box(),
                          node["confidence"].num(False) if node.has("confidence") else 1.0)
    except ReportError:
        raise
    except ValueError as exc:  # an unknown change type
        raise ReportError(f"{node.path}: {exc}") from None


def _detection(node: _Node) -> DetectionRun:
    summary = DetectionSummary(_detection_score(node["overall"]), node["per_type"].map(_detection_score),
                               node["no_change_pairs"].int(), node["false_change_rate"].num())

    def hit(n: _Node) -> DetectionHit:
        try:
            out = DetectionHit(n["type"].str(), _change_fact(n["truth"]), _change_fact(n["detected"]),
                               n["value_right"].bool(optional=True), n["object_right"].bool(optional=True),
                               n["pointed"].bool(optional=True))
        except ReportError:
            raise
        except ValueError as exc:  # a hit whose facts do not fit it (DetectionHit's checks)
            raise ReportError(f"{n.path}: {exc}") from None
        if n["matched"].bool() != out.matched:  # written for people reading the file; it must agree
            raise ReportError(f"{n.path}.matched: {n['matched'].value} but the hit has "
                              + ("both" if out.matched else "not both") + " a true and a detected change")
        return out

    return DetectionRun(summary, node["pairs"].map(lambda n: [hit(h) for h in n.list()]))


def _loc_score(node: _Node) -> LocalizationScore:
    return LocalizationScore(node["n_pairs"].int(), node["n_images"].int(), node["pointing"].num(False),
                             node["pointing_overlap"].num(False), node["energy"].num(False), node["area"].num(False),
                             node["auroc"].num())


def _localization(node: _Node) -> LocalizationRun:
    s = node["summary"]
    table = lambda n: n.map(lambda row: row.map(_loc_score))  # noqa: E731  slice -> map -> score

    def peaked(n: _Node) -> Peakedness:
        return Peakedness(n["peak_to_mean"].num(False), n["entropy"].num(False), n["level"].num(False))

    def no_change(n: _Node) -> NoChangeComparison:
        return NoChangeComparison(n["map"].str(), n["n_changed"].int(), n["n_unchanged"].int(), peaked(n["changed"]),
                                  peaked(n["unchanged"]), n["separability"].num())

    summary = LocalizationSummary(s["maps"].strs(), s["overall"].map(_loc_score), table(s["per_type"]),
                                  table(s["per_domain"]), table(s["per_setting"]))
    grid = node["grid"].int() if node.has("grid") else None
    return LocalizationRun(grid, node["n_pairs"].int(), summary, [no_change(n) for n in node["no_change"].list()],
                           node["pairs"].map(lambda row: row.map(lambda v: v.num())))


def _sanity(node: _Node) -> SanityCheck:
    steps = [SanityStep(tuple(n["randomised"].strs()), n["parameters_changed"].int(),
                        n["correlation"].map(lambda v: v.num(False)), n["n_pairs"].int()) for n in node["steps"].list()]
    return SanityCheck(steps, node["threshold"].num(False), node["skipped"].strs())


def _grounding_checks(node: _Node) -> GroundingChecks:
    t = node["targets"]
    targets = GroundingTargets(t["distinct_share"].num(False), t["same_scene_gap"].num(False),
                               t["no_change_share"].num(False)) if node.has("targets") else GroundingTargets()
    examples = [{"id": e["id"].str(), "caption": e["caption"].str(), "reference": e["reference"].str()}
                for e in node["examples"].list()] if node.has("examples") else []
    return GroundingChecks(node["model"].str(), node["n_pairs"].int(), node["distinct_share"].num(False),
                           node["loss_true"].num(False), node["loss_random_swap"].num(False),
                           node["loss_same_scene_swap"].num(), node["loss_true_same_scene"].num(),
                           node["n_same_scene"].int(), node["n_identical"].int(), node["no_change_share"].num(),
                           node["distinct_ceiling"].num(), targets, examples)


def _protocol(node: _Node) -> Protocol:
    refs = node["references_per_pair"]
    return Protocol(scorer=node["scorer"].str(), pairs=node["pairs"].int(),
                    references_per_pair=(refs["min"].int(), refs["mean"].num(False), refs["max"].int()),
                    empty_references=node["empty_references"].int(),
                    empty_reference_pairs=node["empty_reference_pairs"].int(), meteor=node["meteor"].bool(),
                    spice=node["spice"].bool(), id_matching=node["id_matching"].str(),
                    left_out=node["left_out"].map(lambda n: n.int()), tokenizer=node["tokenizer"].str(),
                    cider=node["cider"].str(), scale=node["scale"].str())


def _meta(node: _Node) -> ReportMeta:
    gen = node["generator"]
    generator = {k: n.number() for k, n in gen.items()} if node.has("generator") else None
    return ReportMeta(node["model"].str(optional=True) or "", node["predictions"].map(lambda n: n.str()),
                      node["references"].str(optional=True) or "", node["format"].str(optional=True),
                      node["split"].str(optional=True), node["date"].str(optional=True) or "",
                      node["metrics_available"].strs(), node["unavailable"].map(lambda n: n.str()), generator)


def _read_report(root: _Node) -> Report:
    schema = root["schema"].value
    if schema != SCHEMA:
        raise ReportError(f"not a report.json of this version (schema {schema!r}; this m3diff reads {SCHEMA!r}): "
                          "score the predictions again with `m3diff eval`")
    meta = _meta(root["meta"])
    b = root["meta"]["bootstrap"]
    config = BreakdownConfig(b["bootstrap"].int(), b["confidence"].num(False), b["seed"].int(), b["worst_k"].int(),
                             b["min_n_for_ci"].int()) if root["meta"].has("bootstrap") else BreakdownConfig(bootstrap=0)
    records = []
    for n in root["pairs"].list(root.limits.max_pairs):
        regions = None
        if n.has("regions"):
            regions = [Region(r["type"].str(), r["before"].box(), r["after"].box()) for r in n["regions"].list()]
        records.append(PairRecord(_pair_score(n), regions, n["no_change"].str(optional=True)))
    base_pairs = [r.score for r in records]
    by_id = {p.id: p for p in base_pairs}
    runs: dict[str, RunReport] = {}
    for i, (name, node) in enumerate(root["runs"].items()):
        if i == 0:
            pairs = base_pairs
        else:  # a later run's captions and scores on the base run's pairs
            pairs = []
            for pid, row in node["pairs"].items():
                ref = by_id.get(pid)
                if ref is None:
                    raise ReportError(f"{row.path}: pair {pid!r} is not one of the report's pairs")
                pairs.append(PairScore(pid, row["caption"].str(), ref.refs, ref.types, ref.domain, ref.source,
                                       {m: row[m].num() for m in PAIR_METRICS}))
        runs[name] = RunReport(
            _breakdown(node, pairs, config),
            _protocol(node["protocol"]) if node.has("protocol") else None,
            node["notes"].strs(), node["dropped"].map(lambda n: n.strs()),
            _changes(node["changes"]) if node.has("changes") else None,
            _localization(node["localization"]) if node.has("localization") else None,
            _sanity(node["sanity"]) if node.has("sanity") else None,
            _detection(node["detection"]) if node.has("detection") else None)
    if not runs:
        raise ReportError("runs: a report holds at least one run")
    comparison = None
    if root.has("comparison"):
        c = root["comparison"]

        def delta(n: _Node) -> Delta | None:
            return None if n.value is None else Delta(n["delta"].num(False), n["ci"].interval())

        comparison = Comparison(c["base"].str(), c["runs"].map(lambda table: table.map(
            lambda e: SliceDelta(e["n"].int(), e["n_base"].int(), e["paired"].bool(),
                                 {m: delta(e[m]) for m in METRICS}))))
    grounding = None
    if root.has("grounding"):
        g = root["grounding"]
        grounding = GroundingSection(g["data"].str(optional=True) or "", g["split"].str(optional=True) or "",
                                     g["pairs"].int(), g["models"].map(_grounding_checks))  # as read_grounding
    conventions = root["conventions"].map(lambda n: n.str()) if root.has("conventions") else dict(CONVENTIONS)
    return Report(meta, runs, records, comparison, grounding, conventions)


def read_grounding(path, limits: ReportLimits = ReportLimits()) -> GroundingSection:
    """A grounding file written by ``m3diff probe`` (``--grounding`` of ``m3diff eval``), checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ReportError(f"{path}: not a grounding file ({exc.__class__.__name__})") from None
    g = _Node(data, path.name, limits)
    return GroundingSection(g["data"].str(optional=True) or "", g["split"].str(optional=True) or "",
                            g["pairs"].int(), g["models"].map(_grounding_checks))


def read_sanity(data, name: str = "sanity", limits: ReportLimits = ReportLimits()) -> SanityCheck:
    """A maps' sanity check as ``SanityCheck.to_dict`` wrote it (in a predictions file), checked."""
    return _sanity(_Node(data, name, limits))


def grounding_json(section: GroundingSection) -> dict:
    """What ``m3diff probe`` writes (and ``read_grounding`` reads)."""
    return {"data": section.data, "split": section.split, "pairs": section.pairs,
            "models": {k: v.to_dict() for k, v in section.models.items()}}


# ------------------------------------------------------------------------------- files
def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class LoadedReport:
    """A report as an app shows it: the report, its name, and where its pairs' images are.

    ``allowed``: for a report someone else wrote (a visitor's upload), the only folders its image and
    reference paths may lead into; a path outside them is never opened, not even checked for existence,
    so the report can neither show nor probe other files. None trusts the report (the operator named it)."""

    report: Report
    name: str
    allowed: tuple[str, ...] | None = None
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # pair id -> (before, after) files
    references_dir: Path | None = None  # the dataset folder the pairs were found in

    def pair_files(self, pair_id: str) -> tuple[str, str] | None:
        """The before/after files of a pair, if they can be found inside the allowed folders and exist."""
        files = self.images.get(pair_id)
        if files is None or not all(inside(f, self.allowed) for f in files):
            return None
        return files if all(Path(f).is_file() for f in files) else None


def read_report(path, search: tuple[Path, ...] = (), allowed: tuple[Path, ...] | None = None,
                limits: ReportLimits = ReportLimits(), name: str | None = None) -> LoadedReport:
    """A report.json read and checked, and where its pairs' images are (the references it was scored on,
    looked up as written, then in ``search`` folders and the working directory — only inside ``allowed``
    when given). Raises ReportError with one line for a person."""
    path = Path(path)
    label = name or path.name
    try:
        size = path.stat().st_size
        if size > limits.max_pairs * 4000 + 10_000_000:  # a pair takes ~1-3 kB: far past the pair limit
            raise ReportError(f"{label} is too large to be a report of at most {limits.max_pairs:,} pairs")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{label} could not be read ({exc.__class__.__name__}).") from None
    report = Report.loads(text, limits, label)
    roots = None if allowed is None else tuple(str(Path(a).resolve()) for a in allowed)
    loaded = LoadedReport(report, Path(label).stem, roots)
    _find_images(loaded, (path.parent, *search))
    return loaded


def inside(path, roots) -> bool:
    """Whether ``path``, links followed, lies in one of the ``roots`` folders (None: no limit)."""
    if roots is None:
        return True
    try:
        p = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(p == Path(r) or Path(r) in p.parents for r in roots)


def _find_images(loaded: LoadedReport, folders: tuple[Path, ...]) -> None:
    """Where each pair's images are, from the references the report was scored against."""
    # lazy: analysis.inputs reads a predictions file's sanity section with this module's reader
    from analysis.inputs import InputError, load_references

    meta = loaded.report.meta
    if not meta.references:
        return

    ref = Path(meta.references)
    candidates = [ref] if ref.is_absolute() else [Path(p) / ref for p in (*folders, Path.cwd())]
    for c in candidates:
        if not inside(c, loaded.allowed) or not c.exists():
            continue
        try:
            pairs = load_references(c.resolve(), meta.format, meta.split)
        except (InputError, ValueError, OSError):
            continue
        loaded.references_dir = c.resolve()
        loaded.images = {p.id: (str(p.before), str(p.after)) for p in pairs
                         if p.before and p.after and inside(p.before, loaded.allowed) and inside(p.after, loaded.allowed)}
        return
