"""`m3diff predict`, `m3diff eval`, `m3diff doctor`. Only argparse/stdlib at import time."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

OUTSIDE_HELP = ("read image paths that lead outside the dataset folder (absolute paths, '..', symlinks out); "
                "refused by default")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score predictions: COCO metrics overall, per change type, domain and source",
        description="Score predictions against references with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, "
                    "SPICE when its jars are present), x100 like the papers. Every change type, domain and source "
                    "dataset is re-scored as its own corpus, with n and bootstrap 95% intervals. On generated "
                    "references (m3diff synth) also: which true changes each caption names and whether it says "
                    "their new value (per type and per pair), where predict --maps' maps point, and, for a model "
                    "with a change reader, which true changes it read (detection recall / precision per type). Writes "
                    "report.json, scores.csv, table.tex (the paper's Table 3 layout) and report.html to --out.",
        epilog="examples:\n  m3diff eval --pred runs/pred.json --refs data/synth --split test --out runs/eval\n"
               "  m3diff eval --pred base=a.json --pred mdp=b.json --refs data/synth --split test   (deltas vs base)\n"
               "  m3diff eval --pred results.json --refs captions_test.json   (COCO results + ground truth)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", action="append", required=True, metavar="[NAME=]FILE",
                   help="predictions: [{id, caption}], COCO results [{image_id, caption}] or {id: caption}; "
                        "repeat to compare runs (the first is the base)")
    p.add_argument("--refs", required=True, metavar="PATH",
                   help="references: a dataset folder or file in any layout m3diff reads, or a COCO caption "
                        "ground-truth file {images, annotations}")
    p.add_argument("--format", default=None, help="the references' dataset format (default: detected)")
    p.add_argument("--split", default=None, help="the split to score (train, val, test)")
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json, scores.csv, table.tex, report.html here")
    p.add_argument("--json", action="store_true", help="print report.json's headline numbers as JSON instead of the table")
    p.add_argument("--on-mismatch", choices=("error", "intersect"), default="error",
                   help="ids in only one of predictions/references: stop (default) or score the ids in both")
    p.add_argument("--on-empty", choices=("error", "score-as-empty"), default="error",
                   help="empty predictions: stop (default) or score them as empty strings (empty references are "
                        "always kept and scored, as pycocoevalcap scores them)")
    p.add_argument("--on-duplicate", choices=("error", "first", "last"), default="error",
                   help="an id predicted twice: stop (default) or keep its first/last caption")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples per slice for the 95%% intervals (0: no intervals; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--worst", type=int, default=10, metavar="K", help="worst pairs listed per slice (default 10)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the ~10 s JVM start)")
    p.add_argument("--model", default="", help="the model's name, recorded in the report's metadata")
    p.add_argument("--grounding", default=None, metavar="FILE.json",
                   help="grounding checks written by `m3diff probe`, added to report.json as its 'grounding' section")
    p.add_argument("--allow-outside-root", action="store_true", help=OUTSIDE_HELP)
    p.set_defaults(handler=run_eval)

    p = subparsers.add_parser(
        "predict", help="caption every pair of a dataset split with a model (resumable)",
        description="Describe every pair of a dataset split and write [{id, caption}] to --out. Resumable: ids "
                    "already in --out are skipped; the file is rewritten atomically after every batch.")
    p.add_argument("--data", required=True, metavar="PATH", help="a dataset folder or file (any layout m3diff reads)")
    p.add_argument("--format", default=None, help="its format (default: detected)")
    p.add_argument("--split", default="test", help="the split (default: test)")
    p.add_argument("--out", required=True, metavar="PRED.json", help="the predictions file to write (or resume)")
    p.add_argument("--model", default=None, help="a model directory or hub id (default: the embedded model)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--min-end-probability", type=float, default=None, metavar="P",
                   help="end a caption only where the model gives its end at least P (e.g. 0.5); default: plain "
                        "greedy, which ends multi-change captions early (docs/analysis.md, 'When a caption ends')")
    p.add_argument("--joint-facts", action="store_true",
                   help="with a change reader, give the language model every change read in one prompt (as it was "
                        "trained); default: one prompt per change, the answers joined, which mixes objects up less")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs (for a quick look)")
    p.add_argument("--maps", action="store_true",
                   help="also store each pair's evidence maps (float16 on the patch grid: the MDP's maps and "
                        "feature_difference) and a sanity check of them, for `m3diff eval`'s localization section")
    p.add_argument("--attribution", action="store_true",
                   help="with --maps: also store a captum map of each pair (Saliency of log p(caption | images), "
                        "map 'saliency_caption'); one backward pass per pair")
    p.add_argument("--sanity-pairs", type=int, default=8, metavar="N",
                   help="with --maps: pairs the maps' sanity check (weights re-initialised) runs on; 0 skips it "
                        "(default 8)")
    p.add_argument("--restart", action="store_true",
                   help="replace an existing --out instead of resuming it (needed when its data or images changed)")
    p.add_argument("--allow-outside-root", action="store_true", help=OUTSIDE_HELP)
    p.set_defaults(handler=run_predict)

    p = subparsers.add_parser(
        "probe", help="does a model read its images? distinct captions, swapped-image losses, identical pairs",
        description="Grounding checks of one or more models on a dataset split: the share of distinct captions; "
                    "the answer loss of each reference with its own images, with a random other pair's images and "
                    "with the images of another pair of the same scene (the honest blind gap); and what the model "
                    "says for identical before/after images. Writes grounding.json; `m3diff eval --grounding` "
                    "adds it to report.json.",
        epilog="examples:\n  m3diff probe --model m3diff=runs/m/model --model no_mdp=runs/t/model --data data/synth "
               "--split test --pairs 300 --out runs/grounding.json\n"
               "  m3diff probe --knockout --data data/synth --split test --pairs 200 --out runs/knockout.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None, metavar="[NAME=]MODEL",
                   help="a model directory, hub id or 'embedded' (default: embedded); repeat for several")
    p.add_argument("--data", required=True, metavar="PATH", help="a dataset folder or file (any layout m3diff reads)")
    p.add_argument("--format", default=None, help="its format (default: detected)")
    p.add_argument("--split", default="test", help="the split (default: test)")
    p.add_argument("--pairs", type=int, default=300, help="pairs checked (the first N of the split; default 300)")
    p.add_argument("--identical", type=int, default=100,
                   help="pairs whose before image is given twice (default 100; 0: skip)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the random swaps")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the checks here")
    p.add_argument("--knockout", action="store_true",
                   help="instead of the grounding checks: per MDP scale, the change in CIDEr-D (overall and per change "
                        "type) and in change recall per type when that scale's Score is set to 0 (the others "
                        "renormalised), with paired bootstrap intervals; --out writes the study for the Dashboard")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="with --knockout: resamples (default 1000)")
    p.set_defaults(handler=run_probe)

    p = subparsers.add_parser("doctor", help="say which metrics can run here (Java, METEOR, SPICE)",
                              description="Check Java, the PTB tokenizer, METEOR and SPICE without downloading anything.")
    p.add_argument("--run", action="store_true", help="also score one tiny example end to end")
    p.set_defaults(handler=run_doctor)


def _split_pred(spec: str) -> tuple[str, Path]:
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, Path(path)
    return Path(spec).stem, Path(spec)


def run_eval(args) -> int:
    from analysis.breakdown import BreakdownConfig
    from analysis.evaluate import Policies, evaluate
    from analysis.inputs import InputError
    from analysis.render import detection_lines, evidence_lines, text_table, write_files
    from analysis.report import ReportError, read_grounding
    from m3diff.cli import CLIError

    specs = [_split_pred(s) for s in args.pred]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise CLIError(f"two --pred runs share a name ({', '.join(names)}); name them NAME=FILE")
    grounding = None
    if args.grounding:
        try:
            grounding = read_grounding(args.grounding)
        except ReportError as exc:
            raise CLIError(f"--grounding {exc}; write it with `m3diff probe`") from None
    from tqdm.auto import tqdm

    with tqdm(desc="scoring", unit="slice", leave=False, disable=None) as bar:
        try:
            report = evaluate(dict(specs), args.refs, format=args.format, split=args.split,
                              policies=Policies(args.on_mismatch, args.on_empty, args.on_duplicate),
                              bootstrap=BreakdownConfig(bootstrap=max(0, args.bootstrap), seed=args.seed,
                                                        worst_k=args.worst),
                              meteor=not args.no_meteor, grounding=grounding, model=args.model,
                              allow_outside=args.allow_outside_root,
                              warn=lambda line: print(f"warning: {line}", file=sys.stderr),
                              progress=lambda run, kind: bar.update(1))
        except InputError as exc:
            raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(report.headline_json(), indent=1))
    else:
        print(text_table(report))
        for line in evidence_lines(report) + detection_lines(report):
            print(line)
        for m, why in report.meta.unavailable.items():
            print(f"{m}: n/a — {why}" if m == "SPICE" else f"{m}: n/a", file=sys.stderr)
    if args.out:
        paths = write_files(report, Path(args.out))
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def run_doctor(args) -> int:
    from analysis.metrics import SPICE_JARS, check_metrics

    avail = check_metrics()
    java = shutil.which("java")
    version = ""
    if java:
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
            version = (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else ""
        except (OSError, subprocess.TimeoutExpired):
            version = "?"
    ok = lambda b: "ok " if b else "n/a"  # noqa: E731
    print(f"[{ok(avail.java)}] Java            {java or 'not found'} {version}")
    print(f"[{ok(avail.java)}] PTB tokenizer, BLEU-1..4, ROUGE-L, CIDEr-D")
    print(f"[{ok(avail.meteor)}] METEOR 1.5")
    print(f"[{ok(avail.spice)}] SPICE" + ("" if avail.spice else f"   (its jars go into {SPICE_JARS[0].parent})"))
    for note in avail.notes:
        print(f"      {note}")
    if args.run and avail.java:
        from analysis.metrics import score_captions

        s = score_captions({"1": "a red cube moved to the left"}, {"1": ["the red cube moved left", "a red cube was moved"]})
        print("      example: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items() if v is not None))
    return 0 if avail.java else 1


def run_predict(args) -> int:
    from analysis.predict import PredictOptions, ResumeError, pending, predict_pairs, start_run, wants_sanity  # lazy: numpy, PIL
    from m3diff.cli import CLIError
    from m3diff.describing import GenerationSettings

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    p = args.min_end_probability
    if p is not None and not 0.0 < p <= 1.0:
        raise CLIError(f"--min-end-probability must be in (0, 1], got {p}")
    try:
        options = PredictOptions(batch_size=args.batch_size, maps=args.maps, attribution=args.attribution,
                                 sanity_pairs=args.sanity_pairs,
                                 settings=GenerationSettings(max_new_tokens=args.max_new_tokens, min_end_probability=p,
                                                             each_change=not args.joint_facts))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.out)
    pairs = _read_pairs(args, CLIError, allow_outside=args.allow_outside_root)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    if not pairs:
        raise CLIError(f"{args.data}: split {args.split!r} holds no pairs; nothing to predict (check --split and --data)")
    try:
        run = start_run(out, pairs, model=args.model or "embedded", data=str(args.data), split=args.split,
                        min_end_probability=p, joint_facts=args.joint_facts, restart=args.restart)
    except ResumeError as exc:
        raise CLIError(str(exc)) from None
    todo = pending(run, pairs, options)
    if not todo and not wants_sanity(run, options):
        print(f"{out}: all {len(pairs)} pairs already predicted", file=sys.stderr)
        return 0

    from tqdm.auto import tqdm  # lazy: with the model below

    captioner = _load_captioner(args.model, CLIError)
    captioner.use_recommended_threads()  # this command owns its process
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="describing", unit="pair") as bar:
        outcome = predict_pairs(captioner, run, pairs, options, progress=bar.update)
    if run.sanity is not None and options.sanity_pairs:
        for name, verdict in run.sanity.verdicts.items():
            print(f"  maps sanity check, {name}: {verdict}", file=sys.stderr)
    if outcome.unexplained:
        print(f"warning: {len(outcome.unexplained)} caption(s) could not be attributed (no words, or they tokenize "
              f"differently after the prompt; first {outcome.unexplained[0]!r}): those pairs have no saliency_caption "
              "map", file=sys.stderr)
    with_ = [w for w, on in (("maps", args.maps), ("the changes its reader read", bool(run.changes))) if on]
    print(f"wrote {len(run.captions)} predictions to {out}" + (" with " + " and ".join(with_) if with_ else ""),
          file=sys.stderr)
    if outcome.failed:
        first = next(iter(outcome.failed))
        raise CLIError(f"{len(outcome.failed)} pair(s) skipped because an image could not be read (id {first!r}: "
                       f"{outcome.failed[first]}); the other predictions are in {out}: fix or remove those images and "
                       "run the same command again to finish")
    return 0


def _read_pairs(args, CLIError, allow_outside: bool = False) -> list:
    from m3diff.data.readers import read_dataset  # lazy: the CLI imports only argparse at start

    try:
        dataset = read_dataset(args.data, format=args.format, split=args.split, images="require",
                               allow_outside=allow_outside)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    for note in dataset.notes():
        print(f"warning: {note}", file=sys.stderr)
    return dataset.pairs


def _load_captioner(model: str | None, CLIError):
    from m3diff.pipeline import DiffCaptioner, ModelLoadError  # lazy: torch

    try:
        return DiffCaptioner.from_pretrained(model)
    except ModelLoadError as exc:
        raise CLIError(str(exc)) from None


def run_knockout(args) -> int:
    from analysis.probe import knockout_study
    from analysis.render import knockout_table
    from analysis.report import atomic_write
    from m3diff.cli import CLIError
    from m3diff.describing import GenerationSettings

    specs = [_split_model(m) for m in (args.model or ["embedded"])]
    if len(specs) != 1:
        raise CLIError("--knockout studies one model; give one --model")
    if args.bootstrap < 0 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise CLIError("--bootstrap must be >= 0, --batch-size and --max-new-tokens >= 1")
    pairs = _read_pairs(args, CLIError)[: args.pairs]
    if len(pairs) < 2:
        raise CLIError(f"{args.data}: split {args.split!r} has {len(pairs)} pair(s); the study needs at least 2")
    name, model = specs[0]
    captioner = _load_captioner(model, CLIError)
    if not captioner.uses_mdp or len(captioner.info.mdp_layers) < 2:
        raise CLIError(f"{model}: --knockout needs an M3Diff model with at least two MDP scales")
    from tqdm.auto import tqdm

    runs = 1 + len(captioner.info.mdp_layers)
    with tqdm(total=runs * len(pairs), desc=f"knockout {name}", unit="pair") as bar:
        study = knockout_study(captioner, pairs, model_name=name, batch_size=args.batch_size,
                               settings=GenerationSettings(max_new_tokens=args.max_new_tokens),
                               bootstrap=args.bootstrap, seed=args.seed, progress=bar.update)
    print(knockout_table(study).to_string(index=False))
    if args.out:
        atomic_write(Path(args.out), json.dumps(study.to_json(), indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def run_probe(args) -> int:
    if getattr(args, "knockout", False):
        return run_knockout(args)
    from analysis.grounding import check_grounding
    from analysis.report import GroundingSection, atomic_write, grounding_json
    from m3diff.cli import CLIError

    if args.pairs < 2:
        raise CLIError(f"--pairs must be at least 2, got {args.pairs}")
    if args.identical < 0 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise CLIError("--identical must be >= 0, --batch-size and --max-new-tokens >= 1")
    specs = [_split_model(m) for m in (args.model or ["embedded"])]
    if len({n for n, _ in specs}) != len(specs):
        raise CLIError("two --model entries share a name; name them NAME=MODEL")
    pairs = _read_pairs(args, CLIError)[: args.pairs]
    if len(pairs) < 2:
        raise CLIError(f"{args.data}: split {args.split!r} has {len(pairs)} pair(s); the checks need at least 2")

    facts = _generated_facts(Path(args.data), pairs)
    from tqdm.auto import tqdm

    results = {}
    for name, model in specs:
        captioner = _load_captioner(model, CLIError)
        total = 4 * len(pairs) + min(args.identical, len(pairs))
        with tqdm(total=total, desc=f"probing {name}", unit="pair") as bar:
            checks = check_grounding(captioner, pairs, model_name=name, identical=args.identical,
                                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                     progress=lambda what, n: bar.update(n), facts=facts)
        results[name] = checks
        gap = checks.same_scene_gap
        ceiling = "" if checks.distinct_ceiling is None else f" (ceiling {checks.distinct_ceiling:.1%})"
        print(f"{name}: distinct captions {checks.distinct_share:.1%}{ceiling} | answer loss {checks.loss_true:.3f}, "
              f"random swap {checks.random_gap:+.1%}, same-scene swap "
              f"{'n/a' if gap is None else f'{gap:+.1%}'} | identical pairs: 'no change' "
              f"{'n/a' if checks.no_change_share is None else f'{checks.no_change_share:.0%}'}")
        for flag in checks.flags:
            print(f"  FLAG {flag}")
    doc = grounding_json(GroundingSection(str(args.data), args.split, len(pairs), results))
    if args.out:
        atomic_write(Path(args.out), json.dumps(doc, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _synth_settings(data: Path, without: str) -> dict | None:
    """The generator settings of a folder made by ``m3diff synth`` (its ``synth_config.json``); None
    for other data, and with a warning saying what is lost (``without``) when the file is unreadable."""
    config = data / "synth_config.json" if data.is_dir() else None
    if config is None or not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"warning: {config} unreadable ({exc}); {without}", file=sys.stderr)
        return None


def _generated_facts(data: Path, pairs) -> list[tuple] | None:
    """What each pair's references can say, where ``data`` was made by ``m3diff synth`` and every pair
    is one of its pairs; else None (no distinct-captions ceiling to report)."""
    settings = _synth_settings(data, "no distinct-captions ceiling")
    if settings is None:
        return None
    from m3diff.data.synth.generator import SynthConfig, pair_facts

    try:
        return pair_facts(SynthConfig.from_dict(settings), [p.id for p in pairs])
    except ValueError as exc:
        print(f"warning: {data / 'synth_config.json'}: {exc}; no distinct-captions ceiling", file=sys.stderr)
        return None


def _split_model(spec: str) -> tuple[str, str]:
    if "=" in spec and not Path(spec).exists():
        name, model = spec.split("=", 1)
        return name, model
    return (Path(spec).name or spec), spec
