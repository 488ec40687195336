"""report.json, a CSV, a LaTeX table (laid out like the paper's Table 3) and an HTML report.

report.json is the contract with the app: everything the Dashboard and the Errors browser show is in
it (schema ``m3diff.eval/1``, see docs/analysis.md).
"""
from __future__ import annotations

import csv
import html
import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from analysis.breakdown import Breakdown, compare
from analysis.metrics import HEADLINE, METRICS, MetricAvailability
from analysis.protocol import Protocol

SCHEMA = "m3diff.eval/1"
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


def run_json(bd: Breakdown) -> dict:
    return {
        "overall": bd.overall.to_json(),
        "micro": None if bd.micro is None else bd.micro.to_json(),
        "macro": {**{m: _r(bd.macro[m]) for m in METRICS}, "types": bd.macro_types},
        "absent_types": bd.absent_types,
        "per_type": {k: v.to_json() for k, v in bd.per_type.items()},
        "per_domain": {k: v.to_json() for k, v in bd.per_domain.items()},
        "per_source": {k: v.to_json() for k, v in bd.per_source.items()},
        "per_changes": {k: v.to_json() for k, v in bd.per_changes.items()},
    }


def build_report(runs: dict[str, Breakdown], meta: dict, availability: MetricAvailability,
                 notes: dict[str, list[str]] | None = None, dropped: dict[str, dict] | None = None,
                 protocols: dict[str, Protocol] | None = None) -> dict:
    """The report of the first run, with every run's tables under ``runs`` and their deltas, and each
    run's protocol card (``protocols``)."""
    protocols = protocols or {}
    base = next(iter(runs))
    bd = runs[base]
    rep = {
        "schema": SCHEMA,
        "meta": {**meta, "run": base, "n_pairs": bd.overall.n, "bootstrap": asdict(bd.config),
                 "metrics_available": list(availability.runnable),
                 "unavailable": {m: ("; ".join(availability.notes) or "not enabled")
                                 for m in METRICS if m not in availability.runnable or bd.overall.scores.get(m) is None}},
        "conventions": CONVENTIONS,
        **run_json(bd),
        "pairs": [p.to_json() for p in bd.pairs],
        "input_notes": (notes or {}).get(base, []),
        "dropped": (dropped or {}).get(base, {}),
    }
    if base in protocols:
        rep["protocol"] = protocols[base].to_json()
    if len(runs) > 1:
        rep["runs"] = {name: {**run_json(b), "input_notes": (notes or {}).get(name, []),
                              **({"protocol": protocols[name].to_json()} if name in protocols else {}),
                              "pairs": {p.id: {m: _r(v) for m, v in p.scores.items()} | {"caption": p.caption}
                                        for p in b.pairs}}
                       for name, b in runs.items()}
        rep["comparison"] = compare(runs, base)
    return rep


def write_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False, default=_nan_none))


def csv_text(rep: dict) -> str:
    """One row per (run, slice): n, every metric, and the interval of the headline metrics."""
    runs = rep.get("runs") or {rep["meta"]["run"]: rep}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "slice_kind", "slice", "n", *METRICS,
                *[f"{m} {b}" for m in HEADLINE for b in ("ci_low", "ci_high")], "words caption", "words references"])
    for run, r in runs.items():
        rows = [("overall", "overall", r["overall"])]
        if r.get("micro"):
            rows.append(("micro", "micro", r["micro"]))
        rows.append(("macro", "macro", {**r["macro"], "n": len(r["macro"]["types"]), "ci": {}}))
        for kind, table in (("type", "per_type"), ("domain", "per_domain"), ("source", "per_source"),
                            ("changes", "per_changes")):
            rows += [(kind, k, v) for k, v in r.get(table, {}).items()]
        for kind, name, s in rows:
            ci = s.get("ci") or {}
            words = s.get("words") or {}
            w.writerow([run, kind, name, s.get("n"), *[_fmt(s.get(m)) for m in METRICS],
                        *[_fmt((ci.get(m) or [None, None])[j]) for m in HEADLINE for j in (0, 1)],
                        _fmt(words.get("caption")), _fmt(words.get("references"))])
    return buf.getvalue()


