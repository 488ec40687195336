"""What the app's callbacks need, built once at start: the captioner (and its no-MDP twin) and the reports.

Nothing here is module-level mutable state: ``load_services`` builds a ``Services`` that the callbacks
only read (the report store guards its own uploads), so concurrent requests cannot interfere.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from analysis.madepair import MadePairScorer
from analysis.report import LoadedReport, read_report
from m3diff.batching import PairBatcher
from m3diff.describing import EMBEDDED_DIR, EMBEDDED_TWIN_DIR, ModelLoadError
from m3diff.remote import RemoteCaptioner
from webapp.config import EXAMPLE_REPORT, EXAMPLES_DIR, HERE, AppConfig
from webapp.reports import ReportStore

NO_REPORT_NOTE = (
    "**No shipped evaluation report**: the embedded model's reports belong at "
    "`m3diff/weights/reports/{m3diff,no_mdp}.json`. Until they are there this tab shows the paper's "
    "reference numbers and the example report (the embedded model on the 13 example pairs, "
    "`examples/report.json`: one pair per type, so no intervals). Upload a `report.json` from "
    "`m3diff eval` to see yours."
)


@dataclass
class Services:
    """The captioner, its no-MDP twin (optional), the reports and the settings the app started with."""

    captioner: object  # m3diff.pipeline.DiffCaptioner, or m3diff.remote.RemoteCaptioner (same API)
    twin: object | None = None
    reports: ReportStore = field(default_factory=lambda: ReportStore({}))
    report_note: str = ""
    config: AppConfig = AppConfig()
    batcher: object | None = None  # m3diff.batching.PairBatcher of concurrent /describe calls
    made_pairs: MadePairScorer = field(default_factory=MadePairScorer)  # "Make a pair": its CIDEr-D background

    def __post_init__(self):
        if isinstance(self.reports, dict):  # a plain {name: LoadedReport}, as tests build them
            self.reports = ReportStore(self.reports)
        if self.batcher is None:
            self.batcher = PairBatcher(self.captioner, max_batch=max(1, self.config.api_batch))

    def operator_folders(self) -> tuple[Path, ...]:
        """The folders the operator named at start (examples, shipped reports, --report files and the data
        they were scored on): the only places an uploaded report's images may come from."""
        folders = [EXAMPLES_DIR, EMBEDDED_DIR / "reports", *(Path(p).parent for p in self.config.reports)]
        folders += [r.references_dir for r in self.reports.shared.values() if r.references_dir is not None]
        return tuple(folders)


def source_name(source: str) -> str:
    """How the app names a model to visitors: ``embedded``, a hub id, or a folder's name — never a path
    of the server (``--model DIR`` and the embedded twin load from the server's folders)."""
    if not source or source in ("embedded", "untrained-tiny"):
        return source
    path = Path(source)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return path.name
    if resolved == EMBEDDED_DIR.resolve():
        return "embedded"
    if resolved == EMBEDDED_TWIN_DIR.resolve():
        return "embedded no-MDP twin"
    if path.is_absolute() or path.exists() or source.startswith((".", "~")):
        return path.name or source
    return source  # a hub id ("org/name")


def default_report_paths() -> list[Path]:
    folder = EMBEDDED_DIR / "reports"
    return [p for p in (folder / "m3diff.json", folder / "no_mdp.json") if p.is_file()]


def load_error(exc: Exception, config: AppConfig) -> Exception:
    """A model load error, with what to do about it in the app."""
    return ModelLoadError(
        f"{exc}\nThe app could not start with model {config.model!r}. Large models need a CUDA GPU "
        "(they load in bf16 with SDPA there); leave --model / M3DIFF_MODEL unset for the embedded model.")


def load_services(config: AppConfig, device: str | None = None) -> Services:
    """Load the model (and twin and reports). Raises ``ModelLoadError`` with a message for a person.

    With ``config.separate_process`` the model loads in its own process and this returns at once; the
    first use of the captioner (``build_app`` reads its facts) waits for it and raises the load error."""
    twin_src = config.twin
    if twin_src is None and config.model in (None, "", "embedded") and (EMBEDDED_TWIN_DIR / "config.json").is_file():
        twin_src = str(EMBEDDED_TWIN_DIR)
    captioner, twin = _load_captioners(config, twin_src, device)
    reports, note = load_reports(config)
    return Services(captioner, twin, ReportStore(reports), note, config)


def _load_captioners(config: AppConfig, twin_src: str | None, device: str | None):
    if config.separate_process:
        captioner = RemoteCaptioner.start(config.model, twin=twin_src, device=device)
        return captioner, captioner.twin
    from m3diff.pipeline import DiffCaptioner  # lazy: with the model in its own process, the web process never imports torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the untrained fallback: the app says it on the page
            captioner = DiffCaptioner.from_pretrained(config.model, device=device)
    except ModelLoadError as exc:
        raise load_error(exc, config) from None
    captioner.use_recommended_threads()  # the model lives in this process, which the app owns
    twin = DiffCaptioner.from_pretrained(twin_src, device=device) if twin_src else None
    return captioner, twin


def load_reports(config: AppConfig) -> tuple[dict[str, LoadedReport], str]:
    """The Dashboard's reports (the named ones, else the shipped ones, else the examples'), and a note."""
    paths = [Path(p) for p in config.reports] or default_report_paths()
    reports = {p.stem: read_report(p, search=(HERE,)) for p in paths}
    if reports:
        return reports, ""
    if EXAMPLE_REPORT.is_file():
        reports["examples"] = read_report(EXAMPLE_REPORT, search=(HERE,))
    return reports, NO_REPORT_NOTE
