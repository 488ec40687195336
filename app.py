"""The m3diff browser app: describe a pair and see why; break the errors down by change type.

    python app.py [--model DIR|HUB_ID] [--twin DIR] [--host 127.0.0.1] [--port 7860]
    m3diff app    (the same)

Three tabs — Describe (a pair → caption streamed token by token, per-layer MDP Score, difference-attention
heatmaps, "explain a word", the no-MDP twin, the model card), Dashboard (an evaluation report per change
type and domain, run against run, CSV/LaTeX export) and Errors (a report's test pairs, filterable and
sortable; a row shows the pair, references, prediction and trace).

The app is thin: it lays out what ``m3diff`` and ``analysis`` compute. Nothing here is module-level
mutable state: ``load_services`` builds the models (once, at start; on a ZeroGPU Space that is at import
time, which the platform requires) and ``build_app`` wires them into callbacks through closures.
Every callback below is a plain function of its inputs, tested without a browser (tests/app).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
EXAMPLE_REPORT = EXAMPLES_DIR / "report.json"  # `m3diff eval` of the placeholder model on the examples
MAX_FILE_SIZE = "20mb"  # a 40 MP PNG fits; load_image refuses bigger pictures before decoding
METRICS = ("CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "SPICE")
SHOWN_METRICS = ("CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L")  # SPICE has no offline route (docs/analysis.md)
DEFAULT_MAX_NEW_TOKENS = 96

UNTRAINED_NOTE = (
    "**No trained weights are installed yet** (`m3diff/weights/` is empty): this app runs a tiny model with "
    "**random** weights, so its captions are noise. The Score chart and heatmaps are real computations of "
    "that random model. Start with `--model DIR` (or `M3DIFF_MODEL`) to use a trained model."
)
EMBEDDED_LIMITS = (
    "The embedded model is tiny and was trained **only on generated scenes** (`m3diff synth`: rendered "
    "3D-style scenes and objects composited into a few scikit-image photos, 12 change types). It has never "
    "seen real photo pairs: on them (e.g. the motorcycle example) expect captions about generated-scene "
    "objects that are not there. It knows English only, at most ~4 changes per pair, and no camera motion "
    "beyond small shifts and zooms."
)


# ============================================================================ services (models, reports)
@dataclass(frozen=True)
class AppConfig:
    model: str | None = None  # None / "embedded": the embedded default
    twin: str | None = None  # the no-MDP baseline; default: m3diff/weights/twin when the model is embedded
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1  # model calls at once; CPU torch already uses every core for one call
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    api_batch: int = 4  # /describe calls served together in one batch
    reports: tuple[str, ...] = ()  # report.json files for the Dashboard; default: the shipped ones
    # the model in a process of its own (m3diff.remote): the CPU default of `python app.py`; a ZeroGPU
    # Space needs it in the server's process, where spaces.GPU can reach it
    separate_process: bool = False


class PairBatcher:
    """Runs concurrent ``/describe`` calls as one batch (``DiffCaptioner.describe_batch``).

    Each caller validates its own images first (so a bad upload is that caller's error only), then
    queues its pair. Whichever caller holds the run lock describes every queued pair with the same
    settings, up to ``max_batch``, in one generate; the others find their results ready. On a CPU a batch
    of 4 costs far less than 4 single calls, so 4 clients at once wait about one call, not four.
    No thread of its own; the only state is the queue, guarded by a lock.
    """

    def __init__(self, captioner, max_batch: int = 4):
        import threading

        self.captioner = captioner
        self.max_batch = max_batch
        self._queue: list[dict] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def describe(self, before, after, settings):
        import threading

        item = {"pair": (before, after), "settings": settings, "done": threading.Event(), "result": None,
                "error": None}
        with self._queue_lock:
            self._queue.append(item)
        with self._run_lock:
            if not item["done"].is_set():
                with self._queue_lock:
                    batch = [item] + [q for q in self._queue if q is not item and q["settings"] == settings]
                    batch = batch[: self.max_batch]
                    for q in batch:
                        self._queue.remove(q)
                try:
                    results = self.captioner.describe_batch([q["pair"] for q in batch], settings=settings)
                    for q, r in zip(batch, results):
                        q["result"] = r
                except Exception as exc:  # noqa: BLE001 — handed to every caller of the failed batch
                    for q in batch:
                        q["error"] = exc
                for q in batch:
                    q["done"].set()
        item["done"].wait()
        if item["error"] is not None:
            raise item["error"]
        return item["result"]


@dataclass
class Services:
    """What the callbacks need, built once: the captioner, its no-MDP twin (optional) and the reports.

    Not mutated after construction: callbacks only read it, so concurrent requests cannot interfere.
    """

    captioner: object  # m3diff.pipeline.DiffCaptioner, or m3diff.remote.RemoteCaptioner (same API)
    twin: object | None = None
    reports: dict[str, dict] = field(default_factory=dict)  # run name -> report.json content
    report_note: str = ""
    config: AppConfig = AppConfig()
    batcher: PairBatcher | None = None  # batches concurrent /describe calls; None: one call at a time

    def __post_init__(self):
        if self.batcher is None:
            self.batcher = PairBatcher(self.captioner, max_batch=max(1, self.config.api_batch))


def default_report_paths() -> list[Path]:
    from m3diff.describing import EMBEDDED_DIR

    folder = EMBEDDED_DIR / "reports"
    return [p for p in (folder / "m3diff.json", folder / "no_mdp.json") if p.is_file()]


def load_error(exc: Exception, config: AppConfig) -> Exception:
    """A model load error, with what to do about it in the app."""
    from m3diff.describing import ModelLoadError

    return ModelLoadError(
        f"{exc}\nThe app could not start with model {config.model!r}. Large models need a CUDA GPU "
        "(they load in bf16 with SDPA there); leave --model / M3DIFF_MODEL unset for the embedded model.")


def load_services(config: AppConfig, device: str | None = None) -> Services:
    """Load the model (and twin and reports). Raises ``ModelLoadError`` with a message for a person.

    With ``config.separate_process`` the model loads in its own process and this returns at once; the
    first use of the captioner (``build_app`` reads its facts) waits for it and raises the load error."""
    from m3diff.describing import EMBEDDED_TWIN_DIR, ModelLoadError

    twin_src = config.twin
    if twin_src is None and config.model in (None, "", "embedded") and (EMBEDDED_TWIN_DIR / "config.json").is_file():
        twin_src = str(EMBEDDED_TWIN_DIR)
    if config.separate_process:
        from m3diff.remote import RemoteCaptioner

        captioner = RemoteCaptioner.start(config.model, twin=twin_src, device=device)
        twin = captioner.twin
    else:
        from m3diff.pipeline import DiffCaptioner

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the untrained fallback: the app says it on the page
                captioner = DiffCaptioner.from_pretrained(config.model, device=device)
        except ModelLoadError as exc:
            raise load_error(exc, config) from None
        twin = DiffCaptioner.from_pretrained(twin_src, device=device) if twin_src else None
    paths = [Path(p) for p in config.reports] or default_report_paths()
    reports, note = {}, ""
    for p in paths:
        reports[p.stem] = load_report(p)
    if not reports:
        note = ("**No shipped evaluation report yet**: the embedded model's reports will be at "
                "`m3diff/weights/reports/{m3diff,no_mdp}.json` once it is trained. Until then this tab shows "
                "the paper's reference numbers, and the example report: the model now loaded scored on the "
                "13 example pairs (`examples/report.json`, one pair per type, so no intervals). "
                "Upload a `report.json` from `m3diff eval` to see yours.")
        if EXAMPLE_REPORT.is_file():
            reports["examples"] = load_report(EXAMPLE_REPORT)
    return Services(captioner, twin, reports, note, config)


# ============================================================================ inputs
def load_pair(before, after):
    """Both images through ``m3diff.images.load_image``; any problem becomes one ``gr.Error`` for a person."""
    import gradio as gr

    from m3diff.images import ImageError, load_image

    if before is None or after is None:
        missing = " and ".join(n for n, v in (("before", before), ("after", after)) if v is None)
        raise gr.Error(f"Add the {missing} image (upload one or pick an example below).", title="Missing image")
    try:
        return load_image(before, name="before image"), load_image(after, name="after image")
    except ImageError as exc:
        raise gr.Error(_strip_tmp(str(exc)), title="Unusable image") from None


def _strip_tmp(message: str) -> str:
    """Gradio's upload cache paths mean nothing to a person: keep the file name only."""
    tmp = tempfile.gettempdir()
    out = []
    for word in message.split(" "):
        out.append(Path(word).name if word.startswith(tmp) else word)
    return " ".join(out)


# ============================================================================ figures (analysis.figures)
def score_figure(trace: dict | None, layer_scores: dict):
    """Bars of the mean MDP Score per vision layer, with the spread of its channel weights."""
    from analysis.figures import mdp_scores

    per_channel = (trace or {}).get("score") or None
    fig = mdp_scores({int(k): float(v) for k, v in layer_scores.items()}, per_channel)
    fig.update_layout(height=300, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def dashboard_figure(reports: dict[str, dict], metric: str):
    """Per change type (with intervals) for evaluation reports; per domain for the paper's numbers."""
    from analysis.figures import metrics_by_domain, metrics_by_type
    from analysis.paper import paper_reports

    if reports:
        fig = metrics_by_type(reports, metric)
    else:
        fig = metrics_by_domain(paper_reports(), metric)
        fig.update_layout(title=f"{metric} reported in the paper (OmniDiff Table 3), per domain")
    fig.update_layout(height=380)
    return fig


# ============================================================================ reports (tables)
class ReportError(ValueError):
    """A report.json that is not one ``m3diff eval`` wrote; the message says what is wrong."""


def load_report(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path.name} could not be read ({exc.__class__.__name__}).") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path.name} is not JSON (line {exc.lineno}: {exc.msg}).") from None
    data = validate_report(data, path.name)
    data["_images"] = resolve_images(data, path.parent)  # for the Errors tab: where each pair's images are
    return data


def validate_report(data, name: str = "report") -> dict:
    if not isinstance(data, dict) or "overall" not in data or "per_type" not in data:
        raise ReportError(f"{name} is not a report.json from `m3diff eval`: it needs the keys 'overall' and "
                          "'per_type' (and usually 'per_domain' and 'pairs').")
    if not isinstance(data["per_type"], dict) or not isinstance(data.get("per_domain", {}), dict):
        raise ReportError(f"{name}: 'per_type' and 'per_domain' must map names to scores.")
    pairs = report_pairs(data)
    if not isinstance(pairs, list) or any(not isinstance(p, dict) or "id" not in p for p in pairs):
        raise ReportError(f"{name}: 'pairs' must be a list of per-pair records with an 'id'.")
    return data


def report_pairs(report: dict) -> list[dict]:
    return report.get("pairs", report.get("per_pair", []))


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.1f}"
    if ci:
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return s


