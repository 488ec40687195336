"""The `m3diff` command line.

Each area of the project contributes its own sub-commands through a ``register(subparsers)`` function,
declared in pyproject.toml under the ``m3diff.commands`` entry-point group; this module finds them
there and imports none of them by name, so the core package never reaches up into ``analysis``,
``training``, the app or the Space builder. Those modules import only argparse at import time and do
heavy imports inside their handlers, so `m3diff --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

COMMAND_GROUP = "m3diff.commands"


class CLIError(Exception):
    """An error meant for a person: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m3diff",
        description="Fine-grained image difference captioning with M3Diff: describe what changed "
        "between two images, with the evidence (per-layer MDP Score weights, difference-attention maps).",
    )
    parser.add_argument("--library-progress", action="store_true",
                        help="show the libraries' own progress bars (transformers' 'Loading weights', hub "
                             "downloads); m3diff's own bars for long work show either way")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    found = entry_points(group=COMMAND_GROUP)
    if not found:
        raise RuntimeError(f"no {COMMAND_GROUP!r} entry points are installed: install m3diff (pip install -e .) "
                           "so that its commands can be found")
    for ep in found:
        try:
            register = ep.load()
        except ModuleNotFoundError as exc:
            if exc.name and (ep.module == exc.name or ep.module.startswith(exc.name + ".")):  # an area not installed here
                continue
            raise
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if not args.library_progress:
        # read by huggingface_hub, and through it by transformers, when a handler first imports them: a
        # bar for loading 13 MB of weights on every command is noise. An explicit setting wins.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.handler(args) or 0)
    except CLIError as exc:
        print(f"m3diff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m m3diff.cli: run the imported module so CLIError is one class
    from m3diff.cli import main as _main

    sys.exit(_main())
