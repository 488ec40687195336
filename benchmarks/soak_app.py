"""Soak the app: CLIENTS clients for SECONDS, mixing good pairs, every kind of bad upload and report uploads.

    python benchmarks/soak_app.py [--clients 4] [--seconds 120] [--model embedded]

Starts `python app.py` on 127.0.0.1 (a subprocess, stopped by its PID) and has each client loop over:
a good pair through /describe (Gradio's plain HTTP API: upload, call, event stream); each bad upload
(a text file named .png, an empty file, a truncated PNG, a 1×1 image, a decompression bomb) through
/describe, which must come back as the app's own one-line error; and a report.json (a good one, and one
that names /etc/passwd and another folder as its images) through the upload route. Prints requests,
outcomes by kind, the server's 5xx count (must be 0), errors whose text leaks a server path, and the
resident memory of the server and its model process at start and end, as JSON. Bounded in count and
time; traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import ROOT, free_port, wait_ready  # noqa: E402  (a sibling script, not a package)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bad_uploads(folder: Path) -> dict[str, Path]:
    """Every kind of upload the app must refuse with its own message."""
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


def reports(folder: Path) -> list[Path]:
    good = ROOT / "m3diff" / "weights" / "reports" / "m3diff.json"
    hostile = json.loads(good.read_text())
    hostile["meta"]["references"] = "/etc"
    for p in hostile.get("pairs", [])[:3]:
        p["before"], p["after"] = "/etc/passwd", "../../../../etc/shadow"
    path = folder / "hostile.json"
    path.write_text(json.dumps(hostile))
    return [good, path]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def tree_rss(pid: int) -> dict[str, float | None]:
    """The server's and its children's (the model process) resident memory."""
    children = []
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    return {"server_mb": rss_mb(pid), "model_process_mb": sum(filter(None, map(rss_mb, children))) or None}


class Soak:
    def __init__(self, url: str):
        import httpx

        self.api = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=120)
        self.outcomes: Counter = Counter()
        self.server_errors = 0
        self.leaks: list[str] = []
        self.lock = threading.Lock()

    def _count(self, kind: str, status: int | None = None):
        with self.lock:
            self.outcomes[kind] += 1
            if status is not None and status >= 500:
                self.server_errors += 1

    def upload(self, paths: list[Path]) -> list[str] | None:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        r = self.http.post(f"{self.api}/upload", files=files)
        self._count(f"upload {r.status_code}", r.status_code)
        return r.json() if r.status_code == 200 else None

    def describe(self, before: Path, after: Path, expect_error: bool) -> None:
        paths = self.upload([before, after])
        if paths is None:
            return
        data = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in paths] + [16]
        r = self.http.post(f"{self.api}/call/describe", json={"data": data})
        if r.status_code != 200:
            self._count(f"describe call {r.status_code}", r.status_code)
            return
        kind, text = None, ""
        with self.http.stream("GET", f"{self.api}/call/describe/{r.json()['event_id']}") as s:
            if s.status_code >= 500:
                self.server_errors += 1
            for line in s.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    text = line[5:]
                    break
        if kind == "error" and ("/tmp" in text or "gradio" in text.lower()):
            with self.lock:
                self.leaks.append(text[:200])
        label = "refused as expected" if kind == "error" and expect_error else (
            "described" if kind == "complete" and not expect_error else f"UNEXPECTED {kind}")
        self._count(f"describe: {label}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--model", default="embedded")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="m3diff-soak-"))
    bad = bad_uploads(tmp)
    reps = reports(tmp)
    ex = ROOT / "examples" / "images"
    good = (ex / "color_before.png", ex / "color_after.png")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", args.model, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        soak = Soak(url)
        soak.describe(*good, expect_error=False)  # warm-up
        start_mem = tree_rss(proc.pid)
        actions = [lambda: soak.describe(*good, expect_error=False)]
        actions += [lambda f=f: soak.describe(f, good[1], expect_error=True) for f in bad.values()]
        actions += [lambda r=r: soak.upload([r]) for r in reps]
        deadline = time.time() + args.seconds

        def client(k: int) -> int:
            n = 0
            while time.time() < deadline and n < 10_000:
                actions[(k + n) % len(actions)]()
                n += 1
            return n

        with ThreadPoolExecutor(args.clients) as pool:
            requests = sum(pool.map(client, range(args.clients)))
        end_mem = tree_rss(proc.pid)
        out = {"clients": args.clients, "seconds": args.seconds, "actions": requests,
               "outcomes": dict(sorted(soak.outcomes.items())), "server_5xx": soak.server_errors,
               "errors_leaking_server_paths": len(soak.leaks), "memory_start": start_mem, "memory_end": end_mem}
        print(json.dumps(out, indent=1))
        ok = soak.server_errors == 0 and not soak.leaks and not any(k.startswith("describe: UNEXPECTED")
                                                                      for k in soak.outcomes)
        return 0 if ok else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
