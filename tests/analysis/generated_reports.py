"""report.json files over generated pairs with the sections `m3diff eval` writes for them (meta.generator,
regions, localization, sanity), scored by analysis.localization's own functions on regenerated pairs —
no hand-typed scores. Used by the table tests and the app tests (Dashboard panel, Errors tab)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from analysis.localization import (SanityCheck, SanityStep, evaluate_localization, flatten_maps, map_name,
                                   pixel_difference_map, spearman)
from m3diff.data.record import DiffPair
from m3diff.data.synth.generator import SynthConfig, Worker, regenerate, split_position
from tests.analysis.conftest import breakdown, slice_result

# no_change 0.5: about half the test pairs past each split's first 24 show no change
CONFIG = SynthConfig(seed=7, pairs=400, size=64, no_change=0.5)
GRID = 8


def generated_test_ids(cfg: SynthConfig = CONFIG, n: int = 16, first: int = 24) -> list[str]:
    """``n`` test-split ids from the ``first``-th test pair on (no-change pairs come after 24)."""
    ids = [i for i in range(cfg.pairs) if split_position(i)[0] == "test" and split_position(i)[1] >= first]
    return [f"s{cfg.seed}-{i:06d}" for i in ids[:n]]


def synthetic_model_maps(before, after, grid: int = GRID) -> dict:
    """Stand-ins for a model's maps (a test has no trained model): a blurred pixel difference plays a
    map that sees the change, a seeded random map one that does not."""
    from scipy.ndimage import uniform_filter

    diff = pixel_difference_map(before, after, grid)
    rng = np.random.default_rng(int(diff.sum() * 1000) % 2**32)
    return {"feature_difference": np.stack([uniform_filter(d, 3) for d in diff]),
            "delta_norm": {2: rng.random((2, grid, grid)), 4: rng.random((2, grid, grid))},
            "attn_eq5": {4: rng.random((2, grid, grid))}}


def twin_maps(before, after, grid: int = GRID) -> dict:
    """A stand-in no-MDP twin: only the feature-difference map, and one that misses (seeded noise)."""
    rng = np.random.default_rng(int(pixel_difference_map(before, after, grid).sum()) % 2**32)
    return {"feature_difference": rng.random((2, grid, grid))}


def localization_section(cfg: SynthConfig, ids: list[str], model_maps=synthetic_model_maps, grid: int = GRID):
    """(localization entry of one run, its sanity check, pair records' regions/no_change) for ``ids``,
    scored by ``analysis.localization.evaluate_localization`` as `m3diff eval` scores them."""
    worker = Worker(cfg, None)
    images, pairs, maps_by_id, extras = {}, [], {}, {}
    for pid in ids:
        record, b, a = regenerate(cfg, pid, worker)
        images[f"{pid}/before"], images[f"{pid}/after"] = b, a
        pairs.append(DiffPair(pid, f"{pid}/before", f"{pid}/after", record["captions"], record["change_types"],
                              record["domain"], extra=record))
        maps_by_id[pid] = {map_name(k, l): m for (k, l), m in flatten_maps(model_maps(b, a, grid)).items()}
        extras[pid] = {"record": record, "regions": record["regions"], **({"no_change": record["no_change"]} if record.get("no_change") else {}),
                       "types": record["change_types"], "domain": record["domain"], "refs": record["captions"]}
    loc = evaluate_localization(maps_by_id, pairs, load=images.__getitem__)
    # the sanity check's correlations, measured on the maps: the blurred difference "survives" a weight
    # reset (it is computed from the pixels), the random maps do not
    rng = np.random.default_rng(0)
    names = list(next(iter(maps_by_id.values())))
    corr = {n: float(np.mean([spearman(m[n], m[n] if n == "feature_difference" else rng.random(m[n].shape))
                              for m in maps_by_id.values()])) for n in names}
    sanity = SanityCheck([SanityStep(("model.mdp",), 12, corr, len(maps_by_id))], threshold=0.8)
    return loc, sanity, extras


def make_generated_report(folder: Path, name: str = "m3diff", cfg: SynthConfig = CONFIG, n: int = 16,
                          twin: str | None = None, references: str = "runs/not-shipped") -> Path:
    """A report.json of ``n`` generated test pairs whose images do not ship (``references`` names a
    folder that does not exist), with meta.generator, regions, and localization and sanity sections for
    the run ``name`` and, when given, a no-MDP ``twin`` run."""
    ids = generated_test_ids(cfg, n)
    loc, sanity, extras = localization_section(cfg, ids)
    sections = {name: (loc, sanity)}
    if twin:
        sections[twin] = localization_section(cfg, ids, twin_maps)[:2]
    from analysis.breakdown import PairScore
    from analysis.changes import evaluate_changes
    from analysis.report import ChangesRun, PairRecord, Region, Report, ReportMeta, RunReport

    pairs = []
    for i, pid in enumerate(ids):
        e = extras[pid]
        # every other caption is the pair's own first reference, so the change scores hold hits and misses,
        # computed by the function `m3diff eval` uses
        caption = e["refs"][0] if i % 2 else f"prediction {i}"
        pairs.append(PairScore(pid, caption, e["refs"], e["types"], e["domain"], "synthetic",
                               {"CIDEr-D": 5.0 * i, "BLEU-4": 1.0, "METEOR": 1.0, "ROUGE-L": 2.0, "SPICE": None}))
    summary, rows = evaluate_changes({p.id: p.caption for p in pairs}, [extras[pid]["record"] for pid in ids])
    types = list(dict.fromkeys(t for p in pairs for t in p.types))

    def run(loc, sanity, changes=None):
        bd = breakdown(pairs, slice_result(len(pairs), 20.0, kind="overall", name="overall"),
                       {t: slice_result(1, 10.0, name=t) for t in types},
                       {d: slice_result(1, 10.0, kind="domain", name=d) for d in {p.domain for p in pairs}},
                       macro_types=types)
        return RunReport(bd, changes=changes, localization=loc, sanity=sanity)

    runs = {name: run(*sections[name], ChangesRun(summary, {r.id: list(r.truth) for r in rows}))}
    if twin:
        runs[twin] = run(*sections[twin])
    box = lambda b: None if b is None else tuple(b)  # noqa: E731
    records = [PairRecord(p, [Region(r["type"], box(r["before"]), box(r["after"])) for r in extras[p.id]["regions"]],
                          extras[p.id].get("no_change")) for p in pairs]
    report = Report(ReportMeta(references=references, split="test", generator=asdict(cfg)), runs, records)
    folder.mkdir(parents=True, exist_ok=True)
    return report.save(folder / f"{name}.json")
