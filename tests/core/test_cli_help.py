"""Every `m3diff` command's --help renders as a person should read it: argparse formats argument help
with %, descriptions as they are, so a "%%" written for one shows up doubled in the other."""
from __future__ import annotations

import argparse

from m3diff.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: str = "m3diff"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_commands_help_renders_without_format_leftovers():
    seen = []
    for path, parser in _commands(build_parser()):
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, (path, [line for line in text.splitlines() if "%" in line])
        assert path.split()[-1] in text.splitlines()[0], path  # the usage line names the command
        seen.append(path)
    # the areas register their commands through entry points: all of them are found
    assert {"m3diff describe", "m3diff eval", "m3diff train", "m3diff probe", "m3diff synth"} <= set(seen)
