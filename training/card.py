"""Model cards (README.md) for trained models: data, recipe, steps, and scores per change type."""
from __future__ import annotations

import json
from pathlib import Path


def write_card(model_dir, meta: dict, steps: int, val_scores: dict, seconds: float, reports: dict | None = None,
               command: str | None = None, extra: str = "") -> Path:
    """README.md in ``model_dir``; ``reports`` maps a name to an `m3diff eval` report.json (tables per type)."""
    r = meta["recipe"]
    lines = [
        f"# {r['name']}", "",
        "An M3Diff model (LLaVA-OneVision with the Multi-scale Differential Perception module) trained with "
        "`m3diff train`.", "",
        "## Training", "",
        f"- data: {', '.join(meta['sources'])} ({meta['samples']} samples)",
        f"- model: preset `{r['model']['preset']}` {json.dumps(r['model']['config']) if r['model']['config'] else ''}",
        f"- LLM: {'LoRA rank %d, alpha %d' % (r['lora']['rank'], r['lora']['alpha']) if r['lora'] else 'fully trained (no LoRA: trained from scratch)'}",
        f"- AdamW, lr {r['optim']['lr']} (vision encoder {r['optim']['lr_vision']}), cosine with linear warm-up, "
        f"global batch {r['batch']['global_batch']}",
        f"- {steps} optimizer steps in {seconds / 60:.1f} min on {meta['world_size']} process(es)",
    ]
    total = meta.get("total_steps")
    if total and steps < total:
        lines.append(f"- **part-way**: step {steps} of a {total}-step schedule (the learning rate has not decayed "
                     "yet); `m3diff train --resume` continues the same schedule")
    if command:
        lines += ["", "Reproduce:", "", "```", command, "```"]
    if val_scores:
        lines += ["", "Validation (quick, no METEOR): " + ", ".join(f"{k} {v:.1f}" for k, v in val_scores.items())]
    for name, rep in (reports or {}).items():
        lines += ["", f"## Evaluation: {name}", "", report_tables(rep)]
    if extra:
        lines += ["", extra]
    path = Path(model_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(s: dict, metric: str = "CIDEr-D") -> str:
    v = s.get(metric)
    if v is None:
        return "–"
    ci = (s.get("ci") or {}).get(metric)
    return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{v:.1f}"


def report_tables(rep: dict, metrics: tuple[str, ...] | None = None) -> str:
    """Overall, per domain, per change type and per number of changes, with n, 95% bootstrap intervals
    and the captions' mean length beside the references'."""
    from analysis.metrics import SHOWN_METRICS
    from analysis.report import changes_label, words_cell

    metrics = metrics or SHOWN_METRICS
    head = "| slice | n | " + " | ".join(metrics) + " | words (caption / references) |\n|---|---:|" + \
        "---:|" * (len(metrics) + 1)
    rows = [head]
    slices = [("overall", rep["overall"])]
    slices += [(f"domain: {k}", v) for k, v in rep.get("per_domain", {}).items()]
    slices += [(f"type: {k}", v) for k, v in rep.get("per_type", {}).items()]
    slices += [(changes_label(k), v) for k, v in rep.get("per_changes", {}).items()]
    for name, s in slices:
        rows.append(f"| {name} | {s['n']} | " + " | ".join(_cell(s, m) for m in metrics) + f" | {words_cell(s)} |")
    return "\n".join(rows)


def comparison_table(reports: dict[str, dict], metric: str = "CIDEr-D") -> str:
    """One column per model: the metric with its interval, per slice."""
    from analysis.report import changes_label

    names = list(reports)
    first = reports[names[0]]
    keys = [("overall", None)] + [("per_domain", k) for k in first.get("per_domain", {})] + \
           [("per_type", k) for k in first.get("per_type", {})] + [("per_changes", k) for k in first.get("per_changes", {})]
    rows = [f"| slice | n | " + " | ".join(f"{n} {metric}" for n in names) + " |",
            "|---|---:|" + "---:|" * len(names)]
    for section, key in keys:
        label = "overall" if key is None else {"per_domain": f"domain: {key}", "per_changes": changes_label(key)}.get(section, key)
        cells, n = [], None
        for name in names:
            s = reports[name]["overall"] if key is None else reports[name].get(section, {}).get(key)
            cells.append("–" if s is None else _cell(s, metric))
            n = n or (s or {}).get("n")
        rows.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _map_label(name: str) -> str:
    from analysis.evidence import map_label

    return map_label(name, long=True)


def map_pointing_table(reports: dict[str, dict]) -> str:
    """Where each model's maps point (report.json's ``localization``): pointing, energy and AUROC on
    single changes, pointing and energy with a camera or light change mixed in, per map kind and run;
    the baselines once. Empty when no report has the section."""
    def pct(v):
        return "–" if v is None or v != v else f"{100 * v:.0f}%"

    rows = ["| model | map | single change: pointing | energy | AUROC | with a viewpoint / light distractor: "
            "pointing | energy | multi-change: energy |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    baselines_done = False
    for label, rep in reports.items():
        for run, loc in (rep.get("localization") or {}).items():
            if run != rep.get("meta", {}).get("run", run):
                continue  # a report's other runs have their own report
            per = loc["summary"]["per_setting"]
            names = [m for m in loc["summary"]["maps"] if m not in ("pixel_difference", "uniform")]
            if not baselines_done:
                names += ["pixel_difference", "uniform"]
                baselines_done = True
            single, dist, multi = (per.get(s, {}) for s in ("single", "distractor", "multi"))
            for m in names:
                s, d, mu = single.get(m, {}), dist.get(m, {}), multi.get(m, {})
                auroc = s.get("auroc")
                who = "—" if m in ("pixel_difference", "uniform") else label
                rows.append(f"| {who} | {_map_label(m)} | {pct(s.get('pointing'))} | {pct(s.get('energy'))} | "
                            f"{'–' if auroc is None else f'{auroc:.2f}'} | {pct(d.get('pointing'))} | "
                            f"{pct(d.get('energy'))} | {pct(mu.get('energy'))} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def change_naming_table(reports: dict[str, dict]) -> str:
    """Per change type and model: change recall, precision and the new value said (report.json's
    ``changes``, generated references only); each model's own run from its own report. Empty when no
    report has the section."""
    from analysis.tables import changes_table

    own = {}
    for label, rep in reports.items():
        run = rep.get("meta", {}).get("run")
        section = rep.get("changes") or {}
        if run in section:
            own[label] = {"changes": {label: section[run]}}
    if not own:
        return ""
    frame = changes_table(own)
    return markdown_table(list(frame.columns), [list(map(str, row)) for row in frame.itertuples(index=False)])


def markdown_table(head: list[str], rows: list[list[str]], left_last: bool = False) -> str:
    """A Markdown table: the first column left-aligned, the others right (the last one left too when
    ``left_last``: a text column)."""
    align = "|---|" + "---:|" * (len(head) - 1 - left_last) + ("---|" if left_last else "")
    return "\n".join(["| " + " | ".join(head) + " |", align] + ["| " + " | ".join(r) + " |" for r in rows])
