"""What a visitor's browser does with the served app, in Python, and what no reply may carry.

``Visitor`` speaks Gradio's own queue protocol (upload, ``queue/join`` by the event's index, the event
stream), so a test or the soak (``benchmarks/soak_app.py``) reaches the same callbacks as a page does —
private events included, which ``gradio_client`` cannot call — and sees every reply a page would show:
outputs, errors and warning toasts. ``reply_problems`` says what in a reply must never reach a visitor:
a server path, Python's exception text, markup that a browser would act on.

Only for an app on this machine: ``Visitor`` refuses any address but 127.0.0.1 / localhost.
"""
from __future__ import annotations

import json
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

HERE = Path(__file__).resolve().parents[1]

# What Python says when code failed rather than the app refusing something: never a visitor's reading.
EXCEPTION_TEXT = re.compile(
    r"Traceback \(most recent|object has no attribute|Unknown format code|maximum recursion depth|"
    r"expected str, bytes or os\.PathLike|object is not (subscriptable|iterable|callable)|"
    r"unsupported operand|can only concatenate|invalid literal for|KeyError|TypeError|AttributeError|"
    r"IndexError|ValueError|RecursionError|Cannot move .* to the gradio cache|not created by the application")
# Markup a browser would act on in a toast, a Markdown or an HTML output (escaped text shows &lt; instead).
ACTIVE_MARKUP = re.compile(r"<\s*(img|a|i|b|script|iframe|svg|style|link|object|embed)\b|\]\(\s*(https?|file|data):",
                           re.IGNORECASE)


def server_paths() -> tuple[str, ...]:
    """Folders of this server whose names must not appear in a reply: the checkout and the temp folder."""
    return tuple(sorted({str(HERE), str(HERE.resolve()), tempfile.gettempdir() + "/", "/etc/", str(Path.home())},
                        key=len, reverse=True))


def reply_problems(text: str, markup_allowed: bool = False, plot: bool = False) -> list[str]:
    """What is wrong with a reply's text for a visitor (empty when nothing). ``plot``: a plotly figure's
    JSON, where only tags act (a Markdown link is text there)."""
    problems = []
    for path in server_paths():
        if path in text:
            problems.append(f"names the server path {path}")
    if EXCEPTION_TEXT.search(text):
        problems.append(f"carries exception text ({EXCEPTION_TEXT.search(text).group(0)!r})")
    found = None if markup_allowed else ACTIVE_MARKUP.search(text)
    if found and not (plot and found.group(0).startswith("]")):
        problems.append(f"carries active markup ({found.group(0)!r})")
    return problems


@dataclass
class Reply:
    """One event's outcome as a page sees it: its outputs, its error toast, its warning toasts."""

    outputs: list | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # each output's component type ("markdown", "dataframe", ...)

    def problems(self, laid_out: bool = True) -> list[str]:
        """reply_problems of every text of the reply (markup only where the page lays it out)."""
        found = [p for t in self.texts(laid_out=False) for p in reply_problems(t, markup_allowed=True)]
        if laid_out:  # toasts and plots lay out HTML tags; Markdown outputs links as well
            toasts = [t for t in (self.error, *self.warnings) if t]
            found += [p for t in (*toasts, *self._plots()) for p in reply_problems(t, plot=True)]
            found += [p for t in self.texts(laid_out=True, plots=False)[len(toasts):] for p in reply_problems(t)]
        return sorted(set(found))

    def _plots(self) -> list[str]:
        """Every string of each plotly figure (its JSON escapes "<" as \\u003c, so it is read, not searched)."""
        out = []

        def walk(v):
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        for v, k in zip(self.outputs or [], self.kinds):
            if k == "plot" and isinstance(v, dict) and isinstance(v.get("plot"), str):
                walk(json.loads(v["plot"]))
        return out

    def texts(self, laid_out: bool = False, plots: bool = True) -> list[str]:
        """Every string shown to the visitor (nested in outputs too): what reply_problems reads.
        ``laid_out``: only what the page lays out as markup — toasts (Gradio renders their HTML), Markdown,
        HTML and plots (plotly acts on <a>, <i>, <b> in labels); a table cell or a choice is plain text."""
        out = [t for t in (self.error, *self.warnings) if t]

        def walk(v):
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict):
                for k, x in v.items():
                    if k not in ("path", "url"):  # a file output's cache address, which the page fetches
                        walk(x)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)

        for i, v in enumerate(self.outputs or []):
            kind = self.kinds[i] if i < len(self.kinds) else ""
            if not laid_out or kind in ("markdown", "html") or (plots and kind == "plot"):
                walk(v)
        return out


