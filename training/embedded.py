"""Package the embedded default model: copy a trained run into m3diff/weights/ with its reports and card.

    python -m training.embedded --model runs/emb-mdp/model --twin runs/emb-nomdp/model \
        --report reports/mdp/report.json --twin-report reports/nomdp/report.json \
        --command "m3diff synth ... && m3diff train ..." [--dest m3diff/weights]

Reports are `m3diff eval --out DIR` report.json files (schema m3diff.eval/1); they go to
``DEST/reports/{m3diff,no_mdp}.json`` for the app's dashboard. The twin's weights go to ``DEST/twin/``
only when both models together stay within ``--limit-mb``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from m3diff.change_types import TYPE_IDS

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "processor_config.json", "special_tokens_map.json")


def copy_model(src: Path, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    size = 0
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
            size += (src / name).stat().st_size
    return size


def describe_latency(model_dir: Path, pairs, repeats: int = 5) -> float:
    """Median seconds of DiffCaptioner.describe on single pairs (with the MDP trace, as the app calls it)."""
    import torch

    from m3diff.pipeline import DiffCaptioner

    torch.set_num_threads(2)
    captioner = DiffCaptioner.from_pretrained(model_dir)
    captioner.describe(*pairs[0])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        captioner.describe(*pairs[i % len(pairs)])
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bar_check(rep: dict, twin: dict | None) -> list[str]:
    """The shipping bar of the embedded model (CIDEr-D >= 40 overall and >= 15 on each of the 12
    types, ahead of the no-MDP twin with a paired interval above 0, and the grounding checks);
    the long-term bar stays CIDEr-D 100, about what one reference scores against the other two."""
    lines = []
    overall = rep["overall"]["CIDEr-D"]
    lines.append(f"- CIDEr-D overall {overall:.1f} (bar: >= 40; long-term >= 100): {'met' if overall >= 40 else 'NOT met'}")
    low = {t: rep["per_type"][t]["CIDEr-D"] for t in TYPE_IDS if t in rep["per_type"] and rep["per_type"][t]["CIDEr-D"] < 15}
    missing = [t for t in TYPE_IDS if t not in rep["per_type"]]
    lines.append(f"- CIDEr-D >= 15 on every type: {'met' if not low and not missing else 'NOT met'}"
                 + (f" (below: {', '.join(f'{t} {v:.1f}' for t, v in low.items())})" if low else "")
                 + (f" (absent: {', '.join(missing)})" if missing else ""))
    if twin is not None:
        t = twin["overall"]["CIDEr-D"]
        delta = paired_delta(rep)
        verdict = "met" if delta and delta["ci"] and delta["ci"][0] > 0 else "NOT met"
        shown = (f"paired difference {delta['delta']:+.1f} [{delta['ci'][0]:+.1f}, {delta['ci'][1]:+.1f}]"
                 if delta and delta["ci"] else "no paired interval in the report")
        lines.append(f"- ahead of the no-MDP twin ({overall:.1f} vs {t:.1f}; {shown}): {verdict}")
    for name, g in (rep.get("grounding") or {}).get("models", {}).items():
        lines.append(f"- grounding checks of `{name}`: {'passed' if g['passed'] else 'NOT passed'}"
                     + ("" if g["passed"] else f" ({'; '.join(g['flags'])})"))
    return lines


def paired_delta(rep: dict) -> dict | None:
    """M3Diff minus the twin, overall CIDEr-D, with its paired interval: from a report of
    `m3diff eval --pred m3diff=… --pred no_mdp=…` (base first, so its deltas are twin − M3Diff)."""
    comp = rep.get("comparison") or {}
    for table in (comp.get("runs") or {}).values():
        d = (table.get("overall:overall") or {}).get("CIDEr-D")
        if isinstance(d, dict) and "delta" in d:
            ci = d.get("ci")
            return {"delta": -d["delta"], "ci": [-ci[1], -ci[0]] if ci else None}
    return None


def grounding_table(rep: dict) -> str:
    """The grounding checks of every model in the report (`m3diff probe` → `m3diff eval --grounding`)."""
    from analysis.grounding import report_rows
    from training.card import markdown_table

    rows = report_rows(rep)
    if not rows:
        return "(not measured: run `m3diff probe` and `m3diff eval --grounding`)"
    head = list(rows[0])
    return markdown_table(head, [[r[k] for k in head] for r in rows], left_last=True)


def cpu_minutes(run_dir: Path) -> float | None:
    """CPU minutes the run's process spent (log.csv's cpu_s; the sum over resumed pieces)."""
    import csv

    log = run_dir / "log.csv"
    if not log.is_file():
        return None
    total, last = 0.0, 0.0
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            cpu = float(row.get("cpu_s") or 0)
            if cpu < last:  # a resumed process starts its clock again
                total += last
            last = cpu
    return (total + last) / 60 or None


def parameter_count(model_dir: Path) -> int:
    from math import prod

    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())


def architecture(model_dir: Path) -> str:
    c = json.loads((model_dir / "config.json").read_text())
    v, t = c["vision_config"], c["text_config"]
    grid = v["image_size"] // v["patch_size"]
    mdp = (f"MDP on vision layers {', '.join(map(str, c['mdp_layers']))}, depth {c['mdp_depth']}" if c.get("use_mdp", True)
           else "no MDP (plain LLaVA-OneVision)")
    return (f"SigLIP-style vision {v['num_hidden_layers']} layers × {v['hidden_size']}, {v['image_size']}-px images in "
            f"{v['patch_size']}-px patches ({grid * grid} tokens + newline per image); {mdp}; Qwen2-style LLM "
            f"{t['num_hidden_layers']} layers × {t['hidden_size']}")


def trained_steps(run_dir: Path, run_json: dict) -> int:
    """The step the run's model was saved at: its latest checkpoint (a run stopped part-way with
    --stop-at), else the whole schedule."""
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        return int(latest.read_text().strip().removeprefix("step-"))
    return int(run_json["total_steps"])


def grounding_line(recipe: dict) -> str:
    g = recipe.get("grounding")
    if not g:
        return "none: caption loss only"
    return (f"ours, not the paper's: auxiliary losses on the features the projector reads (per patch: object kind "
            f"/ colour / size, changed patches, change type; per pair: the change types and, from each image's mean "
            f"feature, the changed objects' kinds, colours, sizes and places), weight {g['weight']}, and "
            f"scene-description samples ({g['scene_share']:.0%} of the caption samples) — `training/auxiliary.py`")


def write_card(dest: Path, run_json: dict, rep: dict, twin_rep: dict | None, command: str, latency: float | None,
               size_mb: float, twin_shipped: bool, notes: str = "", steps: int | None = None,
               dest_run: Path | None = None) -> Path:
    from analysis.tables import localization_notes
    from training.card import change_naming_table, comparison_table, map_pointing_table, report_tables

    r = run_json["recipe"]
    total = int(run_json["total_steps"])
    steps = total if steps is None else steps
    part = "" if steps >= total else (f" — part-way: stopped at step {steps:,} of the {total:,}-step schedule "
                                      "(`--stop-at`); `--resume` continues it")
    m = r["model"]
    reports = {"M3Diff (MDP)": rep} | ({"no-MDP twin": twin_rep} if twin_rep else {})
    meta = rep.get("meta", {})
    text = f"""# m3diff embedded default model

