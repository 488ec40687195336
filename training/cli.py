"""`m3diff train`: the single-stage recipe on accelerate (same command under `accelerate launch`)."""
from __future__ import annotations

import argparse


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from m3diff.cli import CLIError
    from training.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        recipe.check_data(args.data)
    except RecipeError as exc:
        raise CLIError(str(exc)) from None
    from training.train import train

    try:
        result = train(recipe, args.data, args.out, resume=args.resume, max_steps=args.max_steps,
                       stop_at_step=args.stop_at, export_at_stop=args.stop_at is not None, quiet=args.quiet)
    except (RecipeError, FileExistsError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if result.model_dir is not None:
        print(f"trained to step {result.step} in {result.seconds / 60:.1f} min; model in {result.model_dir}")
    return 0
