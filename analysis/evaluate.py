"""Predictions + references → a ``Report``: what ``m3diff eval`` does, as one library call.

    report = evaluate({"m3diff": "runs/pred.json"}, "data/synth", split="test")
    report.save("runs/eval/report.json"); render.write_files(report, "runs/eval")

Every run is aligned with the references (``analysis.inputs``: ids, duplicates, empty predictions, each
under its policy), scored per slice with intervals (``analysis.breakdown``), given its protocol card,
and — on generated references — scored change by change (``analysis.changes``), where the predictions
carry maps (``m3diff predict --maps``) for where its maps point (``analysis.localization``), and where
they carry the changes a model's change reader read, for whether it read the true ones
(``analysis.detection``).
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.breakdown import BreakdownConfig, analyse, compare
from analysis.changes import evaluate_changes
from analysis.detection import evaluate_detection, read_reading
from analysis.inputs import InputError, Predictions, align, load_predictions, load_references
from analysis.localization import decode_maps, evaluate_localization
from analysis.metrics import METRICS, CaptionScorer, MetricAvailability, ScorerConfig, check_metrics
from analysis.protocol import Protocol
from analysis.report import ChangesRun, DetectionRun, GroundingSection, PairRecord, Region, Report, ReportMeta, RunReport
from m3diff.data.record import DiffPair
from m3diff.data.synth.generator import SynthConfig


@dataclass(frozen=True)
class Policies:
    """What to do with inputs that do not fit (``analysis.inputs.align``); "error" stops with one line."""

    on_mismatch: str = "error"
    on_empty: str = "error"
    on_duplicate: str = "error"


def evaluate(predictions: Mapping[str, Predictions | str | Path], references: list[DiffPair] | str | Path, *,
             format: str | None = None, split: str | None = None, policies: Policies = Policies(),
             bootstrap: BreakdownConfig = BreakdownConfig(), meteor: bool = True,
             grounding: GroundingSection | None = None, model: str = "", allow_outside: bool = False,
             scorer: CaptionScorer | None = None, warn: Callable[[str], None] = lambda line: None,
             progress: Callable[[str, str], None] | None = None) -> Report:
    """The report of ``predictions`` ({run name: file or loaded Predictions}; the first is the base run)
    against ``references`` (DiffPairs, or a dataset / COCO ground-truth path with ``format`` and
    ``split``). ``warn`` receives one line per thing a person should know (policies applied, maps
    missing); ``progress(run, slice kind)`` is called as slices are scored. Raises ``InputError``."""
    if not predictions:
        raise InputError("no predictions to evaluate")
    refs_label = str(references) if not isinstance(references, list) else "the references"
    pairs = references if isinstance(references, list) else \
        load_references(references, format, split, allow_outside=allow_outside, warn=warn)
    if not pairs:
        raise InputError(f"{refs_label}: no pairs" + (f" in split {split!r}" if split else ""))
    loaded = {name: p if isinstance(p, Predictions) else load_predictions(p) for name, p in predictions.items()}
    aligned = {name: align(p, pairs, policies.on_mismatch, policies.on_empty, policies.on_duplicate,
                           references=refs_label) for name, p in loaded.items()}
    for al in aligned.values():
        for note in al.notes:
            warn(note)
    availability = check_metrics()
    if not availability.java:
        raise InputError(availability.notes[0])
    runs: dict[str, RunReport] = {}
    if scorer is None:
        with CaptionScorer(ScorerConfig(meteor=meteor), availability=availability) as own:
            scores = _score(own, aligned, bootstrap, progress)
    else:
        scores = _score(scorer, aligned, bootstrap, progress)
    generated = any("regions" in p.extra and "objects" in p.extra for p in pairs)
    for name, al in aligned.items():
        bd = scores[name]
        protocol = Protocol.of([p.captions for p in al.pairs], meteor=bd.overall.scores.get("METEOR") is not None,
                               spice=bd.overall.scores.get("SPICE") is not None, id_matching=al.id_matching,
                               left_out=al.dropped)
        run = RunReport(bd, protocol, list(al.notes), {k: list(v) for k, v in al.dropped.items()})
        if generated:
            summary, rows = evaluate_changes(dict(zip(al.ids, al.hyps)), al.pairs)
            run.changes = ChangesRun(summary, {r.id: list(r.truth) for r in rows})
        preds = loaded[name]
        if preds.maps and any("regions" in p.extra for p in al.pairs):
            try:
                maps = {i: decode_maps(preds.maps[i]) for i in al.ids if i in preds.maps}
            except ValueError as exc:
                raise InputError(f"{preds.path or name}: {exc}; predict again with --maps --restart") from None
            if len(maps) < len(al.ids):
                warn(f"{name}: {len(al.ids) - len(maps)} pair(s) have no maps; localization scores the other "
                     f"{len(maps)}")
            run.localization = evaluate_localization(maps, al.pairs)
            run.sanity = preds.sanity
        if preds.changes and any("changes" in p.extra for p in al.pairs):
            run.detection = _detection(name, preds, al.pairs, refs_label, warn)
        runs[name] = run
    base = next(iter(aligned))
    by_id = {p.id: p for p in pairs}
    records = [PairRecord(p, _regions(by_id[p.id]), by_id[p.id].extra.get("no_change") or None)
               for p in scores[base].pairs]
    meta = ReportMeta(model=model or loaded[base].model, references=refs_label, format=format, split=split,
                      predictions={n: str(p.path) if p.path else n for n, p in loaded.items()},
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      metrics_available=list(availability.runnable),
                      unavailable=_unavailable(availability, scores[base].overall.scores),
                      generator=_generator_settings(references, warn) if generated else None)
    return Report(meta, runs, records, compare(scores, base) if len(scores) > 1 else None, grounding)


def _detection(name: str, preds: Predictions, pairs: list[DiffPair], references: str, warn) -> DetectionRun:
    """The run's change reader against the generator's changes, on the pairs that have both."""
    readings = {}
    for p in pairs:
        if p.id in preds.changes:
            try:  # a file's readings were checked as it loaded; a Predictions built in code was not
                readings[p.id] = read_reading(preds.changes[p.id])
            except ValueError as exc:
                raise InputError(f"{preds.path or name}: the changes read in pair {p.id!r} are not a reading "
                                 f"({exc})") from None
    known = [p for p in pairs if "changes" in p.extra]
    unread = [p.id for p in known if p.id not in readings]
    if unread:
        warn(f"{name}: {len(unread)} pair(s) have no changes read (predicted before the model had a change "
             f"reader?); detection scores the other {len(known) - len(unread)}")
    try:
        summary, hits = evaluate_detection(readings, known)
    except ValueError as exc:  # two true changes of one type (readings were checked): matching by type fails
        raise InputError(f"{references}: {exc}") from None
    return DetectionRun(summary, hits)


def _score(scorer, aligned, config, progress):
    out = {}
    for name, al in aligned.items():
        corpus = scorer.prepare(al.ids, al.hyps, [p.captions for p in al.pairs])
        out[name] = analyse(scorer, corpus, al.pairs, al.hyps, config,
                            progress=None if progress is None else (lambda kind, n, name=name: progress(name, kind)))
    return out


def _regions(pair: DiffPair) -> list[Region] | None:
    regions = pair.extra.get("regions")
    if regions is None:
        return None
    box = lambda b: None if b is None else tuple(float(v) for v in b)  # noqa: E731
    return [Region(r["type"], box(r.get("before")), box(r.get("after"))) for r in regions]


def _unavailable(availability: MetricAvailability, overall: dict) -> dict[str, str]:
    return {m: ("; ".join(availability.notes) or "not enabled") for m in METRICS
            if m not in availability.runnable or overall.get(m) is None}


def _generator_settings(references, warn) -> dict | None:
    """The generator's settings of generated references (``synth_config.json`` in the data folder), so
    an app can redraw any pair; None where the references do not say."""
    if isinstance(references, list):
        return None

    root = Path(references)
    cfg = (root if root.is_dir() else root.parent) / "synth_config.json"
    if not cfg.is_file():
        return None

    try:
        return asdict(SynthConfig.from_dict(json.loads(cfg.read_text(encoding="utf-8"))))
    except (ValueError, OSError) as exc:
        warn(f"{cfg}: {exc}; the report cannot say how to redraw its pairs")
        return None
