"""Package the embedded default model: copy a trained run into m3diff/weights/ with its reports and card.

    python -m training.embedded --model runs/emb-mdp/model --twin runs/emb-nomdp/model \
        --report reports/mdp/report.json --twin-report reports/nomdp/report.json \
        --command "m3diff synth ... && m3diff train ..." [--dest m3diff/weights]

Reports are `m3diff eval --out DIR` report.json files; they go to
``DEST/reports/{m3diff,no_mdp}.json`` for the app's dashboard. The twin's weights go to ``DEST/twin/``
only when both models together stay within ``--limit-mb``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from analysis.report import read_report
from m3diff.data.readers import read_dataset
from m3diff.pipeline import DiffCaptioner
from training.card import write_embedded_card
from training.recipe import RunRecord

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "processor_config.json", "special_tokens_map.json",
               "reader_calibration.json")


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
    torch.set_num_threads(2)
    captioner = DiffCaptioner.from_pretrained(model_dir)
    captioner.describe(*pairs[0])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        captioner.describe(*pairs[i % len(pairs)])
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def trained_steps(run_dir: Path, run: RunRecord) -> int:
    """The step the run's model was saved at: its latest checkpoint (a run stopped part-way with
    --stop-at), else the whole schedule."""
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        return int(latest.read_text().strip().removeprefix("step-"))
    return run.total_steps


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
    p.add_argument("--stage-cpu-minutes", type=float, default=None, metavar="M",
                   help="the stage's CPU minutes as measured where it trained, for a model shipped again "
                        "without its run folder (e.g. with a new reader); default: the run's log.csv")
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
    rep = read_report(args.report).report
    shutil.copy2(args.report, dest / "reports" / "m3diff.json")
    twin_rep = None
    if args.twin_report:
        twin_rep = read_report(args.twin_report).report
        shutil.copy2(args.twin_report, dest / "reports" / "no_mdp.json")
    latency = None
    if args.latency_pairs:
        pairs = [(p.before, p.after) for p in read_dataset(args.latency_pairs, split="test").pairs[:5]]
        latency = describe_latency(dest, pairs)
    run = RunRecord.read(args.run_json or args.model.parent / "run.json")
    steps = trained_steps(args.model.parent, run)
    write_embedded_card(dest, run, rep, twin_rep, args.command, latency, size / 1e6, twin_shipped, args.notes, steps,
               dest_run=args.model.parent, stage_cpu_minutes=args.stage_cpu_minutes)
    print(f"shipped {args.model} to {dest} ({size / 1e6:.1f} MB, twin {'in' if twin_shipped else 'not'} shipped); "
          f"describe latency {latency if latency is None else round(latency, 3)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
