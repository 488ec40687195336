"""What `m3diff predict --maps` (and `--attribution`) costs beside a plain prediction, side by side.

    python benchmarks/bench_maps.py                  # the embedded model, 32 generated test pairs
    python benchmarks/bench_maps.py --model DIR --pairs 64 --rounds 3

Three ways of predicting the same pairs, interleaved round by round so drift hits all alike:
captions only (what `predict` does), + the maps (`--maps`: the trace, the feature difference and
their encoding), + the caption's attribution (`--attribution`: one backward pass per pair). Prints
seconds per pair (median over rounds) and the ratios to captions only.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from analysis.attribution import explain_caption
from analysis.localization import description_maps, encode_maps
from m3diff.data.synth.generator import SynthConfig, generate
from m3diff.images import load_image
from m3diff.pipeline import DiffCaptioner, GenerationSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model directory (default: the embedded model)")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    captioner = DiffCaptioner.from_pretrained(args.model)
    captioner.use_recommended_threads()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        generate(SynthConfig(seed=4242, pairs=10 * args.pairs, size=captioner.info.image_size), tmp, progress=False)
        from m3diff.data.readers import read_dataset

        pairs = [(load_image(p.before), load_image(p.after)) for p in read_dataset(tmp, split="test").pairs]
    pairs = pairs[: args.pairs]

    def run(maps: bool, attribution: bool) -> float:
        start = time.perf_counter()
        for s in range(0, len(pairs), args.batch_size):
            chunk = pairs[s:s + args.batch_size]
            for pair, d in zip(chunk, captioner.describe_batch(chunk, with_trace=maps, settings=settings)):
                if maps:
                    named = description_maps(d.trace, d.feature_difference)
                    if attribution:
                        try:
                            named["saliency_caption"] = explain_caption(captioner, *pair, d.caption).patches
                        except ValueError:
                            pass
                    encode_maps(named)
        return (time.perf_counter() - start) / len(pairs)

    modes = {"captions only": (False, False), "+ maps (--maps)": (True, False),
             "+ maps + attribution (--maps --attribution)": (True, True)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    run(False, False)  # warm-up
    for _ in range(args.rounds):
        for name, (maps, attribution) in modes.items():
            times[name].append(run(maps, attribution))
    base = statistics.median(times["captions only"])
    print(f"{len(pairs)} pairs, batch {args.batch_size}, {args.rounds} rounds, model {captioner.info.source}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:45s} {med:.3f} s/pair   x{med / base:.2f}")


if __name__ == "__main__":
    main()