def slice_table(reports: dict[str, dict], key: str, metrics=SHOWN_METRICS):
    """Rows: slices of ``key`` ("per_type" | "per_domain"), plus overall; columns: n and metric [CI] per run."""
    import pandas as pd

    names: list[str] = []
    for rep in reports.values():
        names += [n for n in rep.get(key, {}) if n not in names]
    if key == "per_type":
        from m3diff.change_types import TYPE_IDS

        names = [t for t in TYPE_IDS if t in names] + [n for n in names if n not in TYPE_IDS]
    rows = []
    for slice_name in ["overall", *names]:
        row = {"slice": slice_name}
        for run, rep in reports.items():
            s = rep["overall"] if slice_name == "overall" else rep.get(key, {}).get(slice_name)
            prefix = f"{run}: " if len(reports) > 1 else ""
            row[f"{prefix}n"] = None if s is None else s.get("n")
            for m in metrics:
                row[f"{prefix}{m}"] = "—" if s is None else _fmt(s.get(m), (s.get("ci") or {}).get(m))
        rows.append(row)
    return pd.DataFrame(rows)


def delta_table(reports: dict[str, dict], base: str | None = None, metrics=SHOWN_METRICS):
    """Each run minus the base run, per overall / type / domain slice (where both have the slice)."""
    import pandas as pd

    if len(reports) < 2:
        return pd.DataFrame({"note": ["load a second report to compare runs"]})
    base = base if base in reports else next(iter(reports))
    b = reports[base]
    rows = []
    for run, rep in reports.items():
        if run == base:
            continue
        for kind, key in (("overall", None), ("type", "per_type"), ("domain", "per_domain")):
            pairs = [("overall", rep["overall"], b["overall"])] if key is None else [
                (n, s, b.get(key, {}).get(n)) for n, s in rep.get(key, {}).items()]
            for name, s, t in pairs:
                if t is None:
                    continue
                row = {"run": f"{run} − {base}", "slice": f"{kind}:{name}" if key else "overall",
                       "n": s.get("n"), "n base": t.get("n")}
                for m in metrics:
                    x, y = s.get(m), t.get(m)
                    row[f"Δ {m}"] = None if x is None or y is None else round(x - y, 2)
                rows.append(row)
    return pd.DataFrame(rows)


