"""report.json files over generated pairs with the sections `m3diff eval` writes for them (meta.generator,
regions, localization, sanity), scored by analysis.localization's own functions on regenerated pairs —
no hand-typed scores. Used by the table tests and the app tests (Dashboard panel, Errors tab)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from analysis.localization import (SanityCheck, SanityStep, compare_no_change, localize, pixel_difference_map,
                                   region_truth, spearman, summarize, uniform_map)
from m3diff.data.synth.generator import SynthConfig, Worker, regenerate, split_position
from tests.analysis.conftest import slice_json

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
    """(localization entry of one run, its sanity check, pair records' regions/no_change) for ``ids``."""
    worker = Worker(cfg, None)
    rows, pairs, changed, unchanged, truths, extras = [], {}, [], [], [], {}
    for pid in ids:
        record, b, a = regenerate(cfg, pid, worker)
        maps = {**model_maps(b, a), "pixel_difference": pixel_difference_map(b, a, grid), "uniform": uniform_map(grid)}
        truth = region_truth(record, b.size, a.size)
        scored = localize(truth, maps)
        rows += scored
        if scored:
            pairs[pid] = {r.map: float(np.mean([s.pointing for s in r.images])) for r in scored}
            changed.append(maps)
        elif record.get("no_change"):
            unchanged.append(maps)
        truths.append(maps)
        extras[pid] = {"regions": record["regions"], **({"no_change": record["no_change"]} if record.get("no_change") else {}),
                       "types": record["change_types"], "domain": record["domain"], "refs": record["captions"]}
    summary = summarize(rows)
    # the sanity check's correlations, measured on the maps: the blurred difference "survives" a weight
    # reset (it is computed from the pixels), the random maps do not
    rng = np.random.default_rng(0)
    flat = [{(k if not isinstance(v, dict) else f"{k}@{max(v)}"): (v if not isinstance(v, dict) else v[max(v)])
             for k, v in m.items() if k not in ("pixel_difference", "uniform")} for m in truths]
    corr = {name: float(np.mean([spearman(m[name], m[name] if name == "feature_difference" else rng.random(m[name].shape))
                                 for m in flat])) for name in flat[0]}
    sanity = SanityCheck([SanityStep(("model.mdp",), 12, corr, len(flat))], threshold=0.8)
    loc = {"grid": grid, "summary": summary.to_dict(), "no_change": [c.to_dict() for c in compare_no_change(changed, unchanged)],
           "pairs": pairs}
    return loc, sanity.to_dict(), extras


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
    pairs = []
    for i, pid in enumerate(ids):
        e = extras[pid]
        pairs.append({"id": pid, "caption": f"prediction {i}", "refs": e["refs"], "types": e["types"],
                      "domain": e["domain"], "source": "synthetic", "CIDEr-D": 5.0 * i, "BLEU-4": 1.0,
                      "METEOR": 1.0, "ROUGE-L": 2.0, "SPICE": None, "regions": e["regions"],
                      **({"no_change": e["no_change"]} if "no_change" in e else {})})
    types = list(dict.fromkeys(t for p in pairs for t in p["types"]))
    rep = {"schema": "m3diff.eval/1",
           "meta": {"run": name, "references": references, "split": "test", "n_pairs": len(pairs),
                    "generator": asdict(cfg)},
           "overall": slice_json(len(pairs), 20.0), "micro": None, "macro": {"CIDEr-D": 1.0, "types": types},
           "absent_types": [], "per_type": {t: slice_json(1, 10.0) for t in types},
           "per_domain": {d: slice_json(1, 10.0) for d in {p["domain"] for p in pairs}}, "per_source": {},
           "pairs": pairs, "localization": {r: v[0] for r, v in sections.items()},
           "sanity": {r: v[1] for r, v in sections.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(rep), encoding="utf-8")
    return path


# the settings of the embedded model's evaluation data (runs/synth_eval, which does not ship)
SHIPPED_GENERATOR = {"seed": 20251, "pairs": 5000, "size": 128, "references": 3, "render_scenes": 100,
                     "distractor_only": 0.5, "mixed_distractor": 0.2, "no_change": 0.06}


def carries_evidence(report: Path) -> bool:
    """Whether a report has the sections the app's evidence views read (and its pairs can be regenerated)."""
    rep = json.loads(Path(report).read_text(encoding="utf-8"))
    return bool(rep.get("localization")) and bool((rep.get("meta") or {}).get("generator"))


def with_evidence(shipped: Path, out: Path, captioner, n: int = 8, n_sanity: int = 2) -> Path:
    """A copy of a shipped report restricted to its first ``n`` pairs, with the sections `m3diff eval`
    writes after `m3diff predict --maps`: meta.generator, regions, and localization + sanity of the
    loaded ``captioner``'s real maps (its MDP trace; the feature difference when its Descriptions carry
    it) on the regenerated pairs; ``captioner`` None: regions only. For the browser test until the
    shipped reports carry these sections."""
    from analysis.localization import model_map_fn, sanity_check
    from m3diff.describing import Description, GenerationSettings

    map_fn = model_map_fn(captioner.processor) if captioner is not None else None
    carries_fd = "feature_difference" in Description.__dataclass_fields__

    rep = json.loads(Path(shipped).read_text(encoding="utf-8"))
    rep["meta"].setdefault("generator", SHIPPED_GENERATOR)
    cfg = SynthConfig.from_dict(rep["meta"]["generator"])
    worker = Worker(cfg, None)
    run = rep["meta"]["run"]
    rows, scored, changed, unchanged, images = [], {}, [], [], []
    for p in rep["pairs"][:n]:
        record, b, a = regenerate(cfg, p["id"], worker)
        p["regions"] = record["regions"]
        if record.get("no_change"):
            p["no_change"] = record["no_change"]
        maps = map_fn(captioner.model, (b, a)) if captioner is not None and captioner.uses_mdp else {}
        if carries_fd and captioner is not None:  # one caption token: the map is computed at prefill
            fd = captioner.describe(b, a, settings=GenerationSettings(max_new_tokens=1)).feature_difference
            if fd is not None:
                maps["feature_difference"] = np.stack([fd, fd])
        if not maps:
            continue
        g = next(iter(next(iter(maps.values())).values())).shape[-1] if "feature_difference" not in maps \
            else maps["feature_difference"].shape[-1]
        maps.update(pixel_difference=pixel_difference_map(b, a, g), uniform=uniform_map(g))
        truth = region_truth(record, b.size, a.size)
        result = localize(truth, maps)
        rows += result
        if result:
            scored[p["id"]] = {r.map: float(np.mean([s.pointing for s in r.images])) for r in result}
            changed.append(maps)
            images.append((b, a))
        elif record.get("no_change"):
            unchanged.append(maps)
    rep["pairs"] = rep["pairs"][:n]
    if rows:
        rep["localization"] = {run: {"grid": g, "summary": summarize(rows).to_dict(), "pairs": scored,
                                     "no_change": [c.to_dict() for c in compare_no_change(changed, unchanged)]}}
        check = sanity_check(captioner.model, images[:n_sanity], map_fn)
        rep["sanity"] = {run: check.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / Path(shipped).name
    path.write_text(json.dumps(rep), encoding="utf-8")
    return path
