"""What bf16 autocast saves in CPU training, side by side with float32, through `m3diff train` itself.

    python benchmarks/bench_train_precision.py                    # the embedded recipe, 40 steps, 2 rounds
    python benchmarks/bench_train_precision.py --steps 60 --rounds 3 --data runs/synth24k

Each round trains the same recipe for ``--steps`` steps once in float32 and once under bf16
autocast (float32 master weights, as accelerate does it), one thread each, one after the other,
alternating which goes first so drift hits both alike. The CPU seconds per step come from the run's
own log.csv, from its first logged step on (start-up, data loading and the final save excluded).
Prints CPU s/step (median over rounds), the ratio, and the loss each reached (they should agree:
bf16 changes the arithmetic, not the recipe). A CPU without native bf16 (AVX512-BF16 or AMX) may
show no gain or a loss.
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


def _run(data: str, out: Path, precision: str, steps: int, recipe: str) -> tuple[float, float]:
    """(CPU seconds per step after the first logged step, last logged loss) of one short run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "m3diff", "train", "--recipe", recipe, "--data", data, "--out", str(out),
           "--stop-at", str(steps), "--quiet", "--set", f"precision='{precision}'", "--set", "log_every=10",
           "--set", "checkpoint_every=100000"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"training failed ({precision}):\n{run.stderr[-2000:]}")
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first, last = rows[0], rows[-1]
    per_step = (float(last["cpu_s"]) - float(first["cpu_s"])) / (int(last["step"]) - int(first["step"]))
    return per_step, float(last["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="embedded")
    ap.add_argument("--data", default=None, help="generated training data (default: 2,000 fresh pairs)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 20:
        raise SystemExit("--steps must be >= 20 (two logged points at log_every=10)")

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from m3diff.data.synth.generator import SynthConfig, generate

            data = str(Path(tmp) / "data")
            generate(SynthConfig(seed=4243, pairs=2000, size=128), data, progress=False)
        times: dict[str, list[float]] = {"no": [], "bf16": []}
        losses: dict[str, list[float]] = {"no": [], "bf16": []}
        for r in range(args.rounds):
            order = ("no", "bf16") if r % 2 == 0 else ("bf16", "no")
            for precision in order:
                s, loss = _run(data, Path(tmp) / f"{precision}-{r}", precision, args.steps, args.recipe)
                times[precision].append(s)
                losses[precision].append(loss)
    fp32, bf16 = statistics.median(times["no"]), statistics.median(times["bf16"])
    print(f"recipe {args.recipe}, {args.steps} steps, {args.rounds} rounds, one thread")
    print(f"  float32          {fp32:.3f} CPU s/step   loss at step {args.steps}: {statistics.median(losses['no']):.4f}")
    print(f"  bf16 autocast    {bf16:.3f} CPU s/step   loss at step {args.steps}: {statistics.median(losses['bf16']):.4f}")
    print(f"  bf16 / float32   x{bf16 / fp32:.2f} CPU time per step")


if __name__ == "__main__":
    main()
