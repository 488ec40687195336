"""Every command the README and the docs show parses: a renamed flag or sub-command fails here, not for a reader."""
import re
import shlex
from pathlib import Path

import pytest

from m3diff.cli import build_parser
from webapp.config import parse_args

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", "CONTRIBUTING.md", "m3diff/weights/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
OPTIONAL = re.compile(r"\[[^\[\]]*\]")  # innermost [ ... ]: an optional part of a synopsis


def command_lines(text: str) -> list[str]:
    """The shell lines of a document's code blocks, continuations joined, comments and optional parts removed."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#\s.*$", "", line).strip()
            while OPTIONAL.search(line):
                line = OPTIONAL.sub("", line)
            if line:
                lines.append(line)
    return lines


def documented() -> list[tuple[str, list[str]]]:
    """(document, arguments) of each `m3diff ...` and `accelerate launch ... -m m3diff.cli ...` line."""
    found = []
    for doc in DOCUMENTS:
        for line in command_lines((ROOT / doc).read_text(encoding="utf-8")):
            if re.match(r"m3diff [\w-]+: error:", line) or "..." in line or "…" in line:
                continue  # a command's output, or a line with its arguments elided
            if line.startswith("m3diff "):
                found.append((doc, shlex.split(line)[1:]))
            elif line.startswith("accelerate launch") and "-m m3diff.cli" in line:
                found.append((doc, shlex.split(line.split("-m m3diff.cli", 1)[1])))
    return found


CLI = documented()


def test_the_documents_show_commands():
    assert len(CLI) > 20
    assert {args[0] for _, args in CLI if args} >= {"describe", "predict", "eval", "train", "synth", "space", "app"}


@pytest.mark.parametrize(("doc", "args"), CLI, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in CLI])
def test_a_documented_m3diff_command_parses(doc, args, capsys):
    parser = build_parser()
    if "--help" in args:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(args)
        assert e.value.code == 0
        return
    try:
        ns = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{doc}: `m3diff {' '.join(args)}` does not parse: {capsys.readouterr().err.strip()}")
    assert getattr(ns, "handler", None) is not None or not args


def test_documented_app_commands_parse():
    lines = [shlex.split(line) for doc in DOCUMENTS for line in command_lines((ROOT / doc).read_text(encoding="utf-8"))
             if line.startswith("python app.py")]
    assert lines
    for words in lines:
        parse_args(words[2:])


def test_documented_scripts_exist():
    for doc in DOCUMENTS:
        for line in command_lines((ROOT / doc).read_text(encoding="utf-8")):
            for path in re.findall(r"python (?:-m )?(\S+\.py)", line):
                assert (ROOT / path).is_file(), f"{doc}: {line}"
