"""The app's start-up and /describe latency, as a person and a script see them.

    python benchmarks/bench_app.py [--clients 4] [--calls 8] [--model embedded] [--max-new-tokens 96]

Starts `python app.py` on 127.0.0.1 (a subprocess, stopped by its PID), measures the time from start
until the page answers and the /describe API is ready, then runs CLIENTS gradio_client clients at once,
each calling /describe CALLS times with an example pair, and prints p50/p95/max latency (seconds) and
throughput as JSON. It does this twice, side by side: with the model in its own process (the app's
default) and in the server's process (`--same-process`), and prints the ratios, and the default's
ratio to the targets on our 2-core CPU machine: ready <= 10 s, p95 <= 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the app was not ready after {timeout:.0f} s")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def measure(args, same_process: bool) -> dict:
    """Start the app (the model in its own process, or in the server's), time ready, then the clients."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", args.model, "--port", str(port),
           "--concurrency", str(args.concurrency)] + (["--same-process"] if same_process else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        ready = time.perf_counter() - start
        ex = ROOT / "examples" / "images"
        pair = (handle_file(str(ex / "color_before.png")), handle_file(str(ex / "color_after.png")))
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        clients[0].predict(*pair, args.max_new_tokens, api_name="/describe")  # warm-up

        def run(client):
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                client.predict(*pair, args.max_new_tokens, api_name="/describe")
                times.append(time.perf_counter() - t)
            return times

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            lat = [x for ts in pool.map(run, clients) for x in ts]
        wall = time.perf_counter() - t0
        single = []
        for _ in range(5):
            t = time.perf_counter()
            caption, _ = clients[0].predict(*pair, args.max_new_tokens, api_name="/describe")
            single.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "model_process": "same" if same_process else "own",
        "ready_s": round(ready, 2),
        "describe_p50_s": round(statistics.median(lat), 3), "describe_p95_s": round(percentile(lat, 0.95), 3),
        "describe_max_s": round(max(lat), 3), "pairs_per_s": round(len(lat) / wall, 2),
        "single_client_median_s": round(statistics.median(single), 3),
        "caption_words": len(caption.split()),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--calls", type=int, default=8, help="calls per client (after one warm-up call)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=1, help="the app's model concurrency limit")
    p.add_argument("--only", choices=("own", "same"), default=None,
                   help="measure one way of running the model (default: both, side by side)")
    args = p.parse_args(argv)

    modes = {"own": False, "same": True}
    runs = {name: measure(args, same) for name, same in modes.items() if args.only in (None, name)}
    out = {"model": args.model, "max_new_tokens": args.max_new_tokens, "clients": args.clients,
           "calls": args.clients * args.calls, "concurrency_limit": args.concurrency, "cpu_count": os.cpu_count(),
           "targets": {"ready_s": 10.0, "describe_p95_s": 1.0}, "runs": runs}
    own = runs.get("own")
    if own:
        out["own_vs_target"] = {"ready": round(own["ready_s"] / 10.0, 2), "p95": round(own["describe_p95_s"] / 1.0, 2)}
    if len(runs) == 2:  # the model in its own process (the default) against the model in the server's
        out["same_over_own"] = {k: round(runs["same"][k] / runs["own"][k], 2)
                                for k in ("ready_s", "describe_p50_s", "describe_p95_s", "single_client_median_s")}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
