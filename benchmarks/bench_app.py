"""The app's start-up and /describe latency, as a person and a script see them.

    python benchmarks/bench_app.py [--clients 4] [--calls 8] [--model embedded] [--max-new-tokens 96]

Starts `python app.py` on 127.0.0.1 (a subprocess, stopped by its PID), measures the time from start
until the page answers and the /describe API is ready, then runs CLIENTS gradio_client clients at once,
each calling /describe CALLS times with an example pair, and prints p50/p95/max latency (seconds) and
throughput as JSON. It does this twice, side by side: with the model in its own process (the app's
default) and in the server's process (`--same-process`), and prints the ratios, and the default's
ratio to the targets on our 2-core CPU machine: ready <= 10 s, p95 <= 1 s. The default is measured
with two clients: gradio_client (what a Python script uses; it polls its event queue every 50 ms) and
Gradio's plain HTTP API (upload, call, event stream: what curl and a browser do).
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


class HTTPClient:
    """/describe over Gradio's plain HTTP API (what `curl` and a browser do): upload both images, POST
    the call, read its event stream to the end. No polling: gradio_client reads its event queue every
    50 ms, which adds up to that much to each call it measures."""

    def __init__(self, url: str):
        import httpx

        self.url = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=60)

    def describe(self, before: Path, after: Path, max_new_tokens: int) -> str:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in (before, after)]
        paths = self.http.post(f"{self.url}/upload", files=files).raise_for_status().json()
        data = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in paths] + [max_new_tokens]
        event = self.http.post(f"{self.url}/call/describe", json={"data": data}).raise_for_status().json()
        kind = None
        with self.http.stream("GET", f"{self.url}/call/describe/{event['event_id']}") as r:
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"/describe failed: {line}")
                    return json.loads(line[5:])[0]
        raise RuntimeError("/describe: the event stream ended without a result")


def run_clients(clients, call, n_calls: int) -> dict:
    """Every client calls n_calls times at once (threads), then the first alone 5 times."""
    call(clients[0])  # warm-up

    def run(client):
        times = []
        for _ in range(n_calls):
            t = time.perf_counter()
            call(client)
            times.append(time.perf_counter() - t)
        return times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        lat = [x for ts in pool.map(run, clients) for x in ts]
    wall = time.perf_counter() - t0
    single = []
    for _ in range(5):
        t = time.perf_counter()
        call(clients[0])
        single.append(time.perf_counter() - t)
    return {"describe_p50_s": round(statistics.median(lat), 3), "describe_p95_s": round(percentile(lat, 0.95), 3),
            "describe_max_s": round(max(lat), 3), "pairs_per_s": round(len(lat) / wall, 2),
            "single_client_median_s": round(statistics.median(single), 3)}


def measure(args, same_process: bool, client_kinds: tuple[str, ...]) -> dict:
    """Start the app (the model in its own process, or in the server's), time ready, then each client kind."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", args.model, "--port", str(port),
           "--concurrency", str(args.concurrency)] + (["--same-process"] if same_process else [])
    ex = ROOT / "examples" / "images"
    before, after = ex / "color_before.png", ex / "color_after.png"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"model_process": "same" if same_process else "own"}
    try:
        wait_ready(url, proc)
        out["ready_s"] = round(time.perf_counter() - start, 2)
        for kind in client_kinds:
            if kind == "gradio_client":
                pair = (handle_file(str(before)), handle_file(str(after)))
                clients = [Client(url, verbose=False) for _ in range(args.clients)]
                out[kind] = run_clients(
                    clients, lambda c: c.predict(*pair, args.max_new_tokens, api_name="/describe"), args.calls)
            else:
                clients = [HTTPClient(url) for _ in range(args.clients)]
                out[kind] = run_clients(clients, lambda c: c.describe(before, after, args.max_new_tokens), args.calls)
        out["caption_words"] = len(HTTPClient(url).describe(before, after, args.max_new_tokens).split())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


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

    # the app's default (the model in its own process) through both clients; the model in the server's
    # process through gradio_client, for the side-by-side ratio
    plan = {"own": (False, ("gradio_client", "http")), "same": (True, ("gradio_client",))}
    runs = {name: measure(args, same, kinds) for name, (same, kinds) in plan.items() if args.only in (None, name)}
    out = {"model": args.model, "max_new_tokens": args.max_new_tokens, "clients": args.clients,
           "calls": args.clients * args.calls, "concurrency_limit": args.concurrency, "cpu_count": os.cpu_count(),
           "targets": {"ready_s": 10.0, "describe_p95_s": 1.0}, "runs": runs}
    own = runs.get("own")
    if own:
        out["own_vs_target"] = {"ready": round(own["ready_s"] / 10.0, 2)}
        out["own_vs_target"].update({f"p95 ({k})": round(own[k]["describe_p95_s"] / 1.0, 2)
                                     for k in ("gradio_client", "http")})
    if len(runs) == 2:  # the model in its own process (the default) against the model in the server's
        same, own = runs["same"], runs["own"]
        out["same_over_own"] = {"ready_s": round(same["ready_s"] / own["ready_s"], 2)}
        out["same_over_own"].update({k: round(same["gradio_client"][k] / own["gradio_client"][k], 2) for k in
                                     ("describe_p50_s", "describe_p95_s", "single_client_median_s")})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
