"""Scoring speed: m3diff's CaptionScorer vs plain per-subset pycocoevalcap, side by side in one run.

Workload: N predictions of ~W words (1-2 references each), scored overall plus on each of the 12
change-type subsets. The plain way (RobustChangeCaptioning's): for every subset, PTB-tokenise and run
Bleu, Meteor, Rouge, Cider afresh (one Meteor JVM reused, as a careful user would). Ours: tokenise
once, cook once, METEOR statistics once, slices re-scored from cached statistics, no intervals.

    .venv/bin/python benchmarks/bench_metrics.py [--pairs 2000] [--words 60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args()

    from tests.analysis.conftest import make_split
    from m3diff.change_types import TYPE_IDS

    recs, preds = make_split(args.pairs, seed=0, words=args.words)
    ids = [r["id"] for r in recs]
    subsets = {"overall": list(range(len(recs)))}
    subsets.update({t: [i for i, r in enumerate(recs) if t in r["change_types"]] for t in TYPE_IDS})
    total = sum(len(v) for v in subsets.values())
    print(f"{args.pairs} pairs, ~{args.words} words, {len(subsets)} subsets ({total} pair-scorings)")

    from analysis.metrics import CaptionScorer

    t0 = time.perf_counter()
    with CaptionScorer() as s:
        c = s.prepare(ids, [p["caption"] for p in preds], [r["captions"] for r in recs])
        ours = {k: s.score(c, v, meteor=False) for k, v in subsets.items()}
        for k, v in subsets.items():
            ours[k]["METEOR"] = s.meteor(c, v)
    t_ours = time.perf_counter() - t0
    print(f"m3diff CaptionScorer : {t_ours:7.1f} s")
    if args.skip_plain:
        return

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    t0 = time.perf_counter()
    meteor = Meteor()
    plain = {}
    for k, v in subsets.items():
        gts = PTBTokenizer().tokenize({ids[i]: [{"caption": x} for x in recs[i]["captions"]] for i in v})
        res = PTBTokenizer().tokenize({ids[i]: [{"caption": preds[i]["caption"]}] for i in v})
        plain[k] = {"BLEU-4": 100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3],
                    "METEOR": 100 * meteor.compute_score(gts, res)[0],
                    "ROUGE-L": 100 * Rouge().compute_score(gts, res)[0],
                    "CIDEr-D": 100 * Cider().compute_score(gts, res)[0]}
    t_plain = time.perf_counter() - t0
    print(f"plain pycocoevalcap  : {t_plain:7.1f} s")
    print(f"speed-up             : {t_plain / t_ours:7.2f} x")
    overall = max(abs(ours["overall"][m] - plain["overall"][m]) for m in plain["overall"])
    print(f"overall: largest difference {overall:.2e} (x100 scale)")
    # On subsets the plain way re-tokenises each subset, and Stanford's PTBTokenizer decides some
    # sentence-final "a." / "x." tokens by looking at other lines, so a caption's tokens can change
    # with its neighbours; ours keeps each caption's tokens from the whole set (COCOEvalCap's grouping).
    diffs = {(k, m): abs(ours[k][m] - plain[k][m]) for k in subsets if k != "overall" for m in plain[k]}
    (k, m), worst = max(diffs.items(), key=lambda kv: kv[1])
    print(f"subsets: largest difference {worst:.2e} ({m} on {k}; tokenizer context, see the comment)")


if __name__ == "__main__":
    main()
