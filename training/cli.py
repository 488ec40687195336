"""`m3diff train`: the single-stage recipe on accelerate (same command under `accelerate launch`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an M3Diff model from a recipe",
        description="Train M3Diff as the recipe says (loss on answer tokens only), with checkpoints that resume "
        "exactly, CSV + TensorBoard logs, evaluation on the val split, and at the end the merged model, its "
        "processor and a model card in OUT/model. Run it under `accelerate launch` for several processes/GPUs.",
    )
    p.add_argument("--recipe", required=True, metavar="R",
                   help="a recipe YAML file, or the name of a bundled one ("
                        + ", ".join(sorted(f.stem for f in (Path(__file__).parent / "recipes").glob("*.yaml"))) + ")")
    p.add_argument("--data", nargs="+", default=[], metavar="D",
                   help="training data: DIR[:FORMAT][:WEIGHT] (its train split) or FILE.jsonl from `m3diff data mix`; "
                        "replaces the recipe's data.sources")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, logs, model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe value, e.g. --set optim.lr=1e-3 --set model.config.use_mdp=false")
    p.add_argument("--max-steps", type=int, default=None, help="replace the recipe's step count")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--stop-at", type=int, default=None, metavar="N",
                   help="stop after step N (checkpointed) and save the model as it is then in OUT/model: run a "
                        "long schedule in pieces and evaluate part-way; --resume continues the same schedule")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                   help="when the process's resident memory passes GB, checkpoint and continue the same schedule in "
                        "a fresh process (several processes: checkpoint and stop; --resume continues). Long CPU runs "
                        "have at times started to grow by ~50 MB a step and stalled at the machine's limit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)
    _register_reader(subparsers)


def _register_reader(subparsers) -> None:
    p = subparsers.add_parser(
        "reader", help="train a change reader and put it into a model",
        description="The change reader reads each change of a pair (type, object before and after, new value, "
        "boxes) from the pixels; a model that has one gives its language model those facts as text and lists "
        "them beside the caption (m3diff/reader.py). `train` fits one on a generated data set's true changes; "
        "`shapes` adds a crop reader of each object's kind, heading and pose; `attach` puts a reader into a model "
        "trained with `data.facts: true`; `calibrate` chooses its threshold on pairs it never trained on.")
    sub = p.add_subparsers(dest="reader_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a change reader on generated pairs (their records' true changes)")
    t.add_argument("--data", required=True, metavar="DIR", help="a folder written by `m3diff synth` (its train split)")
    t.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoint.pt, log.jsonl, reader.safetensors")
    t.add_argument("--steps", type=int, default=5000, help="optimizer steps (default 5000: ~1 CPU-hour at batch 32)")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a run beside another)")
    t.add_argument("--from", dest="start", metavar="R", default=None,
                   help="go on training this reader (a `reader train` / `reader shapes` folder, or a model with a "
                        "reader; embedded: the shipped one) on a schedule of its own; its shape reader stays as it is")
    t.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    t.add_argument("--stop-at", type=int, default=None, metavar="N", help="stop after step N (checkpointed)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler=_reader_train)
    h = sub.add_parser(
        "shapes", help="add a shape reader (kind, heading, pose from a crop of each object) to a trained reader",
        description="Adds m3diff.reader.ShapeReader to a trained reader and trains it alone (the rest of the reader "
        "unchanged) on every object drawn in a generated data set's train split, from a square crop around its "
        "jittered true box; writes the whole reader to --out, ready for `attach`.")
    h.add_argument("--data", required=True, metavar="DIR", help="a folder written by `m3diff synth` (its train split)")
    h.add_argument("--reader", required=True, metavar="R",
                   help="the --out folder of `m3diff reader train`, or a model with a reader (embedded: the shipped one)")
    h.add_argument("--out", required=True, metavar="DIR", help="run folder: shapes-checkpoint.pt, shapes-log.jsonl, the reader")
    h.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000: ~20 CPU-minutes at batch 16)")
    h.add_argument("--batch", type=int, default=16, help="pairs per step; every object in them is a crop")
    h.add_argument("--lr", type=float, default=2e-3)
    h.add_argument("--crop", type=int, default=32, choices=(16, 24, 32, 40, 48), help="crop side in pixels (default 32)")
    h.add_argument("--from-predicted", action="store_true",
                   help="also crop each changed object at the box the reader predicts for it, as at inference "
                        "(give --reader a reader that has a shape reader to go on training it)")
    h.add_argument("--words", action="store_true",
                   help="train the sign word reader on too (with --from-predicted: also at the changed signs' predicted boxes)")
    h.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a run beside another)")
    h.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    h.set_defaults(handler=_reader_shapes)
    a = sub.add_parser("attach", help="put a trained reader into a captioning model")
    a.add_argument("--model", required=True, metavar="M", help="a model folder, or embedded / embedded-twin")
    a.add_argument("--reader", required=True, metavar="DIR", help="the --out folder of `m3diff reader train`")
    a.add_argument("--out", required=True, metavar="DIR", help="where the model with its reader is saved")
    a.set_defaults(handler=_reader_attach)
    c = sub.add_parser(
        "calibrate", help="choose the reader's threshold on pairs it never trained on",
        description="Reads every pair of a generated split at every threshold from 0.05 to 0.95 and keeps the "
        "one with the best F1 of the changes a caption says (the camera or light change only when nothing else "
        "changed), a read change right when its type and the object it touched (kind, colour) are; writes it into the model's config and the curve into reader_calibration.json. Use a split "
        "of a seed used neither for training nor for the test split.")
    c.add_argument("--model", required=True, metavar="M", help="a model folder with a reader, or embedded / embedded-twin")
    c.add_argument("--data", required=True, metavar="DIR", help="a folder written by `m3diff synth`")
    c.add_argument("--split", default="val", help="its split to read (default: val)")
    c.add_argument("--pairs", type=int, default=None, metavar="N", help="read only its first N pairs")
    c.add_argument("--out", metavar="DIR", help="save a calibrated copy here (default: write into --model)")
    c.set_defaults(handler=_reader_calibrate)


def _reader_train(args: argparse.Namespace) -> int:

    from m3diff.cli import CLIError
    from training.reader import ReaderTraining, train_reader

    data = Path(args.data)
    if not (data / "train.json").is_file():
        raise CLIError(f"{data} holds no train.json: give a folder written by `m3diff synth`")
    try:
        out = train_reader(data, Path(args.out), ReaderTraining(steps=args.steps, batch=args.batch, lr=args.lr,
                                                                threads=args.threads),
                           resume=args.resume, stop_at=args.stop_at, progress=not args.quiet, start=args.start)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    print(f"reader in {out}")
    return 0


def _reader_shapes(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError
    from training.reader import train_shapes

    data = Path(args.data)
    if not (data / "train.json").is_file():
        raise CLIError(f"{data} holds no train.json: give a folder written by `m3diff synth`")
    if args.steps < 1 or args.batch < 1:
        raise CLIError("--steps and --batch must be at least 1")
    try:
        out = train_shapes(data, args.reader, Path(args.out), steps=args.steps, batch=args.batch, lr=args.lr,
                           crop=args.crop, threads=args.threads, resume=args.resume, predicted=args.from_predicted,
                           words=args.words, progress=not args.quiet)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    print(f"reader with its shape reader in {out}")
    return 0


def _reader_attach(args: argparse.Namespace) -> int:

    from m3diff.cli import CLIError
    from training.reader import attach_reader

    reader = Path(args.reader)
    if not (reader / "reader.safetensors").is_file():
        raise CLIError(f"{reader} holds no reader.safetensors: train one with `m3diff reader train`")
    out = attach_reader(args.model, reader, Path(args.out))
    print(f"model with its change reader in {out}")
    return 0


def resume_argv(args: argparse.Namespace) -> list[str]:
    """The command line that continues this run where its last checkpoint left it."""
    argv = [sys.executable, "-m", "m3diff", "train", "--recipe", args.recipe, "--out", str(args.out), "--resume"]
    if args.data:
        argv += ["--data", *args.data]
    for override in args.overrides:
        argv += ["--set", override]
    for flag, value in (("--max-steps", args.max_steps), ("--stop-at", args.stop_at),
                        ("--memory-limit", args.memory_limit)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--quiet"] if args.quiet else [])


def _train(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError
    from training.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        recipe.check_data(args.data)
    except RecipeError as exc:
        raise CLIError(str(exc)) from None
    from training.checkpoint import MemoryLimitReached
    from training.train import train

    if args.memory_limit is not None and args.memory_limit <= 0:
        raise CLIError(f"--memory-limit must be a positive number of GB, got {args.memory_limit:g}")
    try:
        result = train(recipe, args.data, args.out, resume=args.resume, max_steps=args.max_steps,
                       stop_at_step=args.stop_at, export_at_stop=args.stop_at is not None, quiet=args.quiet,
                       memory_limit_gb=args.memory_limit)
    except MemoryLimitReached as exc:
        if exc.fresh:
            raise CLIError(f"{exc}; a fresh process already needs that much, so raise --memory-limit") from None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the launcher owns the processes: stop them all
            raise CLIError(f"{exc}; run the same command with --resume") from None
        print(f"m3diff train: {exc}; continuing in a fresh process", file=sys.stderr, flush=True)
        os.execv(sys.executable, resume_argv(args))
    except (RecipeError, FileExistsError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if result.model_dir is not None:
        print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; model in {result.model_dir}")
    return 0


def _reader_calibrate(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError
    from training.reader import calibrate_threshold

    data = Path(args.data)
    if not (data / f"{args.split}.json").is_file():
        raise CLIError(f"{data} holds no {args.split}.json: give a folder written by `m3diff synth`")
    if args.out and Path(args.out).exists():
        raise CLIError(f"{args.out} already exists: choose a new folder, or leave --out out to calibrate in place")
    if args.pairs is not None and args.pairs < 1:
        raise CLIError("--pairs must be at least 1")
    try:
        cal = calibrate_threshold(args.model, data, args.split, args.pairs, Path(args.out) if args.out else None)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    print("threshold  recall  precision  F1")
    for p in cal.curve:
        mark = "  <- chosen" if p.threshold == cal.threshold else ""
        print(f"{p.threshold:9.2f}  {p.recall:6.1%}  {p.precision:9.1%}  {p.f1:.3f}{mark}")
    print(f"threshold {cal.threshold} written into {args.out or args.model} ({cal.pairs} pairs of {data}/{args.split})")
    return 0