def paper_table():
    """The paper's reference numbers (OmniDiff Table 3, x100), from analysis.paper."""
    import pandas as pd

    from analysis.paper import OMNIDIFF_TABLE3

    rows = []
    for method, doms in OMNIDIFF_TABLE3.items():
        row = {"method (paper, Table 3)": method}
        for dom, vals in doms.items():
            row.update({f"{dom} {m}": vals.get(m) for m in SHOWN_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def combined_report(reports: dict[str, dict]) -> dict:
    """Several loaded reports as one report.json with ``runs`` (what analysis.report's exports read)."""
    base = next(iter(reports))
    rep = dict(reports[base])
    rep["meta"] = dict(rep.get("meta") or {}, run=base)
    if len(reports) > 1:
        rep["runs"] = dict(reports)
    return rep


def export_report(reports: dict[str, dict], fmt: str) -> str:
    """The loaded reports as CSV or a LaTeX table (analysis.report), in a fresh temporary folder:
    never a fixed path, since requests run at the same time."""
    from analysis import report as R

    folder = Path(tempfile.mkdtemp(prefix="m3diff-export-"))
    if fmt == "csv":
        path = folder / "m3diff_scores.csv"
        text = R.csv_text(combined_report(reports)) if reports else paper_table().to_csv(index=False)
    elif fmt == "latex":
        path = folder / "m3diff_table.tex"
        text = R.latex_table(combined_report(reports)) if reports else paper_table().to_latex(index=False)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    path.write_text(text, encoding="utf-8")
    return str(path)


def pairs_frame(report: dict, change_type: str = "all", domain: str = "all", sort_by: str = "CIDEr-D",
                ascending: bool = True):
    """A report's test pairs, filtered by change type and domain, sorted by a per-pair score (worst first)."""
    import pandas as pd

    rows = []
    for p in report_pairs(report):
        types = p.get("types", p.get("change_types", [])) or []
        if change_type != "all" and change_type not in types:
            continue
        if domain != "all" and p.get("domain", "") != domain:
            continue
        row = {"id": p["id"], "types": ", ".join(types), "domain": p.get("domain", "")}
        row.update({m: p.get(m) for m in SHOWN_METRICS})
        row["prediction"] = p.get("caption", p.get("prediction", ""))
        rows.append(row)
    df = pd.DataFrame(rows, columns=["id", "types", "domain", *SHOWN_METRICS, "prediction"])
    if sort_by in df.columns and len(df):
        df = df.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    return df.reset_index(drop=True)


def report_choices(report: dict) -> tuple[list[str], list[str]]:
    types, domains = [], []
    for p in report_pairs(report):
        types += [t for t in p.get("types", p.get("change_types", [])) or [] if t not in types]
        if p.get("domain") and p["domain"] not in domains:
            domains.append(p["domain"])
    from m3diff.change_types import TYPE_IDS

    return [t for t in TYPE_IDS if t in types], sorted(domains)


def resolve_images(report: dict, report_dir: Path | None = None) -> dict[str, list[str]]:
    """id -> [before, after] files, from the references the report was scored against (meta.references),
    looked up as written, then relative to the report's folder and to the app's folder."""
    meta = report.get("meta") or {}
    refs = meta.get("references")
    if not refs:
        return {}
    from analysis.inputs import InputError, load_references

    ref = Path(refs)
    candidates = [ref] if ref.is_absolute() else [p / ref for p in (report_dir, Path.cwd(), HERE) if p is not None]
    for c in candidates:
        if not c.exists():
            continue
        try:
            pairs = load_references(c.resolve(), meta.get("format"), meta.get("split"))
        except (InputError, ValueError, OSError):
            continue
        return {p.id: [str(p.before), str(p.after)] for p in pairs if p.before and p.after}
    return {}


def pair_images(report: dict, record: dict) -> tuple[str, str] | None:
    """The before/after files of a report's pair, if they can be found and exist."""
    files = [record.get("before"), record.get("after")]
    if not all(files):
        files = (report.get("_images") or {}).get(record["id"]) or [None, None]
    if not all(files) or not all(Path(f).is_file() for f in files):
        return None
    return files[0], files[1]


# ============================================================================ describe
def model_card(captioner, twin=None) -> str:
    """A short model card of what is loaded: source, size, MDP layers, training data, limits."""
    info = captioner.info
    counts = info.parameters
    lines = [f"### Model: `{info.source}`", ""]
    if not info.trained:
        lines += ["> ⚠️ " + UNTRAINED_NOTE, ""]
    lines += [
        f"- **Size**: {counts['total'] / 1e6:,.2f} M parameters (vision {counts['vision'] / 1e6:.2f} M, "
        f"MDP {counts['mdp'] / 1e6:.2f} M, language model {counts['language_model'] / 1e6:.2f} M)",
        f"- **MDP**: " + (f"on vision layers {list(info.mdp_layers)}, depth {info.mdp_depth}" if info.use_mdp
                          else "off (baseline)"),
        f"- **Images**: {info.image_size}px, {info.num_image_tokens} tokens each; "
        f"device `{info.device}`, dtype `{info.dtype}`",
        f"- **No-MDP twin**: " + (f"`{twin.source}` loaded" if twin is not None else "not loaded"),
    ]
    card = _read_card(info.source)
    if info.source in ("embedded", "untrained-tiny"):
        lines += ["", "**What it knows and does not know.** " + EMBEDDED_LIMITS]
    if card:
        lines += ["", "<details><summary>The model's own card</summary>", "", card, "", "</details>"]
    return "\n".join(lines)


def _read_card(source: str) -> str:
    from m3diff.describing import EMBEDDED_DIR

    folder = EMBEDDED_DIR if source == "embedded" else Path(source)
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    text = readme.read_text(encoding="utf-8")
    if text.startswith("---"):  # hub front-matter is metadata, not prose
        end = text.find("\n---", 3)
        text = text[end + 4:] if end > 0 else text
    return text.strip()[:4000]


@dataclass
class Shown:
    """What the Describe tab keeps between events (in gr.State): the pair and its trace, plain data."""

    before: object = None  # PIL images, as loaded
    after: object = None
    trace: dict | None = None
    caption: str = ""


def caption_words(caption: str) -> list[str]:
    """The words a person can ask about, as "index: word" (a repeated word stays distinct); the indices
    are analysis.attribution's, so the word explained is the word picked."""
    from m3diff.describing import caption_words as words

    return [f"{i}: {w}" for i, w in enumerate(words(caption or ""))]


def describe_events(services: Services, before, after, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
                    ) -> Iterator[tuple[str, dict, Shown]]:
    """The pair through the captioner, streamed: (caption so far, layer scores, Shown) per token."""
    from m3diff.describing import GenerationSettings

    b, a = load_pair(before, after)
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens))
    for d in services.captioner.describe_stream(b, a, settings=settings):
        yield d.caption, d.layer_scores, Shown(b, a, d.trace, d.caption)


