"""A report.json's contents as the tables people read: per slice with intervals, run against run
(``analysis.breakdown.compare``, intervals kept), the test pairs filterable and sortable, exports.

Every function takes reports as ``analysis.report.read_report`` returns them and gives a pandas
DataFrame or text; the app lays these out and reads no report field itself.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from analysis.metrics import SHOWN_METRICS
from analysis.report import changes_label, report_pairs, words_cell
from m3diff.change_types import TYPE_IDS


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.1f}"
    if ci:
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return s


def slice_table(reports: dict[str, dict], key: str | tuple[str, ...], metrics=SHOWN_METRICS):
    """Rows: overall, then the slices of ``key`` ("per_type" | "per_domain" | "per_changes", or several in
    turn); columns per run: n, metric [CI], and the mean caption / reference length in words."""
    import pandas as pd

    keys = (key,) if isinstance(key, str) else tuple(key)
    rows = [_slice_row(reports, None, "overall", metrics)]
    for k in keys:
        names: list[str] = []
        for rep in reports.values():
            names += [n for n in rep.get(k, {}) if n not in names]
        if k == "per_type":
            names = [t for t in TYPE_IDS if t in names] + [n for n in names if n not in TYPE_IDS]
        label = changes_label if k == "per_changes" else str
        rows += [_slice_row(reports, k, n, metrics, label(n)) for n in names]
    return pd.DataFrame(rows)


def _slice_row(reports, key, name, metrics, label=None) -> dict:
    row = {"slice": label or name}
    for run, rep in reports.items():
        s = rep["overall"] if key is None else rep.get(key, {}).get(name)
        prefix = f"{run}: " if len(reports) > 1 else ""
        row[f"{prefix}n"] = None if s is None else s.get("n")
        for m in metrics:
            row[f"{prefix}{m}"] = "—" if s is None else _fmt(s.get(m), (s.get("ci") or {}).get(m))
        row[f"{prefix}words"] = "—" if s is None else (words_cell(s) or "—")
    return row


def delta_table(reports: dict[str, dict], metrics=SHOWN_METRICS):
    """Each run minus the first, per overall / type / domain slice, as ``analysis.breakdown.compare``
    computes it: "delta [low, high]" with the paired interval where the runs were scored together
    (``m3diff eval`` of several runs writes that comparison into its report), the delta alone where
    two reports were loaded side by side (their bootstrap draws are not in report.json)."""
    import pandas as pd

    from analysis.breakdown import compare

    comparisons = [(rep["comparison"], None) for rep in reports.values() if rep.get("comparison")]
    if len(reports) > 1:
        # reports loaded side by side may cover different pairs: each row says whether they are the same
        ids = {run: {p["id"] for p in report_pairs(rep)} for run, rep in reports.items()}
        comparisons.append((compare({run: breakdown_of(rep) for run, rep in reports.items()}), ids))
    rows = []
    for comparison, ids in comparisons:
        base = comparison["base"]
        for run, table in comparison["runs"].items():
            same_set = ids is None or (bool(ids[run]) and ids[run] == ids[base])
            for key, entry in table.items():
                if key.startswith("source:"):
                    continue
                same = same_set and entry["n"] == entry["n_base"]
                row = {"run": f"{run} − {base}", "slice": "overall" if key == "overall:overall" else key,
                       "n": entry["n"], "n base": entry["n_base"],
                       "pairs": "same" if same else "DIFFERENT pair sets: not comparable"}
                for m in metrics:
                    d = entry.get(m)
                    row[f"Δ {m}"] = None if d is None else _fmt(d["delta"], d.get("ci"))
                rows.append(row)
    if not rows:
        return pd.DataFrame({"note": ["load a second report to compare runs"]})
    return pd.DataFrame(rows)


def breakdown_of(report: dict):
    """A report's own run as an ``analysis.breakdown.Breakdown`` of its slice scores (no bootstrap draws:
    report.json keeps the intervals, not the resamples), for ``compare``."""
    from analysis.breakdown import Breakdown, BreakdownConfig, SliceResult
    from analysis.metrics import METRICS

    def one(kind: str, name: str, s: dict) -> SliceResult:
        ci = s.get("ci") or {}
        return SliceResult(kind, name, s.get("n", 0), {m: s.get(m) for m in METRICS},
                           {m: (tuple(ci[m]) if ci.get(m) else None) for m in METRICS}, s.get("worst", []))

    table = lambda key, kind: {n: one(kind, n, s) for n, s in (report.get(key) or {}).items()}  # noqa: E731
    return Breakdown(one("overall", "overall", report["overall"]), None, table("per_type", "type"),
                     table("per_domain", "domain"), table("per_source", "source"), {}, [], [], [],
                     BreakdownConfig(bootstrap=0), table("per_changes", "changes"))


def paper_table():
    """The paper's reference numbers (OmniDiff Table 3, x100), from analysis.paper."""
    import pandas as pd

    from analysis.paper import OMNIDIFF_TABLE3

    rows = []
    for method, doms in OMNIDIFF_TABLE3.items():
        row = {"method (paper, Table 3)": method}
        for dom, vals in doms.items():
            row.update({f"{dom} {m}": vals.get(m) for m in SHOWN_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def combined_report(reports: dict[str, dict]) -> dict:
    """Several loaded reports as one report.json with ``runs`` (what analysis.report's exports read)."""
    base = next(iter(reports))
    rep = dict(reports[base])
    rep["meta"] = dict(rep.get("meta") or {}, run=base)
    if len(reports) > 1:
        rep["runs"] = dict(reports)
    return rep


def export_report(reports: dict[str, dict], fmt: str) -> str:
    """The loaded reports as CSV or a LaTeX table (analysis.report), in a fresh temporary folder:
    never a fixed path, since requests run at the same time."""
    from analysis import report as R

    folder = Path(tempfile.mkdtemp(prefix="m3diff-export-"))
    if fmt == "csv":
        path = folder / "m3diff_scores.csv"
        text = R.csv_text(combined_report(reports)) if reports else paper_table().to_csv(index=False)
    elif fmt == "latex":
        path = folder / "m3diff_table.tex"
        text = R.latex_table(combined_report(reports)) if reports else paper_table().to_latex(index=False)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    path.write_text(text, encoding="utf-8")
    return str(path)


def pairs_frame(report: dict, change_type: str = "all", domain: str = "all", sort_by: str = "CIDEr-D",
                ascending: bool = True):
    """A report's test pairs, filtered by change type and domain, sorted by a per-pair score (worst first)."""
    import pandas as pd

    rows = []
    for p in report_pairs(report):
        types = p.get("types", p.get("change_types", [])) or []
        if change_type != "all" and change_type not in types:
            continue
        if domain != "all" and p.get("domain", "") != domain:
            continue
        row = {"id": p["id"], "types": ", ".join(types), "domain": p.get("domain", "")}
        row.update({m: p.get(m) for m in SHOWN_METRICS})
        row["prediction"] = p.get("caption", p.get("prediction", ""))
        rows.append(row)
    df = pd.DataFrame(rows, columns=["id", "types", "domain", *SHOWN_METRICS, "prediction"])
    if sort_by in df.columns and len(df):
        df = df.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    return df.reset_index(drop=True)


def report_choices(report: dict) -> tuple[list[str], list[str]]:
    types, domains = [], []
    for p in report_pairs(report):
        types += [t for t in p.get("types", p.get("change_types", [])) or [] if t not in types]
        if p.get("domain") and p["domain"] not in domains:
            domains.append(p["domain"])
    return [t for t in TYPE_IDS if t in types], sorted(domains)


def pair_record(report: dict, pair_id: str) -> dict:
    """The report's record of one test pair."""
    for p in report_pairs(report):
        if p["id"] == pair_id:
            return p
    raise KeyError(f"the report has no pair {pair_id!r}")


def pair_markdown(record: dict, metrics=SHOWN_METRICS) -> str:
    """One test pair as a person reads it: id, types, domain, prediction, references and scores."""
    refs = "\n".join(f"- {r}" for r in record.get("refs", []))
    return (f"**{record['id']}** · {', '.join(record.get('types', []))} · {record.get('domain', '')}\n\n"
            f"**Prediction:** {record.get('caption', '')}\n\n**References:**\n{refs}\n\n"
            + "  ".join(f"{m} {_fmt(record.get(m))}" for m in metrics))


def grounding_table(reports: dict[str, dict]):
    """Does each model read its images? The grounding checks every loaded report carries
    (`m3diff probe` → `m3diff eval --grounding`), one row per (report, model), without repeats."""
    import pandas as pd

    from analysis.grounding import report_rows

    rows, seen = [], set()
    for rep in reports.values():
        for row in report_rows(rep):
            key = tuple(row.items())
            if key not in seen:
                seen.add(key)
                rows.append(row)
    if not rows:
        return pd.DataFrame([{"grounding checks": "not in the loaded reports: run `m3diff probe`, then "
                                                  "`m3diff eval --grounding`"}])
    return pd.DataFrame(rows)


def changes_table(reports: dict[str, dict]):
    """Does the caption name each true change, and say what it is now? Change recall / precision and the
    new value said (sign word, colour, heading, pose, count, grew or shrank) per change type and run,
    from the `changes` section `m3diff eval` writes for generated references (analysis.changes)."""
    import pandas as pd

    runs = {}
    for rep in reports.values():
        for run, summary in (rep.get("changes") or {}).items():
            runs.setdefault(run, summary)
    if not runs:
        return pd.DataFrame([{"change recall": "not in the loaded reports (only generated references "
                                               "know every change)"}])
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    rows = []
    for name in ["overall", *TYPE_IDS]:
        row = {"slice": name}
        for run, s in runs.items():
            cell = s["overall"] if name == "overall" else s.get("per_type", {}).get(name)
            prefix = f"{run}: " if len(runs) > 1 else ""
            row[f"{prefix}recall %"] = pct(None if cell is None else cell.get("recall"))
            row[f"{prefix}precision %"] = pct(None if cell is None else cell.get("precision"))
            # reports written before the value was measured lack the key: "—", not 0
            row[f"{prefix}new value said %"] = pct(None if cell is None else cell.get("value_recall"))
        if any(v != "—" for k, v in row.items() if k != "slice"):
            rows.append(row)
    return pd.DataFrame(rows)


def quality_line(report: dict) -> str:
    """One sentence on how good a model measured, for a statement above its captions: overall CIDEr-D,
    the types it reads best and worst, and whether it passed the grounding checks."""
    overall = (report.get("overall") or {}).get("CIDEr-D")
    if overall is None:
        return ""
    per_type = {t: s.get("CIDEr-D") for t, s in (report.get("per_type") or {}).items() if s.get("CIDEr-D") is not None}
    ranked = sorted(per_type, key=per_type.get, reverse=True)
    text = f"measured CIDEr-D {overall:.1f} on {report['overall'].get('n', '?')} test pairs"
    if len(ranked) >= 4:
        text += (f"; best on {ranked[0]} ({per_type[ranked[0]]:.1f}) and {ranked[1]} ({per_type[ranked[1]]:.1f}), "
                 f"worst on {ranked[-1]} ({per_type[ranked[-1]]:.1f})")
    models = (report.get("grounding") or {}).get("models") or {}
    run = (report.get("meta") or {}).get("run")
    checks = models.get(run) or next(iter(models.values()), None)
    if checks is not None:
        text += "; grounding checks " + ("passed" if checks.get("passed") else
                                         "not passed (" + "; ".join(checks.get("flags", [])) + ")")
    return text


LOCALIZATION_HOWTO = ("not in the loaded reports: run `m3diff predict --maps` (it stores each pair's maps), then "
                      "`m3diff eval` on generated references (they know where each change is)")
SLICES = {"change type": "per_type", "setting": "per_setting", "domain": "per_domain"}


def _localization_runs(reports: dict[str, dict]) -> dict[str, dict]:
    """run -> its ``localization`` entry, over all loaded reports (a run in two reports counts once)."""
    runs: dict[str, dict] = {}
    for rep in reports.values():
        for run, loc in (rep.get("localization") or {}).items():
            runs.setdefault(run, loc)
    return runs


def _shown_maps(maps: list[str]) -> list[str]:
    """A run's model maps the panel shows: ‖P(F′1) − P(F′2)‖, then each MDP kind at the deepest layer."""
    layered = [m for m in maps if "@" in m]
    deepest = max((int(m.split("@", 1)[1]) for m in layered), default=None)
    return ([m for m in maps if m == "feature_difference"]
            + [m for m in layered if int(m.split("@", 1)[1]) == deepest])


def localization_table(reports: dict[str, dict], score: str = "pointing", by: str = "change type"):
    """Does the model look at the change? ``score`` ("pointing" | "energy" | "auroc") of each run's maps
    per slice (``by``: change type, setting or domain), beside the pixel-difference baseline and a uniform
    map (chance), from report.json's ``localization`` (``analysis.localization.summarize``). Pointing and
    energy in %, AUROC as is; the baselines are the first run's (the same pairs, so the same for all)."""
    import pandas as pd

    from analysis.evidence import map_label
    from analysis.localization import SETTINGS

    runs = _localization_runs(reports)
    if not runs:
        return pd.DataFrame([{"localization": LOCALIZATION_HOWTO}])
    key = SLICES[by]
    first = next(iter(runs.values()))["summary"]
    columns = [(run, m, f"{run}: {map_label(m)}") for run, loc in runs.items() for m in _shown_maps(loc["summary"]["maps"])]
    columns += [(next(iter(runs)), m, label) for m, label in (("pixel_difference", "pixel difference"),
                                                              ("uniform", "uniform (chance)"))
                if m in first["maps"]]
    names = list(dict.fromkeys(n for loc in runs.values() for n in loc["summary"].get(key, {})))
    order = {"per_type": TYPE_IDS, "per_setting": SETTINGS}.get(key, sorted(names))
    names = [n for n in order if n in names] + [n for n in names if n not in order]
    fmt = (lambda v: "—" if v is None else f"{v:.2f}") if score == "auroc" else \
        (lambda v: "—" if v is None or v != v else f"{100 * v:.1f}")
    rows = []
    for name in ["overall", *names]:
        def cell(run, m, name=name):
            s = runs[run]["summary"]
            return (s["overall"] if name == "overall" else s.get(key, {}).get(name, {})).get(m)
        ref = cell(*columns[-1][:2]) or {}
        row = {"slice": name, "n pairs": ref.get("n_pairs")}
        row.update({label: fmt((cell(run, m) or {}).get(score)) for run, m, label in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def localization_notes(reports: dict[str, dict]) -> str:
    """Markdown, a line each per run: the sanity check's verdicts (do the maps change when the weights
    are destroyed?) and how peaked the model's map is on pairs with no change against changed ones."""
    from analysis.evidence import map_label, best_map

    runs = _localization_runs(reports)
    if not runs:
        return "_Localization " + LOCALIZATION_HOWTO + "._"
    sanity: dict[str, dict] = {}
    for rep in reports.values():
        for run, check in (rep.get("sanity") or {}).items():
            sanity.setdefault(run, check)
    lines = []
    for run, loc in runs.items():
        check = sanity.get(run)
        if check:
            flags = check.get("flags") or {}
            passed = [map_label(m) for m in check.get("verdicts", {}) if m not in flags]
            flagged = [f"{map_label(m)} (with {', '.join(steps)} re-initialised)" for m, steps in flags.items()]
            lines.append(f"- **Sanity check, {run}** (maps with the weights destroyed): "
                         + ("passes: " + ", ".join(passed) if passed else "no map passes")
                         + ("; **still the same map, so not evidence of what was learned**: " + "; ".join(flagged)
                            if flagged else "") + f" (rank correlation threshold {check.get('threshold')})")
        else:
            lines.append(f"- **Sanity check, {run}**: not run for this model.")
        by_map = {c["map"]: c for c in loc.get("no_change") or []}
        shown = [m for m in (best_map(by_map), "pixel_difference") if m in by_map]
        if shown:
            parts = []
            for m in shown:
                c = by_map[m]
                sep = c.get("separability")
                parts.append(f"{map_label(m)} peak/mean {c['changed']['peak_to_mean']:.2f} on {c['n_changed']} changed "
                             f"vs {c['unchanged']['peak_to_mean']:.2f} on {c['n_unchanged']} unchanged pairs"
                             + ("" if sep is None else f" (tells them apart: AUROC {sep:.2f})"))
            lines.append(f"- **No change, {run}**: " + "; ".join(parts))
        else:
            lines.append(f"- **No change, {run}**: the report has no pairs without a change to compare.")
    return "\n".join(lines)


def protocol_table(reports: dict[str, dict]):
    """How each loaded report was scored (its protocol card): one row per protocol line, a column per report."""
    import pandas as pd

    from analysis.report import protocol_of

    cards = {name: protocol_of(rep) for name, rep in reports.items()}
    if not any(cards.values()):
        return pd.DataFrame([{"protocol": "not in the loaded reports (written before reports carried one: "
                                          "re-run `m3diff eval`)"}])
    keys = [k for k, _ in next(c for c in cards.values() if c is not None).lines()]
    rows = []
    for k in keys:
        row = {"": k}
        for name, card in cards.items():
            row[name] = dict(card.lines())[k] if card is not None else "— (no protocol card)"
        rows.append(row)
    return pd.DataFrame(rows)


def protocol_note(reports: dict[str, dict]) -> str:
    """A warning, for the Dashboard, when loaded reports were not scored the same way ("" when they were)."""
    from analysis.report import protocol_of

    cards = {name: protocol_of(rep) for name, rep in reports.items()}
    named = [(n, c) for n, c in cards.items() if c is not None]
    lines = []
    for name, card in named[1:]:
        diff = named[0][1].differences(card)
        if diff:
            lines.append(f"- {name} vs {named[0][0]}: " + "; ".join(diff))
    missing = [n for n, c in cards.items() if c is None]
    if missing and named:
        lines.append(f"- {', '.join(missing)}: no protocol card, so how it was scored is unknown")
    if not lines:
        return ""
    return "⚠️ **These reports were not scored the same way** — their numbers are not directly comparable:\n" + \
        "\n".join(lines)