The model `DiffCaptioner.from_pretrained()` loads when no other model is given: a small M3Diff
(LLaVA-OneVision architecture with the Multi-scale Differential Perception module, the same
`M3DiffForConditionalGeneration` class as the 7B) trained **from scratch** on generated pairs
(`m3diff synth`, both domains: `render` 3D scenes and `photo` composites, all 12 change types).
It is a demonstration model for the app and the CLI on a CPU: it knows the synthetic world only,
not real photographs.

| | |
|---|---|
| architecture | preset `{m['preset']}` {json.dumps(m['config']) if m['config'] else ''}: {architecture(dest)} |
| parameters | {parameter_count(dest) / 1e6:.2f} M |
| tokenizer | byte-level BPE, vocabulary {m['tokenizer_vocab_size']}, trained on the training captions |
| weights | {size_mb:.1f} MB safetensors ({r['save_dtype']}) |
| training data | {run_json['samples']:,} samples ({'every reference caption of' if r['data']['every_caption'] else 'one caption per'} the train split of {', '.join(run_json['sources'])}) |
| recipe | `training/recipes/embedded.yaml`: {steps:,} steps × global batch {r['batch']['global_batch']}, AdamW lr {r['optim']['lr']} (vision encoder {r['optim']['lr_vision']}), cosine with {r['optim']['warmup_steps']} warm-up steps, {run_json['world_size']} process{part} |
| LLM training | fully trained, **no LoRA**: LoRA (rank 128, alpha 256 in `paper-7b.yaml`) is the paper's way to adapt a *pretrained* 7B LLM; there is nothing pretrained here |
| grounded training | {grounding_line(r)} |
| training time | {f'{cpu:.0f} CPU-minutes (one thread)' if (cpu := cpu_minutes(dest_run)) else 'not recorded'} |
| describe latency | {f'{latency:.2f} s per pair (median on the 2-core development CPU, with the MDP trace)' if latency else 'not measured'} |