def latex_table(rep: dict, paper_rows: bool = True) -> str:
    """Table 3's layout: one row per run, B4/M/R/C per domain column group (Real, Render) when the
    data has domains, one Overall group (with SPICE) otherwise."""
    from analysis.paper import OMNIDIFF_TABLE3

    runs = rep.get("runs") or {rep["meta"]["run"]: rep}
    # the paper's column groups first, then every other domain of the data (the generator's "photo"):
    # a domain left out would drop its pairs from the table without a word
    paper_domains = [d for d in ("real", "render") if d in rep["per_domain"]]
    domains = paper_domains + sorted(d for d in rep["per_domain"] if d not in ("real", "render"))
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
    short = {"BLEU-4": "B4", "METEOR": "M", "ROUGE-L": "R", "CIDEr-D": "C", "SPICE": "S"}
    if domains:
        groups = [(d.capitalize(), lambda r, d=d: r["per_domain"].get(d, {})) for d in domains]
    else:
        keys = HEADLINE
        groups = [("Overall", lambda r: r["overall"])]
    cols = "l" + "|cccc" * len(groups) if len(keys) == 4 else "l" + "|ccccc" * len(groups)
    lines = [
        "% m3diff eval: " + html.escape(rep["meta"].get("references", ""), quote=False),
        r"\begin{table}", r"\centering",
        r"\begin{tabular}{" + cols + "}", r"\toprule",
        "Method & " + " & ".join(rf"\multicolumn{{{len(keys)}}}{{c}}{{{g}}}" for g, _ in groups) + r" \\",
        " & " + " & ".join(" & ".join(short[k] for k in keys) for _ in groups) + r" \\", r"\midrule",
    ]
    for run, r in runs.items():
        cells = [_tex(g(r).get(k)) for _, g in groups for k in keys]
        lines.append(_tex_escape(run) + " & " + " & ".join(cells) + r" \\")
    if paper_rows and paper_domains:
        lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{1 + len(keys) * len(groups)}}}{{l}}{{\emph{{reported in the paper (Table 3)}}}} \\")
        for name, doms in OMNIDIFF_TABLE3.items():
            cells = [_tex(doms.get(d, {}).get(k)) for d in domains for k in keys]  # the paper has no photo column
            lines.append(_tex_escape(name) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    card = protocol_of(rep)
    if card is not None:
        lines.append(r"\caption{" + _tex_escape(protocol_sentence(card)) + "}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def protocol_of(rep: dict) -> Protocol | None:
    """The report's protocol card, or None for a report written before reports carried one."""
    return Protocol.from_json(rep["protocol"]) if isinstance(rep.get("protocol"), dict) else None


def protocol_sentence(card: Protocol) -> str:
    """The protocol in one sentence (table.tex's caption, the CLI's line above its table)."""
    lo, mean, hi = card.references_per_pair
    left = sum(card.left_out.values())
    return (f"{card.scorer}, PTB tokenisation, CIDEr-D (sigma 6, clipped), scores x100; {card.pairs:,} pairs, "
            f"{lo}-{hi} references per pair (mean {mean:g}), {card.empty_references} empty reference(s) kept; "
            f"METEOR {'on' if card.meteor else 'off'}, SPICE {'on' if card.spice else 'off'}; ids matched "
            f"{card.id_matching}; {left} id(s) left out.")


def html_report(rep: dict) -> str:
    """A self-contained page: headline table, per-type and per-domain figures, worst pairs."""
    from analysis import figures

    runs = rep.get("runs") or {rep["meta"]["run"]: rep}
    parts = [f"<h1>m3diff eval — {html.escape(str(rep['meta'].get('run')))}</h1>",
             "<p>" + html.escape(f"{rep['meta'].get('n_pairs')} pairs · references {rep['meta'].get('references')} · "
                                 f"model {rep['meta'].get('model') or 'n/a'} · {rep['meta'].get('date')}") + "</p>"]
    for m, why in rep["meta"].get("unavailable", {}).items():
        parts.append(f"<p><b>{html.escape(m)}</b> not computed: {html.escape(why)}</p>")
    for note in rep.get("input_notes", []):
        parts.append(f"<p class=note>{html.escape(note)}</p>")
    parts.append(_html_table(rep))
    card = protocol_of(rep)
    if card is not None:
        parts.append("<h2>Protocol</h2><table>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in card.lines()) + "</table>")
    figs = [figures.metrics_by_type(runs, "CIDEr-D"), figures.metrics_by_type(runs, "BLEU-4")]
    if rep["per_domain"]:
        figs.append(figures.metrics_by_domain(runs, "CIDEr-D"))
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    worst = {p["id"]: p for p in rep["pairs"]}
    parts.append("<h2>Worst pairs overall (per-pair CIDEr-D)</h2><table><tr><th>id</th><th>types</th>"
                 "<th>CIDEr-D</th><th>prediction</th><th>references</th></tr>")
    for pid in rep["overall"]["worst"]:
        p = worst[pid]
        parts.append(f"<tr><td>{html.escape(pid)}</td><td>{html.escape(', '.join(p['types']))}</td>"
                     f"<td>{_fmt(p['CIDEr-D'])}</td><td>{html.escape(p['caption'])}</td>"
                     f"<td>{'<br>'.join(html.escape(r) for r in p['refs'])}</td></tr>")
    parts.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.note{color:#a40}")
    return f"<!doctype html><html><head><meta charset=utf-8><title>m3diff eval</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def _slice_rows(rep: dict, all_sources: bool = True):
    """(kind, name, stats, n) for every slice of a run, in the order both tables show them."""
    yield "overall", "", rep["overall"], rep["overall"]["n"]
    if rep.get("micro"):
        yield "micro", "", rep["micro"], rep["micro"]["n"]
    if rep["macro"]["types"]:  # references without change types have no macro average
        yield "macro", str(len(rep["macro"]["types"])), rep["macro"], ""
    for kind, key in (("type", "per_type"), ("domain", "per_domain"), ("source", "per_source"),
                      ("changes", "per_changes")):
        if kind == "source" and not all_sources and len(rep[key]) <= 1:
            continue
        for name, stats in rep.get(key, {}).items():
            yield kind, name, stats, stats["n"]


def changes_label(name: str) -> str:
    """A ``per_changes`` key as a person reads it: "0" -> "no change", "1" -> "1 change", "3" -> "3 changes"."""
    return {"0": "no change", "1": "1 change"}.get(name, f"{name} changes")


def words_cell(s: dict) -> str:
    """A slice's mean caption length beside its references' ("24 / 30"), in words; "" where unknown."""
    w = s.get("words")
    return "" if not w else f"{w['caption']:.0f} / {w['references']:.0f}"


def _html_table(rep: dict) -> str:
    head = "".join(f"<th>{m}</th>" for m in HEADLINE)
    labels = {"overall": "overall", "micro": "micro (pooled)", "macro": "macro (mean of {} types)"}
    rows = []
    for kind, name, s, n in _slice_rows(rep):
        label = labels[kind].format(name) if kind in labels else \
            (changes_label(name) if kind == "changes" else f"{kind}: {name}")
        ci = s.get("ci") or {}
        cells = "".join(
            f"<td>{_fmt(s.get(m))}" + (f" <small>[{_fmt(ci[m][0])}, {_fmt(ci[m][1])}]</small>" if ci.get(m) else "") + "</td>"
            for m in HEADLINE)
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{n}</td>{cells}<td>{words_cell(s)}</td></tr>")
    return (f"<table><tr><th>slice</th><th>n</th>{head}<th>words: caption / references</th></tr>{''.join(rows)}</table>"
            "<p>Words: mean length as the metrics see it. CIDEr-D's length penalty (a Gaussian of the length "
            "difference, sigma 6 words) falls hard on a caption that leaves a change out.</p>")


def text_table(rep: dict) -> str:
    """The table `m3diff eval` prints: BLEU-1..4 as the papers print them, every other metric, the words,
    and the protocol in one line above it."""
    cols = ("n", *METRICS)
    card = protocol_of(rep)
    lines = [f"protocol: {protocol_sentence(card)}"] if card is not None else []
    lines.append(f"{'slice':<26}" + "".join(f"{c:>9}" for c in cols) + f"{'words':>10}")

    labels = {"overall": "overall", "micro": "micro (pooled)", "macro": "macro ({} types)",
              "type": "  {}", "domain": "  domain {}", "source": "  source {}", "changes": "  {}"}
    for kind, name, s, n in _slice_rows(rep, all_sources=False):
        label = labels[kind].format(changes_label(name) if kind == "changes" else name)
        lines.append(f"{label:<26}" + f"{n!s:>9}" + "".join(f"{_fmt(s.get(m), 'n/a'):>9}" for m in METRICS)
                     + f"{words_cell(s):>10}")
    if rep.get("comparison"):
        base = rep["comparison"]["base"]
        for run, table in rep["comparison"]["runs"].items():
            lines.append(f"\n{run} minus {base}:")
            for key, e in table.items():
                cells = []
                for m in HEADLINE:
                    d = e.get(m)
                    cells.append("n/a" if d is None else f"{d['delta']:+.2f}")
                lines.append(f"  {key:<24}" + f"{e['n']!s:>10}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def write_all(rep: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "csv": out_dir / "scores.csv",
             "latex": out_dir / "table.tex", "html": out_dir / "report.html"}
    write_json(paths["json"], rep)
    atomic_write(paths["csv"], csv_text(rep))
    atomic_write(paths["latex"], latex_table(rep))
    atomic_write(paths["html"], html_report(rep))
    return paths


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


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


def _fmt(v, none: str = "") -> str:
    return none if v is None else f"{v:.2f}"


def _tex(v) -> str:
    return "--" if v is None else f"{v:.1f}"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _nan_none(o):
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------- reading (the app's Dashboard and Errors)
class ReportError(ValueError):
    """A report.json that is not one ``m3diff eval`` wrote; the message says what is wrong."""


def read_report(path, search: tuple[Path, ...] = (), allowed: tuple[Path, ...] | None = None) -> dict:
    """A report.json as ``m3diff eval`` wrote it, checked; ``_images`` says where each pair's images are
    (``resolve_images``, looking in ``search`` folders too). Raises ReportError for a person.

    ``allowed``: for a report someone else wrote (a visitor's upload), the only folders its image and
    reference paths may lead into; a path outside them is never opened, not even checked for
    existence, so the report can neither show nor probe other files. None trusts the report (the
    operator named it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path.name} could not be read ({exc.__class__.__name__}).") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path.name} is not JSON (line {exc.lineno}: {exc.msg}).") from None
    data = validate_report(data, path.name)
    roots = None if allowed is None else [str(Path(a).resolve()) for a in allowed]
    data["_allowed"] = roots
    # for the Errors tab: where each pair's images are
    data["_images"] = resolve_images(data, (path.parent, *search), roots)
    return data


def inside(path, roots) -> bool:
    """Whether ``path``, links followed, lies in one of the ``roots`` folders (None: no limit)."""
    if roots is None:
        return True
    try:
        p = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(p == Path(r) or Path(r) in p.parents for r in roots)


def validate_report(data, name: str = "report") -> dict:
    if not isinstance(data, dict) or "overall" not in data or "per_type" not in data:
        raise ReportError(f"{name} is not a report.json from `m3diff eval`: it needs the keys 'overall' and "
                          "'per_type' (and usually 'per_domain' and 'pairs').")
    if not isinstance(data["per_type"], dict) or not isinstance(data.get("per_domain", {}), dict):
        raise ReportError(f"{name}: 'per_type' and 'per_domain' must map names to scores.")
    pairs = report_pairs(data)
    if not isinstance(pairs, list) or any(not isinstance(p, dict) or "id" not in p for p in pairs):
        raise ReportError(f"{name}: 'pairs' must be a list of per-pair records with an 'id'.")
    return data


def report_pairs(report: dict) -> list[dict]:
    return report.get("pairs", report.get("per_pair", []))


def resolve_images(report: dict, folders: tuple[Path, ...] = (), roots=None) -> dict[str, list[str]]:
    """id -> [before, after] files, from the references the report was scored against (meta.references),
    looked up as written, then relative to ``folders`` and the working directory — only inside
    ``roots`` when given (see ``read_report``)."""
    meta = report.get("meta") or {}
    refs = meta.get("references")
    if not refs:
        return {}
    from analysis.inputs import InputError, load_references

    ref = Path(refs)
    candidates = [ref] if ref.is_absolute() else [Path(p) / ref for p in (*folders, Path.cwd())]
    for c in candidates:
        if not inside(c, roots) or not c.exists():
            continue
        try:
            pairs = load_references(c.resolve(), meta.get("format"), meta.get("split"))
        except (InputError, ValueError, OSError):
            continue
        report["_references_dir"] = str(c.resolve())
        return {p.id: [str(p.before), str(p.after)] for p in pairs
                if p.before and p.after and inside(p.before, roots) and inside(p.after, roots)}
    return {}


def data_folders(report: dict) -> list[Path]:
    """The dataset folder a loaded report's pairs were found in (empty when not found)."""
    found = report.get("_references_dir")
    return [Path(found)] if found else []


def pair_images(report: dict, record: dict) -> tuple[str, str] | None:
    """The before/after files of a report's pair, if they can be found and exist."""
    files = [record.get("before"), record.get("after")]
    if not all(files):
        files = (report.get("_images") or {}).get(record["id"]) or [None, None]
    roots = report.get("_allowed")
    if not all(isinstance(f, str) and f for f in files) or not all(inside(f, roots) for f in files):
        return None  # never opened: a visitor's report names no file outside the operator's folders
    if not all(Path(f).is_file() for f in files):
        return None
    return files[0], files[1]
