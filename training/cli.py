"""`m3diff train`: the single-stage recipe on accelerate (same command under `accelerate launch`)."""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an M3Diff model from a recipe",
        description="Train M3Diff as the recipe says (loss on answer tokens only), with checkpoints that resume "
        "exactly, CSV + TensorBoard logs, evaluation on the val split, and at the end the merged model, its "
        "processor and a model card in OUT/model. Run it under `accelerate launch` for several processes/GPUs.",
    )
    p.add_argument("--recipe", required=True, metavar="R",
                   help="a recipe YAML file, or the name of a bundled one (tiny-cpu, embedded, paper-7b)")
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

    r = subparsers.add_parser(
        "train-reader", help="train a change zoom's reader alone, before a model gets its zoom",
        description="Train the change zoom's reader (m3diff/zoom.py) on its own, without an LLM: each step reads "
        "windows at the change of random training pairs, at random signs and at random other objects, and its "
        "heads are asked the kind, colour, word, heading and pose of the object in each. Writes "
        "OUT/reader.safetensors, OUT/reader.json (settings, minutes, accuracy at the test pairs' change windows) "
        "and OUT/log.csv. A recipe's model.zoom_from: OUT then gives a model this reader.",
    )
    r.add_argument("--data", required=True, metavar="DIR", help="generated pairs (`m3diff synth`): its train split")
    r.add_argument("--out", required=True, metavar="DIR", help="where the reader goes")
    r.add_argument("--processor", default=None, metavar="MODEL",
                   help="a model folder whose processor sets the pixels the reader sees (default: the embedded model)")
    r.add_argument("--eval-data", default=None, metavar="DIR",
                   help="generated pairs whose test split scores the reader at each pair's change window")
    r.add_argument("--steps", type=int, default=None, help="optimizer steps (default 5000)")
    r.add_argument("--pairs", type=int, default=None, help="training pairs held in memory (default 8000)")
    r.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="stop after M minutes (the reader is saved and scored as it is then)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="another setting of training.zoom_reader.ReaderStage, e.g. --set lr=5e-4 --set sign_windows=64")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(handler=_train_reader)


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


def _train_reader(args: argparse.Namespace) -> int:
    import dataclasses

    from m3diff.cli import CLIError
    from training.zoom_reader import ReaderStage, train_reader

    fields = {f.name: f for f in dataclasses.fields(ReaderStage)}
    values: dict = {"data": args.data, "eval_data": args.eval_data}
    if args.processor:
        values["processor"] = args.processor
    else:
        from m3diff.describing import EMBEDDED_DIR

        values["processor"] = str(EMBEDDED_DIR)
    for key, value in (("steps", args.steps), ("pairs", args.pairs)):
        if value is not None:
            values[key] = value
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields or key in ("data", "processor", "eval_data"):
            raise CLIError(f"--set {item!r}: expected KEY=VALUE with KEY one of "
                           f"{', '.join(k for k in fields if k not in ('data', 'processor', 'eval_data'))}")
        kind = type(fields[key].default)
        try:
            values[key] = kind(raw)
        except ValueError:
            raise CLIError(f"--set {item!r}: {key} must be a {kind.__name__}") from None
    try:
        stage = ReaderStage(**values)
        summary = train_reader(stage, args.out, progress=not args.quiet, minutes=args.minutes)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    accuracy = summary["test_accuracy"] or {}
    said = ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in accuracy.items() if v["accuracy"] is not None)
    print(f"reader trained {summary['steps_done']} steps in {summary['minutes']} min; in {args.out}"
          + (f"; at the test change windows: {said}" if said else ""))
    return 0
