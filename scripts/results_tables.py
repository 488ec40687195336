"""Rewrite every results table of the README, docs/training.md and the model card from the shipped reports.

    .venv/bin/python scripts/results_tables.py           # rewrite the marked blocks
    .venv/bin/python scripts/results_tables.py --check   # exit 1, naming each block that differs

A table is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; the names and their
Markdown are ``training.card.result_blocks`` of ``m3diff/weights/reports/{m3diff,no_mdp}.json``. The test
suite runs the check, so a document cannot drift from the reports it quotes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.report import read_report
from m3diff.describing import EMBEDDED_DIR
from training.card import refresh_blocks, result_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/training.md", "m3diff/weights/README.md")


def shipped_blocks(reports_dir: Path = EMBEDDED_DIR / "reports") -> dict[str, str]:
    twin = reports_dir / "no_mdp.json"
    return result_blocks(read_report(reports_dir / "m3diff.json").report,
                         read_report(twin).report if twin.is_file() else None)


def refresh(root: Path = ROOT, blocks: dict[str, str] | None = None, write: bool = True) -> dict[str, list[str]]:
    """Document -> the names of its blocks that differed from the reports (rewritten when ``write``)."""
    blocks = shipped_blocks() if blocks is None else blocks
    drift = {}
    for name in DOCUMENTS:
        path = root / name
        text = path.read_text(encoding="utf-8")
        new, changed = refresh_blocks(text, blocks)
        if changed:
            drift[name] = changed
            if write:
                path.write_text(new, encoding="utf-8")
    return drift


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report the blocks that differ (exit 1 if any)")
    args = p.parse_args(argv)
    drift = refresh(write=not args.check)
    for doc, names in drift.items():
        print(f"{doc}: {'differs from the reports' if args.check else 'rewrote'}: {', '.join(names)}")
    if not drift:
        print("every results table matches the shipped reports")
    return 1 if drift and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
