"""Web-process memory against the number of sessions holding the largest report the app accepts.

    python benchmarks/bench_report_memory.py [--sessions 8] [--model embedded]

Builds the largest report an upload may be (``webapp.reports.UploadLimits``: 40,000 pairs, just under the
20 MB upload cap), starts ``python app.py`` on 127.0.0.1 (a subprocess, stopped by its PID), and has one
visitor after another upload it through the Dashboard as a page does (``webapp.visitor``). After each,
prints the web process's resident memory (the model lives in a process of its own) and what the
Dashboard said; at the end, what the first visitor sees when it comes back (its report dropped past the
store's budget, said so). Prints numbers, asserts nothing; bounded: ``--sessions`` uploads.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_app import ROOT, free_port, wait_ready  # noqa: E402  (a sibling script, not a package)

from webapp.reports import UploadLimits  # noqa: E402  (after the checkout is on the path)
from webapp.visitor import Visitor  # noqa: E402

UPLOAD_CAP = 20 * 2**20  # webapp.config.MAX_FILE_SIZE, "20mb" as Gradio reads it
SHIPPED = ROOT / "m3diff" / "weights" / "reports" / "m3diff.json"


def _base_report() -> dict:
    """The shipped report's shape with its base run only (a later run's pairs must match the base's)."""
    report = json.loads(SHIPPED.read_text(encoding="utf-8"))
    base = next(iter(report["runs"]))
    report["runs"] = {base: report["runs"][base]}
    report.pop("comparison", None)
    return report


def largest_report(folder: Path, pairs: int | None = None, size: int = UPLOAD_CAP - 200_000) -> Path:
    """A report of the most pairs an upload may hold, its captions and references long enough to bring
    the file to ``size`` bytes: the largest on both counts."""
    pairs = pairs or UploadLimits().report.max_pairs
    report = _base_report()
    template = [{k: v for k, v in p.items() if k != "regions"} for p in report["pairs"]]
    report["pairs"] = []
    skeleton = len(json.dumps(report))
    fixed = len(json.dumps({**template[0], "id": "x000000", "caption": "", "refs": ["", ""]}))
    text = max(8, (size - skeleton) // pairs - fixed - 4)  # characters of caption + references per pair
    words = " ".join(p["caption"] for p in template)
    for i in range(pairs):
        p = dict(template[i % len(template)])
        start = (i * 37) % max(1, len(words) - text)
        chunk = words[start:start + text]
        third = len(chunk) // 3
        p.update(id=f"x{i:06d}", caption=chunk[:third], refs=[chunk[third:2 * third], chunk[2 * third:]])
        report["pairs"].append(p)
    path = folder / "largest.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def hostile_reports(folder: Path) -> dict[str, Path]:
    """name -> a report.json a visitor might upload that the app must refuse (or show as text), each with
    the field its refusal must name ("" for one shown)."""
    good = _base_report()
    good["pairs"] = good["pairs"][:40]
    good["meta"]["generator"] = "DEEP"  # where the deep case nests (the shipped report's own settings go)
    cases: dict[str, object] = {}
    cases["deep-nesting"] = json.dumps(good).replace('"DEEP"', "[" * 5000 + "]" * 5000)
    good["meta"]["generator"] = None
    r = copy.deepcopy(good)
    r["meta"] = []
    cases["list-for-object"] = r
    r = copy.deepcopy(good)
    r["pairs"][3]["CIDEr-D"] = "12.5"
    cases["string-for-score"] = r
    r = copy.deepcopy(good)
    r["meta"]["references"] = 7
    cases["int-for-path"] = r
    r = copy.deepcopy(good)
    r["meta"]["references"] = "/etc"
    for p in r["pairs"][:3]:
        p["before"], p["after"] = "/etc/passwd", "../../../../etc/shadow"
    cases["server-paths"] = r
    markup = "<img src=http://127.0.0.1:9/beacon.png> [link](http://127.0.0.1:9/) <i>it</i>"
    r = copy.deepcopy(good)
    base = next(iter(r["runs"]))
    r["runs"] = {markup: r["runs"][base]}
    for p in r["pairs"]:
        p["caption"], p["refs"], p["id"] = markup, [markup], p["id"] + markup
    cases["markup-text"] = r
    cases["not-json"] = "{ this is not json"
    out = {}
    for name, doc in cases.items():
        out[name] = folder / f"{name}.json"
        out[name].write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def start_app(model: str, extra: list[str] = (), log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on 127.0.0.1 at a free port (the caller stops it by its PID); its URL. Its log
    goes to ``log`` (a file: a pipe nobody reads could stall the server)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w") if log else subprocess.DEVNULL)
    wait_ready(url, proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Stop the app by its PID."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def upload_report(visitor: Visitor, path: Path, metric: str = "CIDEr-D"):
    """A report through the Dashboard's upload event, as the page sends it: the reply."""
    (sent,) = visitor.upload(path)
    event = visitor.event(visitor.component(label="Compare with another report.json"), "upload")
    return visitor.call(event["fn_index"], [None, sent, metric])


def dashboard(visitor: Visitor, metric: str = "CIDEr-D"):
    """The Dashboard redrawn for a visitor (the metric picked again): its reply."""
    event = visitor.event(visitor.component(label="metric"), "change")
    return visitor.call(event["fn_index"], [None, metric])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--model", default="embedded")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="m3diff-memory-"))
    report = largest_report(folder)
    limits = UploadLimits()
    n_pairs = limits.report.max_pairs
    print(json.dumps({"report_mb": round(report.stat().st_size / 2**20, 2), "pairs": n_pairs,
                      "estimated_held_mb": round(limits.cost(report.stat().st_size, n_pairs) / 1e6, 1),
                      "store_budget_mb": limits.total_bytes / 1e6}), flush=True)
    proc, url = start_app(args.model)
    visitors = []
    try:
        print(json.dumps({"sessions": 0, "server_mb": rss_mb(proc.pid)}), flush=True)
        for k in range(1, args.sessions + 1):
            v = Visitor(url, timeout=300)
            visitors.append(v)
            t = time.time()
            reply = upload_report(v, report)
            print(json.dumps({"sessions": k, "server_mb": rss_mb(proc.pid), "upload_s": round(time.time() - t, 1),
                              "refused": reply.warnings[:1] or None, "error": reply.error}), flush=True)
        back = dashboard(visitors[0])
        note = (back.outputs or [""])[0]
        print(json.dumps({"first_session_back": note or "(its report is still held)",
                          "server_mb": rss_mb(proc.pid)}), flush=True)
    finally:
        for v in visitors:
            v.close()
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)  # the 19 MB report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
