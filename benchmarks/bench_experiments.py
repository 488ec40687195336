"""What the app's controlled experiments cost beside a plain describe, side by side.

    python benchmarks/bench_experiments.py              # the embedded model (and its twin), 6 made pairs
    python benchmarks/bench_experiments.py --model DIR --pairs 8 --rounds 3

Three things done to the same pairs, interleaved pair by pair so drift hits all alike: a plain describe
(what the Describe button runs), **make a pair** (generate the pair at the model's resolution, describe it,
score the caption: ``analysis.madepair.make_and_describe``) and **probe this pair** (every row of
``analysis.probe``: one batched generate and one loss pass, plus the twin's row). Prints seconds (median
over pairs and rounds) and each as a ratio to the plain describe. Targets (issue #32): probe < 3 s, make a
pair < 1 s with the embedded model on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import time

from analysis.madepair import MadePairScorer, make_and_describe, model_size
from analysis.probe import probe_pair, twin_row
from m3diff.change_types import TYPE_IDS
from m3diff.data.synth.chosen import PairRequest, make_pair
from m3diff.describing import EMBEDDED_TWIN_DIR
from m3diff.pipeline import DiffCaptioner, GenerationSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model directory (default: the embedded model)")
    ap.add_argument("--twin", default=None, help="its no-MDP twin (default: the embedded twin with the embedded model)")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    captioner = DiffCaptioner.from_pretrained(args.model)
    captioner.use_recommended_threads()
    twin_src = args.twin or (str(EMBEDDED_TWIN_DIR) if args.model in (None, "embedded") else None)
    twin = DiffCaptioner.from_pretrained(twin_src) if twin_src else None
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    scorer = MadePairScorer()
    scorer.background  # noqa: B018 — built once at app start-up cost, not per click
    size = model_size(captioner.info.image_size)
    requests = [PairRequest((TYPE_IDS[(3 * i + 2) % len(TYPE_IDS)],), ("render", "photo")[i % 2], seed=100 + i, size=size)
                for i in range(args.pairs)]
    captioner.describe(*(lambda m: (m.before, m.after))(make_pair(requests[0])), settings=settings)  # warm-up
    times: dict[str, list[float]] = {"describe": [], "make a pair": [], "probe": [], "probe + twin": []}
    for _ in range(args.rounds):
        for request in requests:
            made = make_pair(request)
            t = time.perf_counter()
            captioner.describe(made.before, made.after, settings=settings)
            times["describe"].append(time.perf_counter() - t)
            t = time.perf_counter()
            make_and_describe(captioner, scorer, request, settings)
            times["make a pair"].append(time.perf_counter() - t)
            t = time.perf_counter()
            probe = probe_pair(captioner, made.before, made.after, settings)
            times["probe"].append(time.perf_counter() - t)
            if twin is not None:
                twin_row(twin, made.before, made.after, probe.rows[0].caption, settings)
            times["probe + twin"].append(time.perf_counter() - t)
    base = statistics.median(times["describe"])
    print(f"{captioner.info.source}: {len(requests)} pairs x {args.rounds} rounds, {len(probe.rows)} probe rows"
          f"{' + twin' if twin else ''}, max {args.max_new_tokens} new tokens")
    print(f"{'':14s} {'median s':>9s} {'x describe':>11s}")
    for name, ts in times.items():
        if ts:
            m = statistics.median(ts)
            print(f"{name:14s} {m:9.3f} {m / base:10.2f}x")


if __name__ == "__main__":
    main()
