"""What a recipe setting costs in CPU training, side by side with its alternative, through `m3diff train` itself.

    python benchmarks/bench_train_settings.py --compare attention   # fused SDPA vs eager attention
    python benchmarks/bench_train_settings.py --compare precision   # float32 vs bf16 autocast
    python benchmarks/bench_train_settings.py --compare allocator   # glibc malloc vs jemalloc (LD_PRELOAD)
    python benchmarks/bench_train_settings.py --compare attention --steps 60 --rounds 3 --data runs/synth24k

Each round trains the same recipe for ``--steps`` steps once per variant, one thread each, one after
the other, alternating which goes first so drift hits both alike. The CPU seconds per step come from
the run's own log.csv, from its first logged step on (start-up, data loading and the final save
excluded). Prints CPU s/step (median over rounds), the ratio, and the loss each reached: the two
variants change the arithmetic's path, not the recipe, so the losses should agree. A CPU without
native bf16 (AVX512-BF16 or AMX) may show no gain or a loss for bf16. The allocator comparison needs
Debian's libjemalloc2 (``apt-get install libjemalloc2``); a short run shows only what a fresh heap
costs, not how glibc's heap fragments over thousands of steps (docs/training.md).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
# jemalloc that never hands pages back: returning them costs a page fault per page on the next step
JEMALLOC_ENV = {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
# per comparison: (label, recipe overrides, environment) of the baseline and of the alternative
COMPARISONS = {
    "attention": (("fused SDPA", ["model.attn_implementation=sdpa"], {}),
                  ("eager attention", ["model.attn_implementation=eager"], {})),
    "precision": (("float32", ["precision='no'"], {}), ("bf16 autocast", ["precision='bf16'"], {})),
    "allocator": (("glibc malloc", [], {}), ("jemalloc", [], JEMALLOC_ENV)),
}


def _run(data: str, out: Path, overrides: list[str], env: dict, steps: int, recipe: str) -> tuple[float, float]:
    """(CPU seconds per step after the first logged step, last logged loss) of one short run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "m3diff", "train", "--recipe", recipe, "--data", data, "--out", str(out),
           "--stop-at", str(steps), "--quiet", "--set", "log_every=10", "--set", "checkpoint_every=100000"]
    for o in overrides:
        cmd += ["--set", o]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(overrides)}):\n{run.stderr[-2000:]}")
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first, last = rows[0], rows[-1]
    per_step = (float(last["cpu_s"]) - float(first["cpu_s"])) / (int(last["step"]) - int(first["step"]))
    return per_step, float(last["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="attention")
    ap.add_argument("--recipe", default="embedded")
    ap.add_argument("--data", default=None, help="generated training data (default: 2,000 fresh pairs)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 20:
        raise SystemExit("--steps must be >= 20 (two logged points at log_every=10)")
    variants = COMPARISONS[args.compare]
    if args.compare == "allocator" and not Path(JEMALLOC).is_file():
        raise SystemExit(f"{JEMALLOC} not found: apt-get install libjemalloc2")

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from m3diff.data.synth.generator import SynthConfig, generate

            data = str(Path(tmp) / "data")
            generate(SynthConfig(seed=4243, pairs=2000, size=128), data, progress=False)
        times: dict[str, list[float]] = {label: [] for label, *_ in variants}
        losses: dict[str, list[float]] = {label: [] for label, *_ in variants}
        for r in range(args.rounds):
            for k, (label, overrides, env) in enumerate(variants if r % 2 == 0 else variants[::-1]):
                s, loss = _run(data, Path(tmp) / f"{r}-{k}", overrides, env, args.steps, args.recipe)
                times[label].append(s)
                losses[label].append(loss)
    (base, *_), (alt, *_) = variants
    print(f"recipe {args.recipe}, {args.steps} steps, {args.rounds} rounds, one thread")
    for label, *_ in variants:
        print(f"  {label:<18} {statistics.median(times[label]):.3f} CPU s/step   "
              f"loss at step {args.steps}: {statistics.median(losses[label]):.4f}")
    ratio = statistics.median(times[alt]) / statistics.median(times[base])
    print(f"  {alt} / {base}    x{ratio:.2f} CPU time per step")


if __name__ == "__main__":
    main()
