"""Model cards (README.md): a trained run's, and the embedded default model's with its evaluation. The
tables come from ``analysis.render``, so a card shows every number as the app and the CLI do."""
from __future__ import annotations

import csv
import json
import re
from math import prod
from pathlib import Path

from safetensors import safe_open

from analysis import render
from analysis.report import Report
from m3diff.change_types import TYPE_IDS
from training.recipe import Recipe, RunRecord


def write_run_card(model_dir, run: RunRecord, steps: int, val_scores: dict, seconds: float) -> Path:
    """README.md in ``model_dir``: data, recipe, steps and the quick validation scores of a run."""
    r = run.recipe
    lines = [
        f"# {r.name}", "",
        "An M3Diff model (LLaVA-OneVision with the Multi-scale Differential Perception module) trained with "
        "`m3diff train`.", "",
        "## Training", "",
        f"- data: {', '.join(run.sources)} ({run.samples} samples)",
        f"- model: preset `{r.model.preset}` {json.dumps(r.model.config) if r.model.config else ''}",
        f"- LLM: {'LoRA rank %d, alpha %d' % (r.lora.rank, r.lora.alpha) if r.lora else 'fully trained (no LoRA: trained from scratch)'}",
        f"- AdamW, lr {r.optim.lr} (vision encoder {r.optim.lr_vision}), cosine with linear warm-up, "
        f"global batch {r.batch.global_batch}",
        f"- {steps} optimizer steps in {seconds / 60:.1f} min on {run.world_size} process(es)",
    ]
    total = run.total_steps
    if total and steps < total:
        lines.append(f"- **part-way**: step {steps} of a {total}-step schedule (the learning rate has not decayed "
                     "yet); `m3diff train --resume` continues the same schedule")
    if val_scores:
        lines += ["", "Validation (quick, no METEOR): " + ", ".join(f"{k} {v:.1f}" for k, v in val_scores.items())]
    path = Path(model_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_minutes(run_dir: Path) -> float | None:
    """CPU minutes the run's process spent (log.csv's cpu_s; the sum over resumed pieces)."""
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


def bar_lines(rep: Report, twin: Report | None) -> list[str]:
    """The embedded model's shipping bar, met or not: CIDEr-D overall and on each of the 12 types, the
    change-level scores, ahead of the no-MDP twin with a paired interval above 0, the grounding checks."""
    bd = rep.run.scores
    overall = bd.overall.scores["CIDEr-D"]
    lines = [f"- CIDEr-D overall {overall:.1f} (bar: >= 80; long-term >= 100): {'met' if overall >= 80 else 'NOT met'}"]
    low = {t: s.scores["CIDEr-D"] for t, s in bd.per_type.items() if s.scores["CIDEr-D"] is not None
           and s.scores["CIDEr-D"] < 30}
    missing = [t for t in TYPE_IDS if t not in bd.per_type]
    lines.append(f"- CIDEr-D >= 30 on every type: {'met' if not low and not missing else 'NOT met'}"
                 + (f" (below: {', '.join(f'{t} {v:.1f}' for t, v in low.items())})" if low else "")
                 + (f" (absent: {', '.join(missing)})" if missing else ""))
    changes = rep.run.changes
    if changes is not None:
        o = changes.summary.overall
        ok = (o.recall or 0) >= 0.6 and (o.precision or 0) >= 0.6
        lines.append(f"- change recall {100 * (o.recall or 0):.1f}% and precision {100 * (o.precision or 0):.1f}% "
                     f"(bar: >= 60% each): {'met' if ok else 'NOT met'}")
        v = o.value_recall
        lines.append(f"- the new value said for {100 * (v or 0):.1f}% of the changes that have one (bar: >= 50%): "
                     f"{'met' if (v or 0) >= 0.5 else 'NOT met'}")
    if twin is not None:
        t = twin.run.scores.overall.scores["CIDEr-D"]
        delta = render.paired_delta(rep)
        verdict = "met" if delta and delta[1] and delta[1][0] > 0 else "NOT met"
        shown = (f"paired difference {delta[0]:+.1f} [{delta[1][0]:+.1f}, {delta[1][1]:+.1f}]"
                 if delta and delta[1] else "no paired interval in the report")
        lines.append(f"- ahead of the no-MDP twin ({overall:.1f} vs {t:.1f}; {shown}): {verdict}")
    if rep.grounding is not None:
        for name, g in rep.grounding.models.items():
            lines.append(f"- grounding checks of `{name}`: {'passed' if not g.flags else 'NOT passed'}"
                         + ("" if not g.flags else f" ({'; '.join(g.flags)})"))
    return lines


def reader_line(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    if not config.get("change_reader"):
        return "none: the caption is written from the image tokens alone, as in the paper"
    reader = config["change_reader"]
    shapes = (f"; a crop reader of each object's kind, heading and pose ({reader['shape_crop']}-px crops, "
              "`m3diff reader shapes`)") if reader.get("shape_crop") else ""
    return ("ours (`m3diff/reader.py`): reads each change from the pixels as facts — type, the object before "
            "and after, the new value, a box in each image — trained alone on the generator's true changes "
            f"(`m3diff reader train`){shapes}; a change counts as read from confidence {reader.get('threshold', 0.5)}"
            f"{' (calibrated: `m3diff reader calibrate`, reader_calibration.json)' if (model_dir / 'reader_calibration.json').is_file() else ''}; "
            "the facts follow the instruction as text, which the LLM learned to copy (`data.facts` in the recipe)")


def grounding_line(recipe: Recipe) -> str:
    g = recipe.grounding
    if g is None and recipe.model.init_from:
        return "none in this stage (caption loss only); the model it started from: see the notes below"
    if g is None:
        return "none: caption loss only"
    return (f"ours, not the paper's: auxiliary losses on the features the projector reads (per patch: object kind "
            f"/ colour / size, changed patches, change type; per pair: the change types and, from each image's mean "
            f"feature, the changed objects' kinds, colours, sizes and places), weight {g.weight}, and "
            f"scene-description samples ({g.scene_share:.0%} of the caption samples) — `training/auxiliary.py`")


def write_embedded_card(dest: Path, run: RunRecord, rep: Report, twin_rep: Report | None, command: str,
                        latency: float | None, size_mb: float, twin_shipped: bool, notes: str = "",
                        steps: int | None = None, dest_run: Path | None = None,
                        stage_cpu_minutes: float | None = None) -> Path:
    """The embedded model's README.md: what it is, how it was made, and its evaluation (its report and
    its twin's, ``analysis.render``'s tables). ``stage_cpu_minutes``: the stage's CPU minutes as measured
    where it trained, for a model shipped again without its run folder (else ``dest_run``'s log.csv)."""
    r = run.recipe
    total = run.total_steps
    steps = total if steps is None else steps
    part = "" if steps >= total else (f" — part-way: stopped at step {steps:,} of the {total:,}-step schedule "
                                      "(`--stop-at`); `--resume` continues it")
    m = r.model
    blocks = result_blocks(rep, twin_rep)
    meta = rep.meta
    text = f"""# m3diff embedded default model

The model `DiffCaptioner.from_pretrained()` loads when no other model is given: a small M3Diff
(LLaVA-OneVision architecture with the Multi-scale Differential Perception module, the same
`M3DiffForConditionalGeneration` class as the 7B) trained **from scratch** on generated pairs
(`m3diff synth`, both domains: `render` 3D scenes and `photo` composites, all 12 change types).
It is a demonstration model for the app and the CLI on a CPU: it knows the synthetic world only,
not real photographs.

| | |
|---|---|
| architecture | preset `{m.preset}` {json.dumps(m.config) if m.config else ''}: {architecture(dest)} |
| parameters | {parameter_count(dest) / 1e6:.2f} M |
| tokenizer | byte-level BPE, vocabulary {m.tokenizer_vocab_size}, trained on the training captions |
| weights | {size_mb:.1f} MB safetensors ({r.save_dtype}) |
| training data | {run.samples:,} samples ({'every reference caption of' if r.data.every_caption else 'one caption per'} the train split of {', '.join(run.sources)}) |
| recipe | `{r.name}`: {steps:,} steps × global batch {r.batch.global_batch}, AdamW lr {r.optim.lr} ({f"frozen: {', '.join(m.frozen)}" if m.frozen else f"vision encoder {r.optim.lr_vision}"}), cosine with {r.optim.warmup_steps} warm-up steps, {run.world_size} process{part} |
| LLM training | fully trained, **no LoRA**: LoRA (rank 128, alpha 256 in `paper-7b.yaml`) is the paper's way to adapt a *pretrained* 7B LLM; there is nothing pretrained here |
| grounded training | {grounding_line(r)} |
| change reader | {reader_line(dest)} |
| training time | {f'{cpu:.0f} CPU-minutes (one thread){" for this stage; every stage: the notes below" if m.init_from else ""}' if (cpu := stage_cpu_minutes or cpu_minutes(dest_run)) else 'not recorded'} |
| describe latency | {f'{latency:.2f} s per pair (median on the 2-core development CPU, with the MDP trace)' if latency else 'not measured'} |

## Reproduce

```
{command}
```

## Evaluation

Test split: {meta.references} (split `{meta.split or 'test'}`), {rep.run.scores.overall.n} pairs, generated
with a seed not used for training. Greedy decoding. Scores ×100 (pycocoevalcap: PTB tokenisation, CIDEr-D),
every slice re-scored as its own corpus; [95% bootstrap interval]. SPICE is not available offline.

### CIDEr-D, M3Diff beside the no-MDP twin (same data, recipe and steps, `use_mdp=false`)

{marked('cider-by-slice', blocks)}

### Does it read its images? (grounding checks, `m3diff probe`)

{marked('grounding', blocks)}

Distinct captions: share of test pairs whose caption no other pair got. Answer loss: per-token loss of
each pair's first reference; random swap / same-scene swap: how much higher it is with the images of a
random other pair / of another pair of the same scene (the honest blind gap). Identical pairs: the
before image given twice.

### Do its maps point at the change? (`m3diff predict --maps`, `m3diff eval`'s localization section)

{marked('maps', blocks)}

Pointing: the map's peak falls inside a changed object's box (before and after images scored
separately, as RobustChangeCaptioning does); energy: the map's share of mass inside the boxes; AUROC:
how well the map ranks changed pixels above unchanged ones. Maps on the model's patch grid, padding
undone. Sanity check (maps of the same model with the MDP, then also the vision tower, re-initialised)
and how peaked the maps are on pairs where nothing changed:

{marked('map-notes', blocks)}

### What did its change reader read? (`m3diff eval`'s detection section)

{marked('detection', blocks)}

Per change type: the true changes, the changes the reader read, recall (true changes of a type it read
as there), precision (read changes that are true), the new value and the object read right on the
matched changes, and how often the read box's centre lies in the true box (per image).

### Does it name the change, and say what it became? (`m3diff eval`'s changes section)

{marked('changes', blocks)}

Recall: the true changes a clause names by object and kind of change; precision: the described changes
that are true; new value said: of the changes with a new value (a sign's word, a colour, a heading, a
pose, a count, grew or shrank), those whose recalling clause states it (docs/analysis.md).

### The shipping bar

{marked('bar', blocks)}

### M3Diff (MDP), all metrics

{marked('scores-m3diff', blocks)}
"""
    if twin_rep:
        text += f"""
### No-MDP twin, all metrics

{marked('scores-twin', blocks)}

The twin's weights are {'in `twin/`' if twin_shipped else 'not shipped (size limit); its report is'} {'and its report in ' if twin_shipped else ''}`reports/no_mdp.json`.
"""
    if notes:
        text += "\n## Notes\n\n" + notes + "\n"
    path = dest / "README.md"
    path.write_text(text)
    return path




# ------------------------------------------------------------------------------------ the results blocks
# Every results table of the card, the README and docs/training.md sits between two markers and is made
# from the shipped reports by ``result_blocks``; ``scripts/results_tables.py`` rewrites them, and a test
# fails when a document's block differs from what the reports say.
BLOCK = re.compile(r"<!-- results:(?P<name>[\w-]+) -->\n(?:(?P<body>.*?)\n)?<!-- /results:(?P=name) -->", re.S)
SHIPPED_NAMES = ("M3Diff (MDP)", "no-MDP twin")


def result_blocks(rep: Report, twin_rep: Report | None) -> dict[str, str]:
    """Block name -> its Markdown, from the MDP model's report and its twin's."""
    reports = {SHIPPED_NAMES[0]: rep} | ({SHIPPED_NAMES[1]: twin_rep} if twin_rep else {})
    blocks = {
        "headline": render.headline_md(reports),
        "cider-by-slice": render.comparison_md(reports),
        "grounding": render.grounding_md(rep),
        "maps": render.map_pointing_md(reports) or "(the reports have no localization section: predict with `--maps`)",
        "map-notes": render.localization_notes(reports),
        "changes": render.change_naming_md(reports) or "(the reports have no changes section: evaluate on generated references)",
        "detection": render.change_detection_md(reports) or "(the reports have no detection section: the models have no change reader)",
        "bar": "\n".join(bar_lines(rep, twin_rep)),
        "scores-m3diff": render.score_tables_md(rep),
    }
    if twin_rep is not None:
        blocks["scores-twin"] = render.score_tables_md(twin_rep)
    return blocks


def marked(name: str, blocks: dict[str, str]) -> str:
    return f"<!-- results:{name} -->\n{blocks[name]}\n<!-- /results:{name} -->"


def refresh_blocks(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with each marked block replaced by its current Markdown, and the names of the blocks that
    changed. A block whose name ``blocks`` does not know is an error, not left stale."""
    changed = []

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in blocks:
            raise KeyError(f"unknown results block {name!r} (known: {', '.join(blocks)})")
        if (m["body"] or "") != blocks[name]:
            changed.append(name)
        return marked(name, blocks)

    return BLOCK.sub(fill, text), changed
