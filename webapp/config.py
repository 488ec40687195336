"""The app's settings (``AppConfig``) and the one argument parser of ``python app.py`` and ``m3diff app``."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from m3diff.cli import CLIError

HERE = Path(__file__).resolve().parents[1]  # the checkout (or the Space folder) holding app.py
EXAMPLES_DIR = HERE / "examples"
EXAMPLE_REPORT = EXAMPLES_DIR / "report.json"  # `m3diff eval` of the embedded model on the examples
MAX_FILE_SIZE = "20mb"  # a 40 MP PNG fits; load_image refuses bigger pictures before decoding
DEFAULT_MAX_NEW_TOKENS = 96
SESSION_CAPACITY = 256  # browser sessions whose state the server keeps (the oldest go first)


@dataclass(frozen=True)
class AppConfig:
    model: str | None = None  # None / "embedded": the embedded default
    twin: str | None = None  # the no-MDP twin; None: the embedded one when the model is embedded
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1  # model calls at once; CPU torch already uses every core for one call
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    api_batch: int = 4  # /describe calls served together in one batch
    reports: tuple[str, ...] = ()  # report.json files for the Dashboard; default: the shipped ones
    # the model in a process of its own (m3diff.remote): the CPU default of `python app.py`; a ZeroGPU
    # Space needs it in the server's process, where spaces.GPU can reach it
    separate_process: bool = False
    # an image given as a URL in place of an upload is fetched by the server only when the operator says so
    allow_image_urls: bool = False


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every setting of the app, for ``python app.py`` and ``m3diff app`` alike."""
    p.add_argument("--model", default=os.environ.get("M3DIFF_MODEL"),
                   help="'embedded' (default), a model directory, or a hub id ($M3DIFF_MODEL)")
    p.add_argument("--twin", default=os.environ.get("M3DIFF_TWIN"),
                   help="the no-MDP twin to compare with (default: the embedded one when present)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on a network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--concurrency", type=int, default=1, help="streamed (UI) model calls at once (default 1)")
    p.add_argument("--api-batch", type=int, default=4, help="/describe calls batched together (default 4)")
    p.add_argument("--report", action="append", default=[], help="a report.json for the dashboard (repeatable)")
    p.add_argument("--same-process", action="store_true",
                   help="run the model in the web server's process (default: a process of its own, which "
                        "starts in parallel and decodes without stalling the server)")
    p.add_argument("--allow-image-urls", action="store_true",
                   help="let API callers give an image as an http(s) URL, which the server then fetches "
                        "(default: uploads only)")
    return p


def config_from(a: argparse.Namespace) -> AppConfig:
    model = None if a.model in (None, "", "embedded") else a.model
    return AppConfig(model=model, twin=a.twin, host=a.host, port=a.port, concurrency=a.concurrency,
                     api_batch=a.api_batch, reports=tuple(a.report), separate_process=not a.same_process,
                     allow_image_urls=a.allow_image_urls)


def parse_args(argv: list[str] | None = None) -> AppConfig:
    p = argparse.ArgumentParser(prog="app.py", description="Start the m3diff browser app.")
    return config_from(add_arguments(p).parse_args(argv))


# ============================================================================ the `m3diff app` command
def register(sub) -> None:
    """`m3diff app`: found through the ``m3diff.commands`` entry points (pyproject.toml); the same settings as
    ``python app.py``."""
    p = sub.add_parser("app", help="start the browser app", description="Start the Gradio app (same as python app.py).")
    add_arguments(p)
    p.set_defaults(handler=_app_command)


def _app_command(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401  lazy: gradio and the layout load only when the app starts, so `m3diff --help` stays fast
    except ModuleNotFoundError as exc:
        raise CLIError(f"the app needs the 'app' extra ({exc.name} is missing): pip install 'm3diff[app]'") from None
    import app  # lazy: as above

    return app.run(config_from(args))
