"""Soak the served app as visitors use it: good pairs, bad uploads, server paths and URLs in place of an
upload, hostile and maximal reports through the Dashboard and the Errors tab.

    python benchmarks/soak_app.py [--clients 4] [--seconds 120] [--model embedded]

Starts ``python app.py`` on 127.0.0.1 (a subprocess, stopped by its PID). Each client is a page session
of its own (``webapp.visitor``: Gradio's queue, the events a page fires) and loops over: a good pair
through ``/describe`` over plain HTTP (upload, call, event stream); each bad image upload (a text file
named .png, an empty file, a truncated PNG, a 1×1 image, a decompression bomb); ``/describe`` with a
relative path, an absolute server path, a ``file:`` path and a URL in place of an upload; each hostile
report.json (wrongly typed fields, deep nesting, server paths, markup in its text, not JSON) and the
largest report an upload may be (40,000 pairs, just under 20 MB) through the Dashboard's upload event,
then the Errors tab's table and a pair of it. Every reply — outputs, error and warning toasts — is
checked for server paths, exception text and markup a browser would act on; every outcome against what
it should be. Prints counts by outcome, the server's 5xx and failed events, the replies that leak, and
the web process's resident memory at start, at its peak (sampled every 0.5 s) and at the end, as JSON;
exits 1 on any leak, server error or unexpected outcome. Bounded: stops after ``--seconds`` (each client
finishes the action it is in) or 10,000 actions per client.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_app import ROOT  # noqa: E402  (sibling scripts, not a package)
from bench_report_memory import (dashboard, hostile_reports, largest_report, rss_mb, start_app, stop,  # noqa: E402
                                 upload_report)

from webapp.visitor import Visitor, file_data, reply_problems  # noqa: E402  (after the checkout is on the path)

# what each hostile report must give: the field its one-line refusal names, or None (shown, as text)
REFUSALS = {"list-for-object": "report.meta", "string-for-score": "pairs[3].CIDEr-D",
            "deep-nesting": "nested too deeply", "int-for-path": "meta.references", "not-json": "not JSON",
            "server-paths": None, "markup-text": None}
SERVER_PATHS = {"relative": "app.py", "absolute": str(ROOT / "pyproject.toml"), "file:": "file:///etc/passwd",
                "url": "http://127.0.0.1:9/x.png"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bad_uploads(folder: Path) -> dict[str, Path]:
    """Every kind of image upload the app must refuse with its own message."""
    from PIL import Image

    out = {"not an image": folder / "notes.png", "empty": folder / "empty.png", "truncated": folder / "cut.png",
           "1x1": folder / "dot.png", "bomb": folder / "bomb.png"}
    out["not an image"].write_text("these are my holiday notes, not a picture")
    out["empty"].write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "orange").save(buf, "PNG")
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("RGB", (1, 1), "red").save(out["1x1"])
    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    out["bomb"].write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    return out


class Soak:
    def __init__(self, url: str):
        import httpx

        self.url = url
        self.api = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=300)
        self.outcomes: Counter = Counter()
        self.server_errors = 0
        self.leaks: list[str] = []
        self.unexpected: list[str] = []
        self.lock = threading.Lock()

    def count(self, kind: str, ok: bool, problems: list[str] = (), status: int | None = None,
              detail: str | None = None) -> None:
        with self.lock:
            self.outcomes[kind if ok else f"UNEXPECTED {kind}"] += 1
            if not ok and len(self.unexpected) < 10:
                self.unexpected.append(f"{kind}: {detail or '(see the outcome)'}"[:300])
            if status is not None and status >= 500:
                self.server_errors += 1
            self.leaks += [f"{kind}: {p}" for p in problems][:5]

    # ---------------------------------------------------------------- /describe over plain HTTP
    def describe_http(self, before: Path, after: Path, expect_error: bool, kind: str) -> None:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in (before, after)]
        r = self.http.post(f"{self.api}/upload", files=files)
        if r.status_code != 200:
            return self.count(f"{kind}: upload {r.status_code}", False, status=r.status_code)
        data = [file_data(p) for p in r.json()] + [16]
        r = self.http.post(f"{self.api}/call/describe", json={"data": data})
        if r.status_code != 200:
            return self.count(f"{kind}: call {r.status_code}", False, status=r.status_code)
        event, text = None, ""
        with self.http.stream("GET", f"{self.api}/call/describe/{r.json()['event_id']}") as s:
            status = s.status_code
            for line in s.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    text = line[5:]
                    break
        ok = (event == "error" and "image" in text) if expect_error else event == "complete"
        self.count(kind, ok, reply_problems(text), status)

    # ---------------------------------------------------------------- as a page
    def describe_path(self, visitor: Visitor, where: str, good: dict) -> None:
        deps = visitor.config["dependencies"]
        fn = next(d.get("id", i) for i, d in enumerate(deps) if d.get("api_name") == "describe")
        reply = visitor.call(fn, [file_data(SERVER_PATHS[where]), good, 8])
        ok = bool(reply.error) and reply.error.startswith("Before:") and "upload" in reply.error
        self.count(f"describe with a server path ({where}): refused", ok, reply.problems(laid_out=False))

    def report(self, visitor: Visitor, name: str, path: Path) -> None:
        reply = upload_report(visitor, path)
        field = REFUSALS.get(name)
        if field is None:  # a report the Dashboard shows
            ok = reply.error is None and not reply.warnings
        else:
            ok = reply.error is None and len(reply.warnings) == 1 and field in reply.warnings[0]
        self.count(f"report {name}: {'shown' if field is None else 'refused'}", ok, reply.problems(),
                   detail=reply.error or "; ".join(reply.warnings) or "shown")
        if field is None and ok:
            self.errors_tab(visitor, path.stem)

    def errors_tab(self, visitor: Visitor, name: str) -> None:
        deps = visitor.config["dependencies"]
        run = visitor.component(label="run")
        picker = next(d.get("id", i) for i, d in enumerate(deps) if d["outputs"] == [run])
        replies = [visitor.call(picker, [None, None])]
        # the name the session shows it under: a name uploaded again is primed ("largest'")
        choices = (replies[0].outputs or [{}])[0].get("choices") or [[name]]
        name = choices[-1][0]
        rows = visitor.event(visitor.component(label="sort by"), "change")["fn_index"]
        replies.append(visitor.call(rows, [None, name, "all", "all", "CIDEr-D", True]))
        table = replies[-1].outputs[0] if replies[-1].outputs else None
        if table and table.get("data"):
            select = visitor.event(visitor.component(elem_id="errors-table"), "select")["fn_index"]
            replies.append(visitor.call(select, [None, name, table], event_data={"index": [0, 0], "value": ""}))
        ok = all(r.error is None for r in replies) and len(replies) == 3
        why = next((r.error for r in replies if r.error), None) or f"{len(replies)} of 3 events answered"
        self.count("errors tab of a shown report", ok, [p for r in replies for p in r.problems()],
                   detail=None if ok else why)


class Memory(threading.Thread):
    """The web process's resident memory, sampled every 0.5 s: its peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--model", default="embedded")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="m3diff-soak-"))
    bad = bad_uploads(tmp)
    hostile = hostile_reports(tmp)
    largest = largest_report(tmp)
    ex = ROOT / "examples" / "images"
    good = (ex / "color_before.png", ex / "color_after.png")
    log = tmp / "server.log"
    proc, url = start_app(args.model, log=log)
    memory = Memory(proc.pid)
    try:
        soak = Soak(url)
        soak.describe_http(*good, expect_error=False, kind="warm-up")
        start_mem = rss_mb(proc.pid)
        memory.start()
        deadline = time.time() + args.seconds

        def client(k: int) -> int:
            visitor = Visitor(url, timeout=300)
            try:
                (sent,) = visitor.upload(good[1])
                actions = [lambda: soak.describe_http(*good, expect_error=False, kind="describe a good pair")]
                actions += [lambda f=f, n=n: soak.describe_http(f, good[1], True, f"describe {n}: refused")
                            for n, f in bad.items()]
                actions += [lambda w=w: soak.describe_path(visitor, w, sent) for w in SERVER_PATHS]
                actions += [lambda n=n, f=f: soak.report(visitor, n, f) for n, f in hostile.items()]
                actions += [lambda: soak.report(visitor, "largest", largest)]
                n = 0
                while time.time() < deadline and n < 10_000:
                    actions[(k * 5 + n) % len(actions)]()
                    n += 1
                soak.count("dashboard redrawn at the end", dashboard(visitor).error is None)
                return n
            finally:
                visitor.close()

        with ThreadPoolExecutor(args.clients) as pool:
            actions = sum(pool.map(client, range(args.clients)))
        memory.done.set()
        end_mem = rss_mb(proc.pid)
        out = {"clients": args.clients, "seconds": args.seconds, "actions": actions,
               "outcomes": dict(sorted(soak.outcomes.items())), "server_5xx": soak.server_errors,
               "replies_leaking": len(soak.leaks), "leaks": soak.leaks[:10], "unexpected": soak.unexpected,
               "web_process_mb": {"start": start_mem, "peak": max(memory.peak, end_mem or 0), "end": end_mem},
               "server_tracebacks": log.read_text().count("Traceback") if log.is_file() else None,
               "server_refusal_lines": log.read_text().count("m3diff app: refused") if log.is_file() else None}
        print(json.dumps(out, indent=1))
        ok = (soak.server_errors == 0 and not soak.leaks and not out["server_tracebacks"]
              and not any(k.startswith("UNEXPECTED") for k in soak.outcomes))
        return 0 if ok else 1
    finally:
        memory.done.set()
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)  # ~20 MB of reports per run


if __name__ == "__main__":
    raise SystemExit(main())
