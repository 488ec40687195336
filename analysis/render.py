"""Every view of a ``Report``: the CLI's table, scores.csv, table.tex, report.html, the app's DataFrames
and Markdown, and the model card's Markdown tables. Nothing here computes a score; everything reads the
typed report (``analysis.report``), so each number is shown the same way wherever it appears.

Text that came from a report is text: the app's Markdown views escape it (``md``), the HTML page too.
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pandas as pd

from analysis import figures
from analysis.breakdown import Breakdown, SliceResult, compare
from analysis.localization import SETTINGS
from analysis.metrics import HEADLINE, METRICS, SHOWN_METRICS
from analysis.paper import OMNIDIFF_TABLE3
from analysis.protocol import Protocol
from analysis.report import PairRecord, Report, atomic_write
from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.describing import MAP_KINDS

Reports = Mapping[str, Report]  # name -> report, as the app and the card hold them


# ------------------------------------------------------------------------------------ small pieces
def changes_label(name: str) -> str:
    """A ``per_changes`` key as a person reads it: "0" -> "no change", "1" -> "1 change", "3" -> "3 changes"."""
    return {"0": "no change", "1": "1 change"}.get(name, f"{name} changes")


def words_cell(s: SliceResult) -> str:
    """A slice's mean caption length beside its references' ("24 / 30"), in words; "" where unknown."""
    w = s.words
    return "" if not w else f"{w['caption']:.0f} / {w['references']:.0f}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-!|~])")


def md(text) -> str:
    """A report's string as Markdown text: every character Markdown or HTML would act on escaped, so a
    caption holding ``<img src=…>`` or ``[a](http://…)`` shows as those characters, nothing more."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.1f}"
    if ci:
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return s


def _pct(v) -> str:
    return "—" if v is None or v != v else f"{100 * v:.1f}"


def protocol_sentence(card: Protocol) -> str:
    """The protocol in one sentence (table.tex's caption, the CLI's line above its table)."""
    lo, mean, hi = card.references_per_pair
    left = sum(card.left_out.values())
    return (f"{card.scorer}, PTB tokenisation, CIDEr-D (sigma 6, clipped), scores x100; {card.pairs:,} pairs, "
            f"{lo}-{hi} references per pair (mean {mean:g}), {card.empty_references} empty reference(s) kept; "
            f"METEOR {'on' if card.meteor else 'off'}, SPICE {'on' if card.spice else 'off'}; ids matched "
            f"{card.id_matching}; {left} id(s) left out.")


def _slice_rows(bd: Breakdown, all_sources: bool = True):
    """(kind, name, slice, n) for every slice of a run, in the order the tables show them."""
    yield "overall", "", bd.overall, bd.overall.n
    if bd.micro is not None:
        yield "micro", "", bd.micro, bd.micro.n
    if bd.macro_types:  # references without change types have no macro average
        yield "macro", str(len(bd.macro_types)), None, ""
    for kind, table in (("type", bd.per_type), ("domain", bd.per_domain), ("source", bd.per_source),
                        ("changes", bd.per_changes)):
        if kind == "source" and not all_sources and len(table) <= 1:
            continue
        for name, s in table.items():
            yield kind, name, s, s.n


def _score_of(bd: Breakdown, s: SliceResult | None, m: str):
    return bd.macro.get(m) if s is None else s.scores.get(m)


# ------------------------------------------------------------------------------------ the CLI and files
def text_table(report: Report) -> str:
    """The table `m3diff eval` prints: BLEU-1..4 as the papers print them, every other metric, the words,
    and the protocol in one line above it."""
    bd = report.run.scores
    card = report.run.protocol
    lines = [f"protocol: {protocol_sentence(card)}"] if card is not None else []
    lines.append(f"{'slice':<26}" + "".join(f"{c:>9}" for c in ("n", *METRICS)) + f"{'words':>10}")
    labels = {"overall": "overall", "micro": "micro (pooled)", "macro": "macro ({} types)",
              "type": "  {}", "domain": "  domain {}", "source": "  source {}", "changes": "  {}"}
    for kind, name, s, n in _slice_rows(bd, all_sources=False):
        label = labels[kind].format(changes_label(name) if kind == "changes" else name)
        cells = "".join(f"{_num(_score_of(bd, s, m)):>9}" for m in METRICS)
        lines.append(f"{label:<26}{n!s:>9}{cells}{'' if s is None else words_cell(s):>10}")
    if report.comparison is not None:
        base = report.comparison.base
        for run, table in report.comparison.runs.items():
            lines.append(f"\n{run} minus {base}:")
            for key, e in table.items():
                cells = ["n/a" if e.deltas.get(m) is None else f"{e.deltas[m].delta:+.2f}" for m in HEADLINE]
                lines.append(f"  {key:<24}" + f"{e.n!s:>10}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def _num(v, none: str = "n/a") -> str:
    return none if v is None else f"{v:.2f}"


def evidence_lines(report: Report) -> list[str]:
    """One line per run with maps: where its maps' peaks fall, beside the two baselines; and the sanity check."""
    lines = []
    for name, run in report.runs.items():
        loc = run.localization
        if loc is not None:
            overall = loc.summary.overall
            shown = sorted(overall, key=lambda m: (m in ("pixel_difference", "uniform"), -(overall[m].pointing or 0)))
            parts = [f"{m} {100 * overall[m].pointing:.0f}%" for m in shown if overall[m].pointing == overall[m].pointing]
            lines.append(f"{name}: map peak inside a changed box ({loc.n_pairs} pairs with boxes): " + ", ".join(parts))
        if run.sanity is not None:
            flagged = sorted(run.sanity.flags)
            lines.append(f"{name}: sanity check of the maps: " + (f"{', '.join(flagged)} do not depend on the weights"
                                                                  if flagged else "every map changes when its weights are destroyed"))
    return lines


def csv_text(report: Report) -> str:
    """One row per (run, slice): n, every metric, and the interval of the headline metrics."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "slice_kind", "slice", "n", *METRICS,
                *[f"{m} {b}" for m in HEADLINE for b in ("ci_low", "ci_high")], "words caption", "words references"])
    for run, r in report.runs.items():
        bd = r.scores
        for kind, name, s, n in _slice_rows(bd):
            ci = {} if s is None else s.ci
            words = (s.words if s is not None else None) or {}
            w.writerow([run, kind, name or kind, len(bd.macro_types) if s is None else n,
                        *[_csv(_score_of(bd, s, m)) for m in METRICS],
                        *[_csv((ci.get(m) or (None, None))[j]) for m in HEADLINE for j in (0, 1)],
                        _csv(words.get("caption")), _csv(words.get("references"))])
    return buf.getvalue()


def _csv(v) -> str:
    return "" if v is None else f"{v:.4f}"


def latex_table(report: Report, paper_rows: bool = True) -> str:
    """Table 3's layout: one row per run, B4/M/R/C per domain column group (Real, Render) when the data
    has domains, one Overall group (with SPICE) otherwise; the protocol as the caption."""
    base = report.run.scores
    # the paper's column groups first, then every other domain of the data (the generator's "photo"):
    # a domain left out would drop its pairs from the table without a word
    paper_domains = [d for d in ("real", "render") if d in base.per_domain]
    domains = paper_domains + sorted(d for d in base.per_domain if d not in ("real", "render"))
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
    short = {"BLEU-4": "B4", "METEOR": "M", "ROUGE-L": "R", "CIDEr-D": "C", "SPICE": "S"}
    if domains:
        groups = [(d.capitalize(), lambda bd, d=d: bd.per_domain.get(d)) for d in domains]
    else:
        keys = HEADLINE
        groups = [("Overall", lambda bd: bd.overall)]
    cols = "l" + ("|" + "c" * len(keys)) * len(groups)
    lines = [
        "% m3diff eval: " + _tex_escape(report.meta.references),
        r"\begin{table}", r"\centering", r"\begin{tabular}{" + cols + "}", r"\toprule",
        "Method & " + " & ".join(rf"\multicolumn{{{len(keys)}}}{{c}}{{{g}}}" for g, _ in groups) + r" \\",
        " & " + " & ".join(" & ".join(short[k] for k in keys) for _ in groups) + r" \\", r"\midrule",
    ]
    for run, r in report.runs.items():
        cells = [_tex(None if g(r.scores) is None else g(r.scores).scores.get(k)) for _, g in groups for k in keys]
        lines.append(_tex_escape(run) + " & " + " & ".join(cells) + r" \\")
    if paper_rows and paper_domains:
        lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{1 + len(keys) * len(groups)}}}{{l}}{{\emph{{reported in the paper (Table 3)}}}} \\")
        for name, doms in OMNIDIFF_TABLE3.items():
            cells = [_tex(doms.get(d, {}).get(k)) for d in domains for k in keys]  # the paper has no photo column
            lines.append(_tex_escape(name) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if report.run.protocol is not None:
        lines.append(r"\caption{" + _tex_escape(protocol_sentence(report.run.protocol)) + "}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def _tex(v) -> str:
    return "--" if v is None else f"{v:.1f}"


def _tex_escape(s: str) -> str:
    """Text as LaTeX: its special characters escaped (a backslash last-in, so its braces stay)."""
    s = str(s).replace("\\", "\0")
    for a in "&%_#{}$":
        s = s.replace(a, "\\" + a)
    return s.replace("\0", r"\textbackslash{}")


def html_report(report: Report) -> str:
    """A self-contained page: headline table, protocol, per-type and per-domain figures, worst pairs."""
    e = html.escape
    m = report.meta
    bd = report.run.scores
    parts = [f"<h1>m3diff eval — {e(report.base)}</h1>",
             "<p>" + e(f"{bd.overall.n} pairs · references {m.references} · model {m.model or 'n/a'} · {m.date}") + "</p>"]
    for metric, why in m.unavailable.items():
        parts.append(f"<p><b>{e(metric)}</b> not computed: {e(why)}</p>")
    for note in report.run.notes:
        parts.append(f"<p class=note>{e(note)}</p>")
    head = "".join(f"<th>{x}</th>" for x in HEADLINE)
    labels = {"overall": "overall", "micro": "micro (pooled)", "macro": "macro (mean of {} types)"}
    rows = []
    for kind, name, s, n in _slice_rows(bd):
        label = labels[kind].format(name) if kind in labels else \
            (changes_label(name) if kind == "changes" else f"{kind}: {name}")
        ci = {} if s is None else s.ci
        cells = "".join(
            f"<td>{_num(_score_of(bd, s, x), '')}" + (f" <small>[{ci[x][0]:.2f}, {ci[x][1]:.2f}]</small>" if ci.get(x) else "")
            + "</td>" for x in HEADLINE)
        rows.append(f"<tr><td>{e(label)}</td><td>{n}</td>{cells}<td>{'' if s is None else words_cell(s)}</td></tr>")
    parts.append(f"<table><tr><th>slice</th><th>n</th>{head}<th>words: caption / references</th></tr>{''.join(rows)}"
                 "</table><p>Words: mean length as the metrics see it. CIDEr-D's length penalty (a Gaussian of the "
                 "length difference, sigma 6 words) falls hard on a caption that leaves a change out.</p>")
    if report.run.protocol is not None:
        parts.append("<h2>Protocol</h2><table>" + "".join(
            f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in report.run.protocol.lines()) + "</table>")
    detection = _detection_runs({report.base: report})
    if detection:
        heads = "".join(f"<th>{e(f'{run}: {h}' if len(detection) > 1 else h)}</th>" for run in detection
                        for h in DETECTION_COLUMNS)
        body = "".join(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{e(v)}</td>" for vs in cells.values() for v in vs)
                       + "</tr>" for name, cells in _detection_rows(detection))
        parts.append("<h2>Change reader: the true changes it read</h2>"
                     f"<table><tr><th>slice</th>{heads}</tr>{body}</table>")
    runs = {name: r.scores for name, r in report.runs.items()}
    figs = [figures.metrics_by_type(runs, "CIDEr-D"), figures.metrics_by_type(runs, "BLEU-4")]
    if bd.per_domain:
        figs.append(figures.metrics_by_domain(runs, "CIDEr-D"))
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    by_id = {p.id: p.score for p in report.pairs}
    parts.append("<h2>Worst pairs overall (per-pair CIDEr-D)</h2><table><tr><th>id</th><th>types</th>"
                 "<th>CIDEr-D</th><th>prediction</th><th>references</th></tr>")
    for pid in bd.overall.worst:
        p = by_id.get(pid)
        if p is None:
            continue
        parts.append(f"<tr><td>{e(pid)}</td><td>{e(', '.join(p.types))}</td><td>{_num(p.scores.get('CIDEr-D'), '')}</td>"
                     f"<td>{e(p.caption)}</td><td>{'<br>'.join(e(r) for r in p.refs)}</td></tr>")
    parts.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.note{color:#a40}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>m3diff eval</title><style>{style}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def write_files(report: Report, out_dir) -> dict[str, Path]:
    """report.json, scores.csv, table.tex and report.html in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "csv": out_dir / "scores.csv",
             "latex": out_dir / "table.tex", "html": out_dir / "report.html"}
    report.save(paths["json"])
    atomic_write(paths["csv"], csv_text(report))
    atomic_write(paths["latex"], latex_table(report))
    atomic_write(paths["html"], html_report(report))
    return paths


# ------------------------------------------------------------------------------------ the app's tables
def slice_table(reports: Reports, keys: str | tuple[str, ...], metrics=SHOWN_METRICS):
    """Rows: overall, then the slices of ``keys`` ("per_type" | "per_domain" | "per_changes", or several in
    turn); columns per report: n, metric [CI], and the mean caption / reference length in words."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    runs = {name: rep.run.scores for name, rep in reports.items()}
    rows = [_slice_row(runs, None, "overall", metrics)]
    for k in keys:
        names: list[str] = []
        for bd in runs.values():
            names += [n for n in getattr(bd, k) if n not in names]
        if k == "per_type":
            names = [t for t in TYPE_IDS if t in names] + [n for n in names if n not in TYPE_IDS]
        label = changes_label if k == "per_changes" else str
        rows += [_slice_row(runs, k, n, metrics, label(n)) for n in names]
    return pd.DataFrame(rows)


def _slice_row(runs: Mapping[str, Breakdown], key, name, metrics, label=None) -> dict:
    row = {"slice": label or name}
    for run, bd in runs.items():
        s = bd.overall if key is None else getattr(bd, key).get(name)
        prefix = f"{run}: " if len(runs) > 1 else ""
        row[f"{prefix}n"] = None if s is None else s.n
        for m in metrics:
            row[f"{prefix}{m}"] = "—" if s is None else _fmt(s.scores.get(m), s.ci.get(m))
        row[f"{prefix}words"] = "—" if s is None else (words_cell(s) or "—")
    return row


def delta_table(reports: Reports, metrics=SHOWN_METRICS):
    """Each run minus the first, per overall / type / domain slice: "delta [low, high]" with the paired
    interval where the runs were scored together (``m3diff eval`` of several runs), the delta alone where
    two reports were loaded side by side (their bootstrap draws are not in report.json)."""
    comparisons = [(rep.comparison, None) for rep in reports.values() if rep.comparison is not None]
    if len(reports) > 1:
        # reports loaded side by side may cover different pairs: each row says whether they are the same
        ids = {name: {p.id for p in rep.pairs} for name, rep in reports.items()}
        comparisons.append((compare({name: rep.run.scores for name, rep in reports.items()}), ids))
    rows = []
    for comparison, ids in comparisons:
        base = comparison.base
        for run, table in comparison.runs.items():
            same_set = ids is None or (bool(ids[run]) and ids[run] == ids[base])
            for key, entry in table.items():
                if key.startswith("source:"):
                    continue
                same = same_set and entry.n == entry.n_base
                row = {"run": f"{run} − {base}", "slice": "overall" if key == "overall:overall" else key,
                       "n": entry.n, "n base": entry.n_base,
                       "pairs": "same" if same else "DIFFERENT pair sets: not comparable"}
                for m in metrics:
                    d = entry.deltas.get(m)
                    row[f"Δ {m}"] = None if d is None else _fmt(d.delta, d.ci)
                rows.append(row)
    if not rows:
        return pd.DataFrame({"note": ["load a second report to compare runs"]})
    return pd.DataFrame(rows)


def paper_table():
    """The paper's reference numbers (OmniDiff Table 3, x100), from analysis.paper."""
    rows = []
    for method, doms in OMNIDIFF_TABLE3.items():
        row = {"method (paper, Table 3)": method}
        for dom, vals in doms.items():
            row.update({f"{dom} {m}": vals.get(m) for m in SHOWN_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def combined(reports: Reports) -> Report:
    """Several loaded reports as one report whose runs are each report's own run (for the exports)."""
    first = next(iter(reports.values()))
    return replace(first, runs={name: rep.run for name, rep in reports.items()}, comparison=None)


def export(reports: Reports, fmt: str) -> str:
    """The loaded reports as CSV or a LaTeX table, in a fresh temporary folder: never a fixed path, since
    requests run at the same time."""
    folder = Path(tempfile.mkdtemp(prefix="m3diff-export-"))
    if fmt == "csv":
        path = folder / "m3diff_scores.csv"
        text = csv_text(combined(reports)) if reports else paper_table().to_csv(index=False)
    elif fmt == "latex":
        path = folder / "m3diff_table.tex"
        text = latex_table(combined(reports)) if reports else paper_table().to_latex(index=False)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    path.write_text(text, encoding="utf-8")
    return str(path)


SHOWN_PAIRS = 1000  # rows of the Errors table: a report of 40,000 pairs sent whole weighed ~15 MB per page


def pairs_frame(report: Report, change_type: str = "all", domain: str = "all", sort_by: str = "CIDEr-D",
                ascending: bool = True, limit: int | None = SHOWN_PAIRS):
    """A report's test pairs, filtered by change type and domain, sorted by a per-pair score (worst
    first), the first ``limit`` of them (None: all)."""
    rows = []
    for rec in report.pairs:
        p = rec.score
        if change_type != "all" and change_type not in p.types:
            continue
        if domain != "all" and p.domain != domain:
            continue
        row = {"id": p.id, "types": ", ".join(p.types), "domain": p.domain}
        row.update({m: p.scores.get(m) for m in SHOWN_METRICS})
        row["prediction"] = p.caption
        rows.append(row)
    df = pd.DataFrame(rows, columns=["id", "types", "domain", *SHOWN_METRICS, "prediction"])
    if sort_by in df.columns and len(df):
        df = df.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    return (df if limit is None else df.head(limit)).reset_index(drop=True)


def report_choices(report: Report) -> tuple[list[str], list[str]]:
    """The change types and domains a report's pairs hold (the Errors tab's filters)."""
    types = {t for rec in report.pairs for t in rec.score.types}
    domains = {rec.score.domain for rec in report.pairs if rec.score.domain}
    return [t for t in TYPE_IDS if t in types], sorted(domains)


def pair_markdown(record: PairRecord, metrics=SHOWN_METRICS) -> str:
    """One test pair as a person reads it: id, types, domain, prediction, references and scores."""
    p = record.score
    refs = "\n".join(f"- {md(r)}" for r in p.refs)
    return (f"**{md(p.id)}** · {md(', '.join(p.types))} · {md(p.domain)}\n\n"
            f"**Prediction:** {md(p.caption)}\n\n**References:**\n{refs}\n\n"
            + "  ".join(f"{m} {_fmt(p.scores.get(m))}" for m in metrics))


def grounding_rows(report: Report) -> list[dict]:
    """The grounding checks of a report as display rows, one per model (empty when unmeasured)."""
    if report.grounding is None:
        return []
    rows = []
    for name, g in report.grounding.models.items():
        gap, nc = g.same_scene_gap, g.no_change_share
        rows.append({
            "model": name,
            "distinct captions": f"{g.distinct_share:.0%}" + (
                "" if g.distinct_ceiling is None else f" (ceiling {g.distinct_ceiling:.0%})"),
            "answer loss": f"{g.loss_true:.3f}",
            "random swap": f"{g.random_gap:+.1%}",
            "same-scene swap": "n/a" if gap is None else f"{gap:+.1%}",
            "identical pairs: 'no change'": "n/a" if nc is None else f"{nc:.0%}",
            "checks": "passed" if not g.flags else "flagged: " + "; ".join(g.flags),
        })
    return rows


def grounding_table(reports: Reports):
    """Does each model read its images? The grounding checks every loaded report carries, one row per
    (report, model), without repeats."""
    rows, seen = [], set()
    for rep in reports.values():
        for row in grounding_rows(rep):
            key = tuple(row.items())
            if key not in seen:
                seen.add(key)
                rows.append(row)
    if not rows:
        return pd.DataFrame([{"grounding checks": "not in the loaded reports: run `m3diff probe`, then "
                                                  "`m3diff eval --grounding`"}])
    return pd.DataFrame(rows)


def _changes_runs(reports: Reports) -> dict:
    runs = {}
    for rep in reports.values():
        for name, run in rep.runs.items():
            if run.changes is not None:
                runs.setdefault(name, run.changes.summary)
    return runs


def changes_table(reports: Reports):
    """Does the caption name each true change, and say what it is now? Change recall / precision and the
    new value said (sign word, colour, heading, pose, count, grew or shrank) per change type and run."""
    runs = _changes_runs(reports)
    if not runs:
        return pd.DataFrame([{"change recall": "not in the loaded reports (only generated references "
                                               "know every change)"}])
    rows = []
    for name in ["overall", *TYPE_IDS]:
        row = {"slice": name}
        for run, s in runs.items():
            cell = s.overall if name == "overall" else s.per_type.get(name)
            prefix = f"{run}: " if len(runs) > 1 else ""
            row[f"{prefix}recall %"] = _pct(None if cell is None else cell.recall)
            row[f"{prefix}precision %"] = _pct(None if cell is None else cell.precision)
            row[f"{prefix}new value said %"] = _pct(None if cell is None else cell.value_recall)
        if any(v != "—" for k, v in row.items() if k != "slice"):
            rows.append(row)
    return pd.DataFrame(rows)


def _detection_runs(reports: Reports) -> dict:
    runs = {}
    for rep in reports.values():
        for name, run in rep.runs.items():
            if run.detection is not None:
                runs.setdefault(name, run.detection.summary)
    return runs


# the detection table's columns: header -> how a DetectionScore shows in it
DETECTION_COLUMNS: Mapping[str, Callable] = MappingProxyType({
    "true": lambda c: str(c.n_true), "detected": lambda c: str(c.n_detected),
    "recall %": lambda c: _pct(c.recall), "precision %": lambda c: _pct(c.precision),
    "value right %": lambda c: _pct(c.value_accuracy), "object right %": lambda c: _pct(c.object_accuracy),
    "pointing %": lambda c: _pct(c.pointing),
})


def _detection_rows(runs: Mapping) -> list[tuple[str, dict[str, list[str]]]]:
    """(slice, {run: cells in DETECTION_COLUMNS order}) for overall and each type some run saw."""
    rows = []
    for name in ["overall", *TYPE_IDS]:
        cells = {}
        for run, s in runs.items():
            c = s.overall if name == "overall" else s.per_type.get(name)
            cells[run] = ["—"] * len(DETECTION_COLUMNS) if c is None else [f(c) for f in DETECTION_COLUMNS.values()]
        if name == "overall" or any(v != ["—"] * len(DETECTION_COLUMNS) for v in cells.values()):
            rows.append((name, cells))
    return rows


def detection_table(reports: Reports):
    """Does the change reader read each true change? Per change type and run: true and detected changes,
    detection recall and precision, the new value and the object read right on matched changes, and how
    often the detected box's centre lies in the true box."""
    runs = _detection_runs(reports)
    if not runs:
        return pd.DataFrame([{"change detection": "not in the loaded reports (a model with a change reader, "
                                                  "evaluated on generated references)"}])
    out = []
    for name, cells in _detection_rows(runs):
        row = {"slice": name}
        for run, values in cells.items():
            prefix = f"{run}: " if len(runs) > 1 else ""
            row.update({prefix + head: v for head, v in zip(DETECTION_COLUMNS, values)})
        out.append(row)
    return pd.DataFrame(out)


def detection_lines(report: Report) -> list[str]:
    """One line per run with a change reader: its detection recall and precision (``m3diff eval``'s summary)."""
    lines = []
    for name, run in report.runs.items():
        if run.detection is None:
            continue
        s = run.detection.summary
        o = s.overall
        line = (f"{name}: change reader ({o.n_pairs} pairs): detection recall {_pct(o.recall)}% "
                f"({o.n_matched} of {o.n_true} true changes), precision {_pct(o.precision)}% "
                f"({o.n_matched} of {o.n_detected} detected); new value right {_pct(o.value_accuracy)}%, "
                f"box pointing {_pct(o.pointing)}%")
        if s.false_change_rate is not None:
            line += f"; a change detected in {_pct(s.false_change_rate)}% of {s.no_change_pairs} no-change pairs"
        lines.append(line)
    return lines


def quality_line(report: Report) -> str:
    """One sentence on how good a model measured, for a statement above its captions: overall CIDEr-D,
    the types it reads best and worst, and whether it passed the grounding checks."""
    bd = report.run.scores
    overall = bd.overall.scores.get("CIDEr-D")
    if overall is None:
        return ""
    per_type = {t: s.scores["CIDEr-D"] for t, s in bd.per_type.items() if s.scores.get("CIDEr-D") is not None}
    ranked = sorted(per_type, key=per_type.get, reverse=True)
    text = f"measured CIDEr-D {overall:.1f} on {bd.overall.n} test pairs"
    if len(ranked) >= 4:
        text += (f"; best on {ranked[0]} ({per_type[ranked[0]]:.1f}) and {ranked[1]} ({per_type[ranked[1]]:.1f}), "
                 f"worst on {ranked[-1]} ({per_type[ranked[-1]]:.1f})")
    checks = report.grounding_of()
    if checks is not None:
        text += "; grounding checks " + ("passed" if not checks.flags else "not passed (" + "; ".join(checks.flags) + ")")
    return text


# ------------------------------------------------------------------------------------ maps: names and tables
# map kind -> (short label for a table column, long label for a document)
MAP_LABELS = {
    "feature_difference": ("‖P(F′1) − P(F′2)‖", "‖P(F′1) − P(F′2)‖, the image tokens the LLM reads"),
    "delta_norm": ("‖ΔF‖", "‖ΔF‖ (eq. 3)"),
    "attn_eq5": ("eq. 5", "eq. 5 attention"),
    "attn_eq6": ("eq. 6", "eq. 6 attention"),
    "saliency_caption": ("saliency", "captum Saliency of the caption's log-probability"),
    "pixel_difference": ("pixel difference", "pixel difference (baseline)"),
    "uniform": ("uniform", "uniform map (chance)"),
}


def map_label(name: str, long: bool = False) -> str:
    """``attn_eq5@4`` → "eq. 5 L4" (or "eq. 5 attention, layer 4" with ``long``)."""
    base, _, layer = name.partition("@")
    short, full = MAP_LABELS.get(base, (base, base))
    if long:
        return full + (f", layer {layer}" if layer else "")
    return short + (f" L{layer}" if layer else "")


def best_map(maps) -> str | None:
    """The model map a pair's hit or miss is shown for: ``feature_difference`` (exists for the MDP model
    and its twin alike) when scored, else ‖ΔF‖ of the deepest MDP layer."""
    maps = list(maps)
    if "feature_difference" in maps:
        return "feature_difference"
    deltas = [m for m in maps if m.startswith("delta_norm@")]
    return max(deltas, key=lambda m: int(m.split("@", 1)[1])) if deltas else None


LOCALIZATION_HOWTO = ("not in the loaded reports: run `m3diff predict --maps` (it stores each pair's maps), then "
                      "`m3diff eval` on generated references (they know where each change is)")
SLICES = MappingProxyType({"change type": "per_type", "setting": "per_setting", "domain": "per_domain"})


def _localization_runs(reports: Reports) -> dict:
    """run -> its localization, over all loaded reports (a run in two reports counts once)."""
    runs = {}
    for rep in reports.values():
        for name, run in rep.runs.items():
            if run.localization is not None:
                runs.setdefault(name, run.localization)
    return runs


def _shown_maps(maps: list[str]) -> list[str]:
    """A run's model maps the panel shows: ‖P(F′1) − P(F′2)‖, then each MDP kind at the deepest layer."""
    layered = [m for m in maps if "@" in m]
    deepest = max((int(m.split("@", 1)[1]) for m in layered), default=None)
    return ([m for m in maps if m == "feature_difference"]
            + [m for m in layered if int(m.split("@", 1)[1]) == deepest])


def localization_table(reports: Reports, score: str = "pointing", by: str = "change type"):
    """Does the model look at the change? ``score`` ("pointing" | "energy" | "auroc") of each run's maps
    per slice (``by``: change type, setting or domain), beside the pixel-difference baseline and a uniform
    map (chance). Pointing and energy in %, AUROC as is; the baselines are the first run's (the same pairs,
    so the same for all)."""
    runs = _localization_runs(reports)
    if not runs:
        return pd.DataFrame([{"localization": LOCALIZATION_HOWTO}])
    key = SLICES[by]
    first = next(iter(runs.values())).summary
    columns = [(run, m, f"{run}: {map_label(m)}") for run, loc in runs.items() for m in _shown_maps(loc.summary.maps)]
    columns += [(next(iter(runs)), m, label) for m, label in (("pixel_difference", "pixel difference"),
                                                              ("uniform", "uniform (chance)"))
                if m in first.maps]
    names = list(dict.fromkeys(n for loc in runs.values() for n in getattr(loc.summary, key)))
    order = {"per_type": TYPE_IDS, "per_setting": SETTINGS}.get(key, sorted(names))
    names = [n for n in order if n in names] + [n for n in names if n not in order]
    fmt = (lambda v: "—" if v is None else f"{v:.2f}") if score == "auroc" else _pct
    rows = []
    for name in ["overall", *names]:
        def cell(run, m, name=name):
            s = runs[run].summary
            return (s.overall if name == "overall" else getattr(s, key).get(name, {})).get(m)
        ref = cell(*columns[-1][:2])
        row = {"slice": name, "n pairs": None if ref is None else ref.n_pairs}
        row.update({label: fmt(None if (c := cell(run, m)) is None else getattr(c, score)) for run, m, label in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def localization_notes(reports: Reports) -> str:
    """Markdown, a line each per run: the sanity check's verdicts (do the maps change when the weights
    are destroyed?) and how peaked the model's map is on pairs with no change against changed ones."""
    runs = _localization_runs(reports)
    if not runs:
        return "_Localization " + LOCALIZATION_HOWTO + "._"
    sanity = {}
    for rep in reports.values():
        for name, run in rep.runs.items():
            if run.sanity is not None:
                sanity.setdefault(name, run.sanity)
    lines = []
    for run, loc in runs.items():
        check = sanity.get(run)
        if check is not None:
            flags = check.flags
            passed = [map_label(m) for m in check.verdicts if m not in flags]
            flagged = [f"{map_label(m)} (with {', '.join(steps)} re-initialised)" for m, steps in flags.items()]
            lines.append(f"- **Sanity check, {md(run)}** (maps with the weights destroyed): "
                         + ("passes: " + ", ".join(passed) if passed else "no map passes")
                         + ("; **still the same map, so not evidence of what was learned**: " + "; ".join(flagged)
                            if flagged else "") + f" (rank correlation threshold {check.threshold})")
        else:
            lines.append(f"- **Sanity check, {md(run)}**: not run for this model.")
        by_map = {c.map: c for c in loc.no_change}
        shown = [m for m in (best_map(by_map), "pixel_difference") if m in by_map]
        if shown:
            parts = []
            for m in shown:
                c = by_map[m]
                parts.append(f"{map_label(m)} peak/mean {c.changed.peak_to_mean:.2f} on {c.n_changed} changed "
                             f"vs {c.unchanged.peak_to_mean:.2f} on {c.n_unchanged} unchanged pairs"
                             + ("" if c.separability is None else f" (tells them apart: AUROC {c.separability:.2f})"))
            lines.append(f"- **No change, {md(run)}**: " + "; ".join(parts))
        else:
            lines.append(f"- **No change, {md(run)}**: the report has no pairs without a change to compare.")
    return "\n".join(lines)


def protocol_table(reports: Reports):
    """How each loaded report was scored (its protocol card): one row per protocol line, a column per report."""
    cards = {name: rep.run.protocol for name, rep in reports.items()}
    if not any(cards.values()):
        return pd.DataFrame([{"protocol": "not in the loaded reports"}])
    keys = [k for k, _ in next(c for c in cards.values() if c is not None).lines()]
    rows = []
    for k in keys:
        row = {"": k}
        for name, card in cards.items():
            row[name] = dict(card.lines())[k] if card is not None else "— (no protocol card)"
        rows.append(row)
    return pd.DataFrame(rows)


def protocol_note(reports: Reports) -> str:
    """A warning, for the Dashboard, when loaded reports were not scored the same way ("" when they were)."""
    cards = {name: rep.run.protocol for name, rep in reports.items()}
    named = [(n, c) for n, c in cards.items() if c is not None]
    lines = []
    for name, card in named[1:]:
        diff = named[0][1].differences(card)
        if diff:
            lines.append(f"- {md(name)} vs {md(named[0][0])}: " + "; ".join(md(d) for d in diff))
    missing = [n for n, c in cards.items() if c is None]
    if missing and named:
        lines.append(f"- {md(', '.join(missing))}: no protocol card, so how it was scored is unknown")
    if not lines:
        return ""
    return "⚠️ **These reports were not scored the same way** — their numbers are not directly comparable:\n" + \
        "\n".join(lines)


# ------------------------------------------------------------------------------------ one pair, for the Errors tab
def hit_line(report: Report, record: PairRecord) -> str:
    """Markdown: did the model's best map, and the pixel difference, point at this pair's change?"""
    loc = report.run.localization
    if loc is None:
        return ("_No localization in this report: `m3diff predict --maps`, then `m3diff eval`, scores "
                "whether the maps point at the change._")
    scored = loc.pairs.get(record.id)
    if not scored:
        semantic = [g for g in record.regions or [] if g.type not in DISTRACTORS]
        if record.no_change or (record.regions is not None and not any(g.before or g.after for g in semantic)):
            return "_This pair has no changed box to point at (no change, or a camera or light change alone)._"
        return "_The report's localization did not score this pair._"
    names = [n for n in (best_map(scored), "pixel_difference") if n]
    cells = [f"{map_label(n)} **{_hit(scored.get(n))}**" for n in names]
    return "**Pointing** (the map's peak inside a true box): " + " · ".join(cells)


def _hit(v) -> str:
    if v is None:
        return "not scored"
    if v >= 1:
        return "hit"
    if v <= 0:
        return "miss"
    return f"hit on {v:.0%} of its boxed images"


def change_lines(report: Report, record: PairRecord) -> str:
    """Markdown: which of this pair's true changes the caption named, and whether it said the new value
    (generated references only; "" where the report has no change scores)."""
    changes = report.run.changes
    if changes is None:
        return ""
    hits = changes.pairs.get(record.id)
    if hits is None:
        return ""
    if not hits:
        return "**Changes**: none to name (the pair did not change)."
    lines = ["**Changes** (the generator's truth: did the caption name each change, and say what it is now?)"]
    for h in hits:
        line = f"- {md(h.type)} · {md(h.object)}: " + ("named" if h.recalled else
                                                     "object named, not the change" if h.named else "not named")
        if h.new is not None:
            value = (h.new if h.old is None else f"{h.old} → {h.new}").replace("_", " ")
            said = ", ".join(h.stated).replace("_", " ") or "nothing"
            # the verdict only where the change was named: an unnamed change has no value said
            line += (f" · {md(value)}: said {md(said)} " + ("✓" if h.value_right else "✗")) if h.recalled \
                else f" ({md(value)})"
        lines.append(line)
    return "\n".join(lines)


NO_READINGS = ("this run's predictions hold no change readings: its model has no change reader, or it was "
               "predicted before readers existed")
DETECTION_PAIR_COLUMNS = ("type", "true change", "what the model read", "object right", "new value right",
                          "box pointed")


def _mark(verdict: bool | None) -> str:
    """A hit's verdict as a table cell: ✓ right, ✗ wrong, – not scored (unmatched, or nothing to compare)."""
    return "–" if verdict is None else ("✓" if verdict else "✗")


def fact_text(fact) -> str:
    """A ``ChangeFact`` in a table cell: its ``line()`` without the type (the row says it), arrows as a
    person writes them."""
    text = fact.line().split(":", 1)[1].strip().replace(" -> ", " → ")
    return text or "(no detail)"


def _cell_md(text: str) -> str:
    # one table row per hit: a newline in a report's value would end the row, so whitespace is collapsed
    return md(" ".join(str(text).split()))


def detection_pair_md(report: Report, record: PairRecord) -> str:
    """Markdown: what the run's change reader read in this pair beside the generator's true changes, one
    row per hit (``DETECTION_PAIR_COLUMNS``; ✓ / ✗ / – where a verdict does not apply), or one line saying
    why there is nothing to show. Every value from the report is escaped (``md``)."""
    detection = report.run.detection
    if detection is None:
        return f"**Change reader**: _{NO_READINGS}._"
    hits = detection.pairs.get(record.id)
    if hits is None:
        return ("**Change reader**: _the report's detection did not score this pair (its references record no "
                "true changes, or the predictions hold no reading of it)._")
    if not hits:
        return "**Change reader**: no true change, and it read none ✓"
    n_true = sum(h.truth is not None for h in hits)
    n_read = sum(h.detected is not None for h in hits)
    n_matched = sum(h.matched for h in hits)
    lines = [f"**Change reader**: read {n_matched} of {n_true} true change{'s' if n_true != 1 else ''}"
             + (f", and {n_read - n_matched} that did not happen" if n_read > n_matched else "")
             + ":", "",
             "| " + " | ".join(DETECTION_PAIR_COLUMNS) + " |", "|---|---|---|:---:|:---:|:---:|"]
    for h in hits:
        truth = "— (did not happen)" if h.truth is None else fact_text(h.truth)
        read = ("— (missed)" if h.detected is None
                else f"{fact_text(h.detected)} (confidence {h.detected.confidence:.0%})")
        cells = [_cell_md(h.type), _cell_md(truth), _cell_md(read), _mark(h.object_right), _mark(h.value_right),
                 _mark(h.pointed)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ Markdown for model cards
def markdown_table(head: list[str], rows: list[list[str]], left_last: bool = False) -> str:
    """A Markdown table: the first column left-aligned, the others right (the last one left too when
    ``left_last``: a text column)."""
    align = "|---|" + "---:|" * (len(head) - 1 - left_last) + ("---|" if left_last else "")
    return "\n".join(["| " + " | ".join(head) + " |", align] + ["| " + " | ".join(r) + " |" for r in rows])


def _cell(s: SliceResult | None, metric: str = "CIDEr-D") -> str:
    if s is None or s.scores.get(metric) is None:
        return "–"
    v, ci = s.scores[metric], s.ci.get(metric)
    return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{v:.1f}"


def score_tables_md(report: Report, metrics: tuple[str, ...] = SHOWN_METRICS) -> str:
    """Overall, per domain, per change type and per number of changes, with n, 95% bootstrap intervals and
    the captions' mean length beside the references'."""
    bd = report.run.scores
    slices = [("overall", bd.overall)] + [(f"domain: {k}", v) for k, v in bd.per_domain.items()]
    slices += [(f"type: {k}", v) for k, v in bd.per_type.items()] + [(changes_label(k), v) for k, v in bd.per_changes.items()]
    rows = [[name, str(s.n), *[_cell(s, m) for m in metrics], words_cell(s)] for name, s in slices]
    return markdown_table(["slice", "n", *metrics, "words (caption / references)"], rows)


def comparison_md(reports: Reports, metric: str = "CIDEr-D") -> str:
    """One column per model: the metric with its interval, per slice."""
    names = list(reports)
    first = reports[names[0]].run.scores
    keys = [("overall", None)] + [("per_domain", k) for k in first.per_domain] + \
           [("per_type", k) for k in first.per_type] + [("per_changes", k) for k in first.per_changes]
    rows = []
    for section, key in keys:
        label = "overall" if key is None else {"per_domain": f"domain: {key}", "per_changes": changes_label(key)}.get(section, key)
        cells, n = [], None
        for name in names:
            bd = reports[name].run.scores
            s = bd.overall if key is None else getattr(bd, section).get(key)
            cells.append(_cell(s, metric))
            n = n or (None if s is None else s.n)
        rows.append([label, str(n), *cells])
    return markdown_table(["slice", "n", *[f"{n} {metric}" for n in names]], rows)


def grounding_md(report: Report) -> str:
    rows = grounding_rows(report)
    if not rows:
        return "(not measured: run `m3diff probe` and `m3diff eval --grounding`)"
    head = list(rows[0])
    return markdown_table(head, [[r[k] for k in head] for r in rows], left_last=True)


def map_pointing_md(reports: Reports) -> str:
    """Where each model's maps point: pointing, energy and AUROC on single changes, pointing and energy with
    a camera or light change mixed in, per map kind and model; the baselines once ("" without maps)."""
    def pct(v):
        return "–" if v is None or v != v else f"{100 * v:.0f}%"

    rows = []
    baselines_done = False
    for label, rep in reports.items():
        loc = rep.run.localization
        if loc is None:
            continue
        per = loc.summary.per_setting
        names = [m for m in loc.summary.maps if m not in ("pixel_difference", "uniform")]
        if not baselines_done:
            names += ["pixel_difference", "uniform"]
            baselines_done = True
        single, dist, multi = (per.get(s, {}) for s in ("single", "distractor", "multi"))
        for m in names:
            s, d, mu = single.get(m), dist.get(m), multi.get(m)
            get = lambda x, a: None if x is None else getattr(x, a)  # noqa: E731
            auroc = get(s, "auroc")
            rows.append(["—" if m in ("pixel_difference", "uniform") else label, map_label(m, long=True),
                         pct(get(s, "pointing")), pct(get(s, "energy")), "–" if auroc is None else f"{auroc:.2f}",
                         pct(get(d, "pointing")), pct(get(d, "energy")), pct(get(mu, "energy"))])
    head = ["model", "map", "single change: pointing", "energy", "AUROC",
            "with a viewpoint / light distractor: pointing", "energy", "multi-change: energy"]
    return markdown_table(head, rows) if rows else ""


def change_naming_md(reports: Reports) -> str:
    """Per change type and model: change recall, precision and the new value said; each model's own run
    ("" when no report has change scores)."""
    own = {label: rep for label, rep in reports.items() if rep.run.changes is not None}
    if not own:
        return ""
    runs = {label: rep.run.changes.summary for label, rep in own.items()}
    head = ["slice"] + [f"{label}: {c}" for label in runs for c in ("recall %", "precision %", "new value said %")]
    rows = []
    for name in ["overall", *TYPE_IDS]:
        cells = []
        for s in runs.values():
            c = s.overall if name == "overall" else s.per_type.get(name)
            cells += [_pct(None if c is None else v) for v in ((None, None, None) if c is None else
                                                              (c.recall, c.precision, c.value_recall))]
        if any(v != "—" for v in cells):
            rows.append([name, *cells])
    return markdown_table(head, rows)


def change_detection_md(reports: Reports) -> str:
    """Per change type and model: what its change reader read (``detection_table``'s columns); "" when no
    report has a detection section."""
    runs = {label: rep.run.detection.summary for label, rep in reports.items() if rep.run.detection is not None}
    if not runs:
        return ""
    head = ["slice"] + [f"{label}: {c}" if len(runs) > 1 else c for label in runs for c in DETECTION_COLUMNS]
    return markdown_table(head, [[name, *[v for values in cells.values() for v in values]]
                                 for name, cells in _detection_rows(runs)])


def paired_delta(rep: Report, metric: str = "CIDEr-D") -> tuple[float, tuple[float, float] | None] | None:
    """The base run minus the other run of a two-run report (``m3diff eval --pred m3diff=… --pred no_mdp=…``),
    overall, with its paired bootstrap interval; None without a comparison. The report's deltas are
    other − base, so they are negated here."""
    if rep.comparison is None:
        return None
    for table in rep.comparison.runs.values():
        entry = table.get("overall:overall")
        d = None if entry is None else entry.deltas.get(metric)
        if d is not None:
            return -d.delta, None if d.ci is None else (-d.ci[1], -d.ci[0])
    return None


def headline_md(reports: Reports) -> str:
    """The few numbers that say how good a model is, one column per model: caption metrics overall with
    their intervals, whether the captions name the true changes and their new values, whether the model
    reads its images, how often its best map points at a single change, and, when a report has a
    ``detection`` section, which true changes its change reader read."""
    names = list(reports)

    def scores(rep, metric):
        return _cell(rep.run.scores.overall, metric)

    def changes(rep, what):
        c = rep.run.changes
        o = None if c is None else c.summary.overall
        if o is None:
            return "–"
        return {"named": f"{_pct(o.recall)}% / {_pct(o.precision)}%", "value": f"{_pct(o.value_recall)}%"}[what]

    def grounding(rep, what):
        g = rep.grounding_of()
        v = None if g is None else {"swap": g.same_scene_gap, "same": g.no_change_share}[what]
        return "–" if v is None else (f"{v:+.1%}" if what == "swap" else f"{v:.0%}")

    def pointing(rep):
        loc = rep.run.localization
        m = None if loc is None else best_map(loc.summary.maps)
        s = None if m is None else loc.summary.per_setting.get("single", {}).get(m)
        return "–" if s is None or s.pointing is None else f"{100 * s.pointing:.0f}% ({map_label(m)})"

    def detection(rep):
        o = None if rep.run.detection is None else rep.run.detection.summary.overall
        share = lambda v: "–" if v is None else f"{_pct(v)}%"  # noqa: E731  (nothing true, or nothing read)
        return "–" if o is None else f"{share(o.recall)} / {share(o.precision)}"

    n = reports[names[0]].run.scores.overall.n
    rows = [[f"{m} ({n} test pairs) [95% CI]", *[scores(reports[k], m) for k in names]] for m in ("CIDEr-D", "BLEU-4", "METEOR")]
    rows += [["true changes named: recall / precision", *[changes(reports[k], "named") for k in names]],
             ["new value said (colour, word, count, …)", *[changes(reports[k], "value") for k in names]],
             ["same-scene swap: answer loss up by", *[grounding(reports[k], "swap") for k in names]],
             ["identical pairs called unchanged", *[grounding(reports[k], "same") for k in names]],
             ["best map's peak on a single change", *[pointing(reports[k]) for k in names]]]
    if any(reports[k].run.detection is not None for k in names):  # a model with a change reader
        rows.append(["true changes its change reader read: recall / precision", *[detection(reports[k]) for k in names]])
    table = markdown_table(["", *names], rows)
    delta = paired_delta(reports[names[0]])
    if delta is not None and delta[1] is not None and len(names) > 1:
        table += (f"\n\nCIDEr-D, {names[0]} minus {names[1]} on the same pairs: {delta[0]:+.1f} "
                  f"[{delta[1][0]:+.1f}, {delta[1][1]:+.1f}] (paired bootstrap, 95%).")
    return table


# ---------------------------------------------------------------------------- controlled experiments (issue #32)
def probe_table(probe) -> pd.DataFrame:
    """An ``analysis.probe.PairProbe`` side by side: one row per input or ablation."""
    rows = []
    for r in probe.rows:
        rows.append({
            "row": r.name, "caption": r.caption, "vs original": r.diff,
            "Δ answer loss": "—" if r.loss_change is None else f"{r.loss_change:+.1%}",
            "answer loss": "—" if r.loss is None else f"{r.loss:.3f}",
            "says unchanged": "yes" if r.says_no_change else "",
            "Score per layer": " · ".join(f"L{k} {v:.2f}" for k, v in r.layer_scores.items()) or "—",
        })
    return pd.DataFrame(rows)


def made_pair_table(score) -> pd.DataFrame:
    """Per true change of a made pair (``analysis.madepair.MadePairScore``): named? kind said? new value said?"""
    rows = []
    for h in score.changes.truth:
        value = "—" if h.value_right is None else (f"{h.old} → {h.new}: said "
                                                   f"{', '.join(h.stated) or 'nothing'} {'✓' if h.value_right else '✗'}")
        rows.append({"change": h.type, "object": h.object, "object named": "yes" if h.named else "no",
                     "change named": "yes" if h.recalled else "no", "new value": value})
    if not rows:
        rows.append({"change": "no change", "object": "—", "object named": "—",
                     "change named": "says unchanged ✓" if score.says_no_change else "describes a change ✗",
                     "new value": "—"})
    return pd.DataFrame(rows)


def made_pair_line(score) -> str:
    """One line above the per-change table: CIDEr-D and how many true changes the caption named."""
    hits = score.changes.truth
    named = f"{sum(h.recalled for h in hits)} of {len(hits)} true changes named" if hits else \
        ("no change, and the caption says so" if score.says_no_change else "no change, but the caption describes one")
    return f"**CIDEr-D {score.cider:.1f}** against the generator's references · {named}"


def _delta_cell(d) -> str:
    if d is None:
        return "—"
    ci = "" if d.low is None else f" [{d.low:+.1f}, {d.high:+.1f}]"
    return f"{d.delta:+.1f}{ci}"


def knockout_table(study, measure: str = "CIDEr-D") -> pd.DataFrame:
    """An ``analysis.probe.KnockoutStudy``: one row per slice (all pairs, then each change type), one column per
    knocked-out layer; ``measure`` "CIDEr-D" (×100) or "change recall" (percentage points)."""
    table = study.cider if measure == "CIDEr-D" else study.recall
    slices = list(dict.fromkeys(s for layer in study.layers for s in table.get(layer, {})))
    slices = [s for s in ["all", *TYPE_IDS] if s in slices]
    rows = []
    for s in slices:
        row = {"slice": s, "n": next((table[layer][s].n for layer in study.layers if s in table[layer]), 0)}
        for layer in study.layers:
            row[f"L{layer} off: Δ{measure}"] = _delta_cell(table[layer].get(s))
        rows.append(row)
    return pd.DataFrame(rows)


def best_localizing_map(localization) -> tuple[str, int | None] | None:
    """(map kind, MDP layer or None) of the model map that pointed at the true change most often in a run's
    ``localization`` (``LocalizationRun``), among the maps the Describe tab draws; None when it scored none.
    Pointing on single-change pairs, as the headline's "best map" (one change: one place to point at);
    over all pairs where the report has no single-change slice."""
    if localization is None:
        return None
    scored = {}
    by_map = localization.summary.per_setting.get("single") or localization.summary.overall
    for name, s in by_map.items():
        kind, _, layer = name.partition("@")
        if name == "feature_difference" or (kind in MAP_KINDS and layer.isdigit()):
            scored[name] = s.pointing
    if not scored:
        return None
    best = max(scored, key=lambda m: (scored[m], m == "feature_difference"))
    kind, _, layer = best.partition("@")
    return kind, int(layer) if layer else None
