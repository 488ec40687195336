"""The `m3diff` command line.

This module is the composition root: each area of the project contributes its own sub-commands
through a ``register(subparsers)`` function in its own ``cli`` module, listed in ``COMMAND_MODULES``.
Those modules import only argparse at import time and do heavy imports inside their handlers, so
`m3diff --help` stays fast. (This is the one place where ``m3diff`` reaches into ``analysis`` and
``training``; it does so lazily and only to offer their commands.)
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "m3diff.commands",   # describe, info, app
    "m3diff.data.cli",   # synth, data stats, data mix
    "analysis.cli",      # predict, eval, doctor
    "training.cli",      # train
    "m3diff.hosting",    # space build (spaces/ is a plain folder: a package there would shadow HF's `spaces`)
)


class CLIError(Exception):
    """An error meant for a person: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m3diff",
        description="Fine-grained image difference captioning with M3Diff: describe what changed "
        "between two images, with the evidence (per-layer MDP Score weights, difference-attention maps).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # that area is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
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