def describe_api(services: Services, before, after, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """The ``/describe`` endpoint: (caption, {layer: mean Score}) for two image files."""
    from m3diff.describing import GenerationSettings

    b, a = load_pair(before, after)
    d = services.batcher.describe(b, a, GenerationSettings(max_new_tokens=int(max_new_tokens)))
    return d.caption, {str(k): round(float(v), 6) for k, v in d.layer_scores.items()}


def heatmaps(shown: Shown | None, layer, kind: str):
    """The chosen MDP layer's map over each image (one colour scale for both), and the slider pair."""
    import gradio as gr

    from m3diff.overlay import overlay_pair

    if shown is None or shown.trace is None:
        return None, None
    layer = int(str(layer).lstrip("L"))
    try:
        return overlay_pair(shown.before, shown.after, shown.trace, layer, kind)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None


def explain_word(services: Services, shown: Shown | None, word: str | None):
    """Captum attribution of one caption word on both images (analysis.attribution), as overlays on
    one shared colour scale, and a line saying what was explained."""
    import gradio as gr

    from m3diff.overlay import overlay
    from m3diff.remote import call_on

    if shown is None or not shown.caption:
        raise gr.Error("Describe a pair first, then pick a word of its caption.")
    if not word:
        raise gr.Error("Pick a word of the caption to explain.")
    index = int(str(word).split(":", 1)[0])
    try:
        mb, ma, note = call_on(services.captioner, "app:explain_maps", shown.before, shown.after, shown.caption, index)
    except ValueError as exc:
        raise gr.Error(str(exc), title="Cannot explain this word") from None
    scale = (float(min(mb.min(), ma.min())), float(max(mb.max(), ma.max())))
    return overlay(shown.before, mb, scale=scale), overlay(shown.after, ma, scale=scale), note


def explain_maps(captioner, before, after, caption: str, index: int):
    """Where the model lives: the word's attribution maps on both images (numpy) and a line saying what
    was explained: plain data, so it crosses to the web process without torch."""
    import numpy as np

    from analysis.attribution import explain_word as attribute

    res = attribute(captioner, before, after, caption, index, overlay_side=512)
    mb, ma = (np.asarray(m, dtype=np.float32) for m in res.image_maps)
    note = (f"**{res.word}** (word {res.word_index}, tokens {res.tokens}): log p = {res.score:.2f}; "
            f"{res.method}, brighter = pixels that raise it more")
    return mb, ma, note


def twin_caption(services: Services, shown: Shown | None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """The same pair through the no-MDP twin (the baseline), when one is loaded."""
    from m3diff.describing import GenerationSettings

    if services.twin is None:
        return "(no no-MDP twin loaded: start with --twin DIR to compare)"
    if shown is None or shown.before is None:
        return ""
    return services.twin.describe(shown.before, shown.after, trace=False,
                                  settings=GenerationSettings(max_new_tokens=int(max_new_tokens))).caption


def load_examples() -> list[dict]:
    path = EXAMPLES_DIR / "test.json"  # m3diff's dataset layout: `m3diff eval --refs examples` reads it too
    if not path.is_file():
        return []
    return [dict(e, before=str(EXAMPLES_DIR / e["before"]), after=str(EXAMPLES_DIR / e["after"]))
            for e in json.loads(path.read_text(encoding="utf-8"))]


# ============================================================================ layout
CSS = """
#caption textarea {font-size: 1.1rem; line-height: 1.5;}
.note {border-left: 4px solid #f59e0b; padding-left: .6rem;}
"""


def build_app(services: Services, gpu: Callable[[Callable], Callable] = lambda f: f):
    """The Blocks app. ``gpu`` wraps the model calls (``spaces.GPU(duration=...)`` on a ZeroGPU Space)."""
    import gradio as gr

    from m3diff.overlay import MAP_KINDS, common_size

    cap = services.captioner
    layers = [f"L{k}" for k in cap.info.mdp_layers]  # waits here for a model loading in its own process
    examples = load_examples()
    kind_choices = [(label, key) for key, label in MAP_KINDS.items()]
    model_limit = dict(concurrency_id="model", concurrency_limit=services.config.concurrency)
    cpu_only = dict(concurrency_limit=None)  # the dashboard never waits behind the model

    @gpu
    def _stream(before, after, max_new_tokens):
        yield from describe_events(services, before, after, max_new_tokens)

    def on_describe(before, after, layer, kind, max_new_tokens):
        first = True
        shown = None
        for caption, scores, shown in _stream(before, after, max_new_tokens):
            if first:  # the trace is complete before the first token: draw it once
                first = False
                hb, ha = heatmaps(shown, layer, kind)
                fig = score_figure(shown.trace, scores) if scores else None
                yield (caption, fig, hb, ha, common_size(shown.before, shown.after), shown, gr.skip())
            else:
                yield caption, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        words = caption_words(shown.caption) if shown else []
        yield (gr.skip(),) * 5 + (shown, gr.update(choices=words, value=words[0] if words else None))

    api_describe = gpu(lambda before, after, max_new_tokens=DEFAULT_MAX_NEW_TOKENS:
                       describe_api(services, before, after, max_new_tokens))
    api_twin = gpu(lambda shown, n: twin_caption(services, shown, n))
    api_explain = gpu(lambda shown, word: explain_word(services, shown, word))

    with gr.Blocks(title="m3diff — what changed between two images") as demo:
        gr.Markdown("# m3diff — what changed between two images, and why the model thinks so\n"
                    "M3Diff (OmniDiff, ICCV 2025): LLaVA-OneVision with multi-scale differential perception (MDP).")
        if not cap.trained:
            gr.Markdown("⚠️ " + UNTRAINED_NOTE, elem_classes="note")
        with gr.Tabs():
            # ------------------------------------------------------------ Describe
            with gr.Tab("Describe", id="describe"):
                with gr.Row():
                    with gr.Column(scale=1):
                        with gr.Row():
                            before = gr.Image(label="Before", type="filepath", elem_id="before", height=260)
                            after = gr.Image(label="After", type="filepath", elem_id="after", height=260)
                        with gr.Row():
                            go_btn = gr.Button("Describe", variant="primary", elem_id="describe-btn")
                            max_tokens = gr.Slider(8, 192, value=services.config.max_new_tokens, step=8,
                                                   label="max caption tokens")
                        if examples:
                            gr.Examples([[e["before"], e["after"]] for e in examples], [before, after],
                                        example_labels=[f"{e['id']} ({e['domain']})" for e in examples],
                                        examples_per_page=len(examples),
                                        label="Examples: one generated pair per change type, and a real photo pair")
                    with gr.Column(scale=1):
                        caption = gr.Textbox(label="Caption", lines=4, elem_id="caption", interactive=False)
                        scores = gr.Plot(label="MDP Score per layer", elem_id="score-plot")
                with gr.Row():
                    layer = gr.Dropdown(layers, value=layers[-1] if layers else None, label="MDP layer",
                                        elem_id="layer")
                    kind = gr.Radio(kind_choices, value="attn_eq5", label="map")
                with gr.Row():
                    heat_b = gr.Image(label="Before + map", elem_id="heat-before", interactive=False, height=280)
                    heat_a = gr.Image(label="After + map", elem_id="heat-after", interactive=False, height=280)
                    slider = gr.ImageSlider(label="Before / after", type="pil", interactive=False, max_height=280)
                with gr.Accordion("Explain a word (captum attribution on both images)", open=False):
                    with gr.Row():
                        word = gr.Dropdown([], label="word of the caption", elem_id="word")
                        explain_btn = gr.Button("Explain")
                    with gr.Row():
                        attr_b = gr.Image(label="Before: attribution", interactive=False, height=240)
                        attr_a = gr.Image(label="After: attribution", interactive=False, height=240)
                    attr_note = gr.Markdown()
                with gr.Accordion("The same pair without MDP (the no-MDP twin)", open=services.twin is not None):
                    twin_box = gr.Textbox(label="No-MDP twin caption", interactive=False)
                with gr.Accordion("Model card", open=not cap.trained):
                    gr.Markdown(model_card(cap, services.twin))
                shown = gr.State(None)

                go_btn.click(
                    on_describe, [before, after, layer, kind, max_tokens],
                    [caption, scores, heat_b, heat_a, slider, shown, word],
                    api_name="describe_stream", api_visibility="undocumented", **model_limit,
                ).then(api_twin, [shown, max_tokens], twin_box, api_visibility="private", **model_limit)
                for trigger in (layer.change, kind.change):
                    trigger(lambda s, l, k: heatmaps(s, l, k), [shown, layer, kind], [heat_b, heat_a],
                            api_visibility="private", **cpu_only)
                explain_btn.click(api_explain, [shown, word], [attr_b, attr_a, attr_note], api_visibility="private",
                                  **model_limit)
                # The API endpoint: two image files in, (caption, per-layer scores) out.
                api_caption = gr.Textbox(visible=False)
                api_scores = gr.JSON(visible=False)
                api_btn = gr.Button(visible=False)
                # Its calls are batched together (PairBatcher), so up to api_batch of them may wait at once.
                api_btn.click(api_describe, [before, after, max_tokens], [api_caption, api_scores],
                              api_name="describe", concurrency_id="model-api",
                              concurrency_limit=max(1, services.config.api_batch))

            # ------------------------------------------------------------ Dashboard
            with gr.Tab("Dashboard", id="dashboard"):
                reports_state = gr.State(dict(services.reports))
                if services.report_note:
                    gr.Markdown("ℹ️ " + services.report_note, elem_classes="note")
                with gr.Row():
                    metric = gr.Dropdown(list(SHOWN_METRICS), value="CIDEr-D", label="metric")
                    upload = gr.File(label="Compare with another report.json", file_types=[".json"],
                                     type="filepath")
                per_type_plot = gr.Plot(label="per change type")
                gr.Markdown("**Per change type** (n pairs; score [95% bootstrap CI], x100)")
                type_df = gr.Dataframe(interactive=False, wrap=True)
                gr.Markdown("**Per domain**")
                domain_df = gr.Dataframe(interactive=False)
                gr.Markdown("**Run vs run** (each run minus the first)")
                delta_df = gr.Dataframe(interactive=False)
                gr.Markdown("**The paper's reference numbers** (OmniDiff Table 3, x100)")
                gr.Dataframe(paper_table(), interactive=False)
                paper_plot = gr.Plot(label="the paper, per domain")
                with gr.Row():
                    csv_btn = gr.Button("Export per-type table: CSV")
                    tex_btn = gr.Button("Export per-type table: LaTeX")
                    export_file = gr.File(label="export", interactive=False)

                def show_dashboard(reps, m):
                    if not reps:
                        empty = slice_table({}, "per_type")
                        return dashboard_figure({}, m), empty, empty, delta_table({})
                    return (dashboard_figure(reps, m), slice_table(reps, "per_type"),
                            slice_table(reps, "per_domain"), delta_table(reps))

                def add_report(reps, path, m):
                    if path is None:
                        return (reps, *show_dashboard(reps, m))
                    try:
                        rep = load_report(path)
                    except ReportError as exc:
                        raise gr.Error(str(exc), title="Not a report") from None
                    reps = dict(reps)
                    name = Path(path).stem
                    while name in reps:
                        name += "'"
                    reps[name] = rep
                    return (reps, *show_dashboard(reps, m))

                def export(reps, fmt):
                    return export_report(reps, fmt)

                dash_out = [per_type_plot, type_df, domain_df, delta_df]
                metric.change(show_dashboard, [reports_state, metric], dash_out, api_visibility="private", **cpu_only)
                upload.upload(add_report, [reports_state, upload, metric], [reports_state, *dash_out],
                              api_visibility="private", **cpu_only)
                csv_btn.click(lambda r: export(r, "csv"), reports_state, export_file, api_visibility="private",
                              **cpu_only)
                tex_btn.click(lambda r: export(r, "latex"), reports_state, export_file, api_visibility="private",
                              **cpu_only)

            # ------------------------------------------------------------ Errors
            with gr.Tab("Errors", id="errors"):
                run_names = list(services.reports)
                if not run_names:
                    gr.Markdown("ℹ️ No report loaded: upload a `report.json` on the Dashboard tab, then pick it here.",
                                elem_classes="note")
                with gr.Row():
                    run = gr.Dropdown(run_names, value=run_names[0] if run_names else None, label="run",
                                      allow_custom_value=False)
                    ftype = gr.Dropdown(["all"], value="all", label="change type")
                    fdomain = gr.Dropdown(["all"], value="all", label="domain")
                    sort_by = gr.Dropdown(list(SHOWN_METRICS), value="CIDEr-D", label="sort by")
                    asc = gr.Checkbox(True, label="worst first")
                table = gr.Dataframe(interactive=False, wrap=True, elem_id="errors-table")
                with gr.Row():
                    err_slider = gr.ImageSlider(label="pair", type="pil", interactive=False, max_height=260)
                    err_heat_b = gr.Image(label="Before + |ΔF| (last MDP layer)", interactive=False, height=260)
                    err_heat_a = gr.Image(label="After + |ΔF|", interactive=False, height=260)
                err_text = gr.Markdown()

                def run_filters(reps, name):
                    rep = reps.get(name) if name else None
                    if rep is None:
                        return gr.update(choices=["all"], value="all"), gr.update(choices=["all"], value="all")
                    types, domains = report_choices(rep)
                    return (gr.update(choices=["all", *types], value="all"),
                            gr.update(choices=["all", *domains], value="all"))

                def filter_table(reps, name, t, d, s, a):
                    rep = reps.get(name) if name else None
                    return pairs_frame(rep or {}, t or "all", d or "all", s, bool(a))

                @gpu
                def pair_trace(before, after):
                    return cap.describe(before, after, settings=_short()) if cap.uses_mdp else None

                def select_pair(reps, name, df, evt: gr.SelectData):
                    rep = reps.get(name) if name else None
                    if rep is None or df is None or evt is None or evt.index is None:
                        return None, None, None, ""
                    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
                    pid = df.iloc[row]["id"]
                    record = next(p for p in report_pairs(rep) if p["id"] == pid)
                    refs = "\n".join(f"- {r}" for r in record.get("refs", []))
                    text = (f"**{pid}** · {', '.join(record.get('types', []))} · {record.get('domain', '')}\n\n"
                            f"**Prediction:** {record.get('caption', '')}\n\n**References:**\n{refs}\n\n"
                            + "  ".join(f"{m} {_fmt(record.get(m))}" for m in SHOWN_METRICS))
                    files = pair_images(rep, record)
                    if files is None:
                        return None, None, None, text + "\n\n_(the report does not say where this pair's images are)_"
                    b, a = load_pair(*files)
                    d = pair_trace(b, a)
                    hb = ha = None
                    if d is not None and d.trace:
                        hb, ha = heatmaps(Shown(b, a, d.trace), d.trace["layers"][-1], "delta_norm")
                        text += "\n\n**MDP Score**: " + "  ".join(f"L{k} {v:.3f}" for k, v in d.layer_scores.items())
                    return common_size(b, a), hb, ha, text

                select_pair.__annotations__["evt"] = gr.SelectData  # gradio reads it to pass the event

                run.change(run_filters, [reports_state, run], [ftype, fdomain], api_visibility="private", **cpu_only)
                for comp in (run, ftype, fdomain, sort_by, asc):
                    comp.change(filter_table, [reports_state, run, ftype, fdomain, sort_by, asc], table,
                                api_visibility="private", **cpu_only)
                table.select(select_pair, [reports_state, run, table], [err_slider, err_heat_b, err_heat_a, err_text],
                             api_visibility="private", **model_limit)
                reports_state.change(lambda reps, name: gr.update(choices=list(reps), value=name or next(iter(reps), None)),
                                     [reports_state, run], run, api_visibility="private", **cpu_only)

        demo.load(show_dashboard, [reports_state, metric], dash_out, api_visibility="private", **cpu_only)
        for trigger in (demo.load, metric.change):
            trigger(lambda m: dashboard_figure({}, m), metric, paper_plot, api_visibility="private", **cpu_only)
        demo.load(run_filters, [reports_state, run], [ftype, fdomain], api_visibility="private", **cpu_only).then(
            filter_table, [reports_state, run, ftype, fdomain, sort_by, asc], table, api_visibility="private",
            **cpu_only)
    return demo


def _short():
    from m3diff.describing import GenerationSettings

    return GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)


# ============================================================================ start
def parse_args(argv: list[str] | None = None) -> AppConfig:
    p = argparse.ArgumentParser(prog="app.py", description="Start the m3diff browser app.")
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
    a = p.parse_args(argv)
    model = None if a.model in (None, "", "embedded") else a.model
    return AppConfig(model=model, twin=a.twin, host=a.host, port=a.port, concurrency=a.concurrency,
                     api_batch=a.api_batch, reports=tuple(a.report), separate_process=not a.same_process)


def launch(demo, config: AppConfig, **kwargs):
    """Queue and launch with the app's limits: upload size, served folders, theme."""
    import gradio as gr

    from m3diff.describing import EMBEDDED_DIR

    demo.queue(max_size=64, default_concurrency_limit=None)
    return demo.launch(
        server_name=config.host, server_port=config.port, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES_DIR), str(EMBEDDED_DIR / "reports")], footer_links=["api"],
        theme=gr.themes.Soft(primary_hue="indigo"), css=CSS, show_error=True, **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    from m3diff.describing import ModelLoadError
    from m3diff.remote import RemoteError

    config = parse_args(argv)
    try:
        # the model process starts first: it loads while this process imports gradio and lays out the app
        services = load_services(config)
        demo = build_app(services)
    except ModelLoadError as exc:
        print(f"m3diff app: error: {load_error(exc, config) if config.separate_process else exc}", file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"m3diff app: error: {exc}", file=sys.stderr)
        return 2
    except RemoteError as exc:  # the model process failed to start, or died
        print(f"m3diff app: error: the model could not be loaded: {exc}", file=sys.stderr)
        return 2
    launch(demo, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
