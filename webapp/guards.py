"""What stands between a visitor's request and the server: files only as uploads, and replies as text.

Gradio accepts, in place of an uploaded file, any path or URL a page (or a script) names, and answers a
path it will not move with its own error, which names the server's folders ("Cannot move /srv/app/x.png
to the gradio cache dir…"); a URL it fetches from the server. ``refuse_server_files`` answers both with
the app's own line before Gradio looks at them. ``toast`` makes a message fit for Gradio's toasts,
which render HTML: a report's key or a file's name in a refusal is shown as the characters it is.
"""
from __future__ import annotations

import html
import os
import sys
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from gradio_client.utils import is_http_url_like

NOT_AN_UPLOAD = ("send the file itself (an upload); this app opens no path of its server, and fetches no "
                 "URL{urls}")
TOAST_CHARS = 400  # a refusal is one line: a 30,000-character key is cut, not shown whole


def toast(message: str, limit: int = TOAST_CHARS) -> str:
    """A message as one line of text for a toast: whitespace collapsed, cut to ``limit``, HTML escaped."""
    line = " ".join(str(message).split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return html.escape(line, quote=False)


def refusal(message, title: str = "Error") -> gr.Error:
    """The app's answer to something it will not do: one escaped line in the visitor's toast, one line in
    the server's log (Gradio would print a traceback for every refusal otherwise)."""
    print(f"m3diff app: refused: {log_line(message)}", file=sys.stderr)
    return gr.Error(toast(message), title=title, print_exception=False)


def log_line(message: str, limit: int = 2000) -> str:
    """A refusal as one line of the server's log (a visitor's newlines cannot forge more lines)."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def foreign_file(value, allow_urls: bool = False) -> str | None:
    """What in an event's input names a file that was not uploaded to this server (None: nothing)."""
    root = Path(get_upload_folder()).resolve()

    def check(v) -> str | None:
        if isinstance(v, dict):
            path = v.get("path")
            if isinstance(path, str):  # a file reference, marked as one or not: Gradio may read either
                if is_http_url_like(path):
                    return None if allow_urls else "url"
                try:
                    p = Path(os.path.abspath(path)).resolve()
                except (OSError, RuntimeError, ValueError):
                    return "path"
                if p != root and root not in p.parents:
                    return "path"
            return next((r for r in map(check, v.values()) if r), None)
        if isinstance(v, (list, tuple)):
            return next((r for r in map(check, v) if r), None)
        return None

    return check(value)


def refuse_server_files(demo: gr.Blocks, allow_urls: bool = False) -> gr.Blocks:
    """Every event of ``demo`` takes files only as uploads to this server (and URLs only with
    ``allow_urls``, the operator's choice): anything else is refused with the app's line, naming the input,
    before Gradio moves or fetches it. The instance's ``preprocess_data`` is wrapped, as app.py's image
    input wraps its preprocess: Gradio has no hook for it."""
    preprocess = demo.preprocess_data
    urls = "" if allow_urls else " (the operator has not allowed URLs)"

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        for block, value in zip(block_fn.inputs, inputs):
            if getattr(block, "stateful", False):
                continue  # the server's own state for the session: the page's value is not used
            kind = foreign_file(value, allow_urls)
            if kind:
                label = getattr(block, "label", None) or "a file input"
                raise refusal(f"{label}: " + NOT_AN_UPLOAD.format(urls=urls), title="Not an upload")
        return await preprocess(block_fn, inputs, state, explicit_call)

    demo.preprocess_data = preprocess_data
    return demo