class Visitor:
    """One browser session of the app at ``url`` (127.0.0.1 only)."""

    def __init__(self, url: str, timeout: float = 120.0):
        host = urlparse(url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"Visitor drives an app on this machine only, not {host!r}")
        self.root = url.rstrip("/")
        self.api = self.root + "/gradio_api"
        self.http = httpx.Client(timeout=timeout)
        self.session = secrets.token_hex(6)
        self.config = self.http.get(self.root + "/config").raise_for_status().json()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ the page's events
    def component(self, label: str | None = None, elem_id: str | None = None) -> int:
        for c in self.config["components"]:
            props = c.get("props", {})
            if ((label is not None and props.get("label") == label)
                    or (elem_id is not None and props.get("elem_id") == elem_id)):
                return c["id"]
        raise KeyError(f"the page has no component {label or elem_id!r}")

    def event(self, component: int, trigger: str) -> dict:
        """The first event of ``trigger`` on ``component`` (as the page's config lists it)."""
        for i, dep in enumerate(self.config["dependencies"]):
            if [component, trigger] in [list(t) for t in dep["targets"]]:
                return {**dep, "fn_index": dep.get("id", i)}
        raise KeyError(f"no {trigger} event on component {component}")

    def upload(self, *paths) -> list[dict]:
        """Files sent as the page sends them, as the FileData the page then passes to an event."""
        files = [("files", (Path(p).name, Path(p).read_bytes(), "application/octet-stream")) for p in paths]
        r = self.http.post(f"{self.api}/upload", files=files)
        r.raise_for_status()
        return [file_data(p, Path(q).name) for p, q in zip(r.json(), paths)]

    def call(self, fn_index: int, data: list, event_data=None, trigger_id: int | None = None) -> Reply:
        """One event through the queue, as the page runs it; its whole reply."""
        body = {"data": data, "event_data": event_data, "fn_index": fn_index, "trigger_id": trigger_id,
                "session_hash": self.session}
        r = self.http.post(f"{self.api}/queue/join", json=body)
        if r.status_code != 200:
            return Reply(error=f"HTTP {r.status_code}: {r.text[:500]}")
        event = r.json().get("event_id")
        types = {c["id"]: c.get("type", "") for c in self.config["components"]}
        dep = next((d for i, d in enumerate(self.config["dependencies"]) if d.get("id", i) == fn_index), {})
        reply = Reply(kinds=[types.get(o, "") for o in dep.get("outputs", [])])
        with self.http.stream("GET", f"{self.api}/queue/data", params={"session_hash": self.session}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event):
                    continue
                kind = msg.get("msg")
                if kind == "log" and msg.get("level") in ("warning", "info", "error"):
                    reply.warnings.append(str(msg.get("log") or ""))
                elif kind == "process_completed":
                    out = msg.get("output") or {}
                    if msg.get("success"):
                        reply.outputs = out.get("data")
                    else:
                        reply.error = str(out.get("error") or "(an error without a message)")
                    return reply
                elif kind in ("close_stream", "unexpected_error"):
                    reply.error = reply.error or str(msg.get("message") or kind)
                    return reply
        return reply


def file_data(path: str, name: str | None = None) -> dict:
    """A file reference as the page sends it (``path`` as the upload route answered, or anything else a
    hostile page might send instead)."""
    return {"path": path, "orig_name": name or Path(str(path)).name, "meta": {"_type": "gradio.FileData"}}