## Reproduce

```
{command}
```

## Evaluation

Test split: {meta.get('references', '?')} (split `{meta.get('split', 'test')}`), {rep['overall']['n']} pairs, generated
with a seed not used for training. Greedy decoding. Scores ×100 (pycocoevalcap: PTB tokenisation, CIDEr-D),
every slice re-scored as its own corpus; [95% bootstrap interval]. SPICE is not available offline.

### CIDEr-D, M3Diff beside the no-MDP twin (same data, recipe and steps, `use_mdp=false`)

{comparison_table(reports)}

### Does it read its images? (grounding checks, `m3diff probe`)

{grounding_table(rep)}

Distinct captions: share of test pairs whose caption no other pair got. Answer loss: per-token loss of
each pair's first reference; random swap / same-scene swap: how much higher it is with the images of a
random other pair / of another pair of the same scene (the honest blind gap). Identical pairs: the
before image given twice.

### Do its maps point at the change? (`m3diff predict --maps`, `m3diff eval`'s localization section)

{map_pointing_table(reports) or '(the reports have no localization section: predict with `--maps`)'}

Pointing: the map's peak falls inside a changed object's box (before and after images scored
separately, as RobustChangeCaptioning does); energy: the map's share of mass inside the boxes; AUROC:
how well the map ranks changed pixels above unchanged ones. Maps on the model's patch grid, padding
undone. Sanity check (maps of the same model with the MDP, then also the vision tower, re-initialised)
and how peaked the maps are on pairs where nothing changed:

{localization_notes(reports)}

### Does it name the change, and say what it became? (`m3diff eval`'s changes section)

{change_naming_table(reports) or '(the reports have no changes section: evaluate on generated references)'}

Recall: the true changes a clause names by object and kind of change; precision: the described changes
that are true; new value said: of the changes with a new value (a sign's word, a colour, a heading, a
pose, a count, grew or shrank), those whose recalling clause states it (docs/analysis.md).

### The shipping bar

{chr(10).join(bar_check(rep, twin_rep))}

### M3Diff (MDP), all metrics

{report_tables(rep)}
"""
    if twin_rep:
        text += f"""
### No-MDP twin, all metrics

{report_tables(twin_rep)}

The twin's weights are {'in `twin/`' if twin_shipped else 'not shipped (size limit); its report is'} {'and its report in ' if twin_shipped else ''}`reports/no_mdp.json`.
"""
    if notes:
        text += "\n## Notes\n\n" + notes + "\n"
    path = dest / "README.md"
    path.write_text(text)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--twin", type=Path, default=None)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--twin-report", type=Path, default=None)
    p.add_argument("--command", required=True)
    p.add_argument("--notes", default="")
    p.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "m3diff" / "weights")
    p.add_argument("--limit-mb", type=float, default=30.0)
    p.add_argument("--run-json", type=Path, default=None, help="the run's run.json (default: next to --model)")
    p.add_argument("--latency-pairs", type=Path, default=None, help="a dataset folder whose test pairs time describe()")
    args = p.parse_args(argv)

    dest = args.dest
    size = copy_model(args.model, dest)
    twin_shipped = False
    if args.twin is not None:
        twin_size = sum((args.twin / n).stat().st_size for n in MODEL_FILES if (args.twin / n).is_file())
        if (size + twin_size) / 1e6 <= args.limit_mb - 0.5:  # room for the card and the reports
            size += copy_model(args.twin, dest / "twin")
            twin_shipped = True
        else:
            shutil.rmtree(dest / "twin", ignore_errors=True)
    (dest / "reports").mkdir(exist_ok=True)
    rep = json.loads(args.report.read_text())
    shutil.copy2(args.report, dest / "reports" / "m3diff.json")
    twin_rep = None
    if args.twin_report:
        twin_rep = json.loads(args.twin_report.read_text())
        shutil.copy2(args.twin_report, dest / "reports" / "no_mdp.json")
    latency = None
    if args.latency_pairs:
        from m3diff.data.readers import read_dataset

        pairs = [(p.before, p.after) for p in read_dataset(args.latency_pairs, split="test").pairs[:5]]
        latency = describe_latency(dest, pairs)
    run_json = json.loads((args.run_json or args.model.parent / "run.json").read_text())
    steps = trained_steps(args.model.parent, run_json)
    write_card(dest, run_json, rep, twin_rep, args.command, latency, size / 1e6, twin_shipped, args.notes, steps,
               dest_run=args.model.parent)
    print(f"shipped {args.model} to {dest} ({size / 1e6:.1f} MB, twin {'in' if twin_shipped else 'not'} shipped); "
          f"describe latency {latency if latency is None else round(latency, 3)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
