"""Generator speed: pairs per second at 128 px (images written as PNG), against the 50 pairs/s target.

    .venv/bin/python benchmarks/bench_synth.py [--pairs 600] [--size 128] [--workers 1 2]

Prints one line per worker count: pairs/s, the ratio to the target, and CPU seconds per pair
(the per-core cost, which does not depend on what else the machine is doing).
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from m3diff.data.synth.generator import SynthConfig, generate

TARGET = 50.0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = ap.parse_args(argv)
    print(f"m3diff synth, {args.pairs} pairs at {args.size} px, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} before the run")
    for w in dict.fromkeys(args.workers):
        with tempfile.TemporaryDirectory() as d:
            cfg = SynthConfig(seed=0, pairs=args.pairs, size=args.size)
            c0, t0 = _cpu(), time.perf_counter()
            generate(cfg, d, workers=w, progress=False)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
        rate = args.pairs / wall
        print(f"workers {w}: {rate:6.1f} pairs/s  ratio {rate / TARGET:4.2f}x of {TARGET:.0f}/s  "
              f"{1000 * cpu / args.pairs:5.1f} ms CPU per pair")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
