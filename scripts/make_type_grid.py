"""Render the README picture: one generated single-change pair per change type, with a caption.

    .venv/bin/python scripts/make_type_grid.py [--out docs/images/change_types.png] [--seed 0]

Pairs come from the same generator as `m3diff synth` (nothing is drawn by hand); the changed
region is outlined in yellow on both images.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from m3diff.change_types import TYPE_IDS
from m3diff.data.synth.generator import SynthConfig, Worker, split_position

PX = 176
COLS = 3
CAPTION_LINES = 5


def find_pair(worker: Worker, ctype: str, domain: str | None, limit: int = 4000):
    """The first pair whose only change is ``ctype`` (preferring ``domain``)."""
    for index in range(limit):
        split, k = split_position(index)
        if split != "train" or TYPE_IDS[k % len(TYPE_IDS)] != ctype:
            continue
        _, rec, before, after = worker.make(index)
        if rec["change_types"] == [ctype] and (domain is None or rec["domain"] == domain):
            return rec, before, after
    raise RuntimeError(f"no single-change {ctype} pair in the first {limit} indices")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/change_types.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    worker = Worker(SynthConfig(seed=args.seed, pairs=1, size=PX), None)
    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=15)
    cell_w, cell_h = 2 * PX + 18, PX + 30 + CAPTION_LINES * 16 + 8
    rows = (len(TYPE_IDS) + COLS - 1) // COLS
    sheet = Image.new("RGB", (COLS * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ctype in enumerate(TYPE_IDS):
        domain = "render" if i % 2 == 0 else "photo"  # show both domains across the grid
        rec, before, after = find_pair(worker, ctype, domain)
        x0, y0 = (i % COLS) * cell_w + 6, (i // COLS) * cell_h + 6
        for j, img in enumerate((before, after)):
            img = img.copy()
            d = ImageDraw.Draw(img)
            for reg in rec["regions"]:
                box = reg["before" if j == 0 else "after"]
                if box:
                    d.rectangle(box, outline=(255, 230, 0), width=2)
            sheet.paste(img, (x0 + j * (PX + 6), y0 + 22))
        draw.text((x0, y0), f"{ctype}  ({rec['domain']})", fill=(20, 20, 20), font=bold)
        lines = textwrap.wrap(rec["captions"][0], width=50)[:CAPTION_LINES]
        for k, line in enumerate(lines):
            draw.text((x0, y0 + 26 + PX + k * 16), line, fill=(40, 40, 40), font=font)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
