"""`m3diff synth` and `m3diff data stats|mix`. Only argparse at import time (see m3diff/cli.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

FORMAT_HELP = "omnidiff (our layout, also: synth), spot_the_diff, iedit, clevr_change, clevr_dc, birds_to_words"
OUTSIDE_HELP = ("read image paths that lead outside the dataset folder (absolute paths, '..', symlinks out); "
                "refused by default")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate an OmniDiff-style benchmark with all 12 change types",
        description="Generate before/after image pairs with 1-4 changes of the 12 OmniDiff types in two "
        "domains (render: perspective 3D scenes; photo: objects composited into scikit-image photos), "
        "3+ reference captions each, split 8:1:1 by scene. Writes DIR/{train,val,test}.json and DIR/images/. "
        "Same seed, same bytes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--pairs", type=int, default=1000, metavar="N", help="number of pairs")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    p.add_argument("--size", type=int, default=128, metavar="PX", help="image side in pixels (64-512)")
    p.add_argument("--references", type=int, default=3, metavar="K", help="reference captions per pair")
    p.add_argument("--workers", type=int, default=0, metavar="W",
                   help="worker processes (0: up to 4, one per core); output does not depend on it")
    p.add_argument("--force", action="store_true", help="write into DIR even if it already holds split files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_synth)

    data = subparsers.add_parser("data", help="dataset statistics and the training mixture",
                                 description="Read any supported difference-captioning layout.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])

    s = sub.add_parser("stats", help="the paper's Table 2 figures for a dataset",
                       description="Pairs, captions, sentences per caption, average words, vocabulary, "
                       "% captions over 20 words and pairs per change type. Needs annotations only: missing "
                       "images are counted, not fatal.")
    s.add_argument("path", metavar="PATH", help="dataset folder (or a split .json / Birds-to-Words .tsv file)")
    s.add_argument("--format", metavar="NAME", help=f"layout; detected when left out. One of: {FORMAT_HELP}")
    s.add_argument("--split", metavar="S", help="train, val or test (default: all)")
    s.add_argument("--json", action="store_true", help="print JSON (keys: pairs, captions, sentences, avg_words, "
                   "vocabulary, long_caption_pct, per_type, ...)")
    s.add_argument("--allow-outside-root", action="store_true", help=OUTSIDE_HELP)
    s.set_defaults(handler=_stats)

    m = sub.add_parser(
        "mix", help="build the question-answer training mixture (JSONL) from several datasets",
        description="Turn the pairs of several sources into question-answer samples with the prompt of "
        "m3diff.processing. One sample per pair (its answer one reference, drawn with --seed), except "
        "CLEVR-Change and CLEVR-DC where every caption is its own sample (the paper's rule). A source's "
        "WEIGHT scales its share: 0.5 keeps a random half, 2 repeats it twice, 1.5 once plus a random half.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--source", action="append", required=True, metavar="DIR[:FORMAT][:WEIGHT]",
                   help=f"a dataset; repeat for several. FORMAT one of: {FORMAT_HELP}")
    m.add_argument("--split", default="train", metavar="S", help="split to read from every source")
    m.add_argument("--out", required=True, metavar="FILE.jsonl", help="output file")
    m.add_argument("--seed", type=int, default=0, help="seed for weights below 1, reference choice and the shuffle")
    m.add_argument("--every-caption", action="store_true",
                   help="make every caption of every source its own sample (not only CLEVR's)")
    m.add_argument("--no-shuffle", action="store_true", help="keep source order")
    m.add_argument("--allow-outside-root", action="store_true", help=OUTSIDE_HELP)
    m.set_defaults(handler=_mix)


def _synth(args) -> int:
    from m3diff.cli import CLIError
    from m3diff.data.synth.generator import SynthConfig, default_workers, generate

    try:
        cfg = SynthConfig(seed=args.seed, pairs=args.pairs, size=args.size, references=args.references)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    if not args.force and any((out / f"{s}.json").exists() for s in ("train", "val", "test")):
        raise CLIError(f"{out} already holds a generated set; pass --force to overwrite it or choose another --out")
    workers = args.workers or default_workers()
    counts = generate(cfg, out, workers=workers, progress=not args.quiet)
    print(f"wrote {sum(counts.values())} pairs to {out} "
          f"(train {counts['train']}, val {counts['val']}, test {counts['test']}; {cfg.size} px)")
    return 0


def _read(path, fmt, split, images, allow_outside=False):
    from m3diff.cli import CLIError
    from m3diff.data.layout import DatasetError
    from m3diff.data.readers import read_dataset

    try:
        ds = read_dataset(path, format=fmt, split=split, images=images, allow_outside=allow_outside)
    except (DatasetError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    for note in ds.notes():
        print(f"warning: {note}", file=sys.stderr)
    return ds


def _stats(args) -> int:
    from m3diff.data.stats import compute_stats

    ds = _read(args.path, args.format, args.split, "optional", args.allow_outside_root)
    st = dataclasses.replace(compute_stats(ds.pairs), format=ds.format, missing_images=len(ds.missing_images),
                             empty_reference_pairs=len(ds.empty_reference_pairs))
    if args.json:
        print(json.dumps(st.to_json(), indent=1))
    else:
        print(st.format_text(f"{args.path} ({ds.format}{', ' + args.split if args.split else ''})"))
        if ds.missing_images:
            print(f"note: {len(ds.missing_images)} image file(s) are missing (first: {ds.missing_images[0]}); "
                  "the figures above need annotations only")
    return 0


def _mix(args) -> int:
    from m3diff.cli import CLIError
    from m3diff.data.mixture import MixSource, build_mixture, parse_source, write_jsonl

    sources: list[MixSource] = []
    try:
        for spec in args.source:
            sources.append(parse_source(spec))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    datasets = [(src, _read(src.path, src.format, args.split, "require", args.allow_outside_root))
                for src in sources]
    try:
        samples = build_mixture(datasets, seed=args.seed, every_caption=args.every_caption,
                                shuffle=not args.no_shuffle)
    except ImportError as exc:
        raise CLIError(f"the prompt template is not available ({exc}); is m3diff.processing installed?") from None
    n = write_jsonl(samples, args.out)
    by_source: dict[str, int] = {}
    for s in samples:
        by_source[s["source"]] = by_source.get(s["source"], 0) + 1
    print(f"wrote {n} samples to {args.out}: " + ", ".join(f"{k} {v}" for k, v in by_source.items()))
    return 0
