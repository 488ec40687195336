"""The m3diff browser app: describe a pair and see why; break the errors down by change type.

    python app.py [--model DIR|HUB_ID] [--twin DIR] [--host 127.0.0.1] [--port 7860]
    m3diff app    (the same)

Three tabs — Describe (a pair → caption streamed token by token, what the model's change reader read (a
list and boxes on the pair), per-layer MDP Score, difference-attention heatmaps, "explain a word", the
no-MDP twin, the model card), Dashboard (an evaluation report per change type and domain, run against
run, what a change reader reads, CSV/LaTeX export) and Errors (a report's test pairs, filterable and sortable;
a row shows the pair, references, prediction and trace, and what the run's change reader read beside the true
changes).

The app is thin: it lays out what ``m3diff`` and ``analysis`` compute. Nothing here is module-level
mutable state: ``load_services`` builds the models (once, at start; on a ZeroGPU Space that is at import
time, which the platform requires) and ``build_app`` wires them into callbacks through closures.
Every callback below is a plain function of its inputs, tested without a browser (tests/app).
"""
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import gradio as gr
import pandas as pd
from starlette.middleware import Middleware

from analysis.attribution import explain_maps
from analysis.evidence import colour_legend, error_view, map_choices, map_overlays, scale_note, shown_maps
from analysis.figures import mdp_scores, metrics_by_domain, metrics_by_type
from analysis.madepair import request_from_query
from analysis.metrics import SHOWN_METRICS
from analysis.paper import paper_breakdowns
from analysis.render import (SLICES, best_localizing_map, changes_table, delta_table, detection_table, export,
                             grounding_table, localization_notes, localization_table, md, pairs_frame, paper_table,
                             protocol_note, protocol_table, quality_line, report_choices, slice_table)
from analysis.report import ReportError, read_report
from m3diff.change_types import TYPE_IDS
from m3diff.data.layout import read_split
from m3diff.data.synth.chosen import MAX_TYPES, NO_CHANGE, ImpossiblePair
from m3diff.data.synth.generator import DOMAINS
from m3diff.describing import EMBEDDED_DIR, GenerationSettings, ModelLoadError
from m3diff.describing import caption_words as split_words
from m3diff.images import ImageError, load_image
from m3diff.overlay import common_size
from m3diff.remote import RemoteError, call_on
from webapp.config import (DEFAULT_MAX_NEW_TOKENS, EXAMPLES_DIR, HERE, MAX_FILE_SIZE, SESSION_CAPACITY, AppConfig,
                           parse_args)
from webapp.experiments import (ExperimentError, knockout_view, load_knockout, make_pair_view, probe_note, probe_view,
                                 run_probe)
from webapp.guards import log_line, refusal, refuse_server_files, toast
from webapp.middleware import OptionalAPIArguments
from webapp.reading import panel_intro, reading_view
from webapp.services import Services, load_error, load_services, source_name

FINISH_END_PROBABILITY = 0.5  # "Finish every change": the end wins only with even odds (docs/analysis.md)

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
# ============================================================================ inputs
def load_pair(before, after):
    """Both images through ``m3diff.images.load_image``; any problem becomes one ``gr.Error`` for a person."""
    if before is None or after is None:
        missing = " and ".join(n for n, v in (("before", before), ("after", after)) if v is None)
        raise refusal(f"Add the {missing} image (upload one or pick an example below).", title="Missing image")
    try:
        return load_image(before, name="before image"), load_image(after, name="after image")
    except ImageError as exc:
        raise refusal(_strip_tmp(str(exc)), title="Unusable image") from None


def _strip_tmp(message: str) -> str:
    """Gradio's upload cache paths mean nothing to a person: keep the file name only."""
    tmp = tempfile.gettempdir()
    out = []
    for word in message.split(" "):
        out.append(Path(word).name if word.startswith(tmp) else word)
    return " ".join(out)


# ============================================================================ figures (analysis.figures)
def score_figure(trace, layer_scores: dict):
    """Bars of the mean MDP Score per vision layer, with the spread of its channel weights."""
    per_channel = trace.score if trace is not None else None
    fig = mdp_scores({int(k): float(v) for k, v in layer_scores.items()}, per_channel)
    fig.update_layout(height=300, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def dashboard_figure(reports: dict, metric: str):
    """Per change type (with intervals) for evaluation reports ({name: Report}); per domain for the paper's."""
    if reports:
        fig = metrics_by_type({name: rep.run.scores for name, rep in reports.items()}, metric)
    else:
        fig = metrics_by_domain(paper_breakdowns(), metric)
        fig.update_layout(title=f"{metric} reported in the paper (OmniDiff Table 3), per domain")
    fig.update_layout(height=380)
    return fig


# ============================================================================ describe
def model_card(captioner, twin=None) -> str:
    """A short model card of what is loaded: source, size, MDP layers, training data, limits."""
    info = captioner.info
    counts = info.parameters
    lines = [f"### Model: `{source_name(info.source)}`", ""]
    if not info.trained:
        lines += ["> ⚠️ " + UNTRAINED_NOTE, ""]
    lines += [
        f"- **Size**: {counts['total'] / 1e6:,.2f} M parameters (vision {counts['vision'] / 1e6:.2f} M, "
        f"MDP {counts['mdp'] / 1e6:.2f} M, language model {counts['language_model'] / 1e6:.2f} M)",
        "- **MDP**: " + (f"on vision layers {list(info.mdp_layers)}, depth {info.mdp_depth}" if info.use_mdp
                          else "off (baseline)"),
        f"- **Images**: {info.image_size}px, {info.num_image_tokens} tokens each; "
        f"device `{info.device}`, dtype `{info.dtype}`",
        "- **Change reader**: " + ("yes: each change read as facts, which the caption is written from"
                                   if info.reads_changes else "none (the paper's design)"),
        "- **No-MDP twin**: " + (f"`{source_name(twin.source)}` loaded" if twin is not None else "not loaded"),
    ]
    card = _read_card(info.source)
    if info.source in ("embedded", "untrained-tiny"):
        lines += ["", "**What it knows and does not know.** " + EMBEDDED_LIMITS]
    if card:
        lines += ["", "<details><summary>The model's own card</summary>", "", card, "", "</details>"]
    return "\n".join(lines)


def model_statement(services: Services) -> str:
    """What the loaded model knows and how good it measured, said above its captions (the card has more)."""
    info = services.captioner.info
    if not info.trained:
        return "⚠️ " + UNTRAINED_NOTE
    if info.source != "embedded":
        return (f"**Model** `{source_name(info.source)}` — its measured quality is on the Dashboard when its "
                "report is loaded.")
    shipped = services.reports.shared.get("m3diff")
    measured = quality_line(shipped.report) if shipped else ""
    return ("**Embedded demo model** — trained from scratch on generated scenes only (3D renders and shapes on "
            "photos), not on real photographs" + (f"; {measured}" if measured else "") + ". See the model card below.")


def _read_card(source: str) -> str:
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
    trace: object = None  # m3diff.describing.PairTrace, or None
    caption: str = ""
    feature_difference: object = None  # [g, g] ‖P(F′1) − P(F′2)‖ when the Description carries it
    changes: object = None  # m3diff.facts.ChangeReading the caption was written from; None: no change reader


def caption_words(caption: str) -> list[str]:
    """The words a person can ask about, as "index: word" (a repeated word stays distinct); the indices
    are analysis.attribution's, so the word explained is the word picked."""
    return [f"{i}: {w}" for i, w in enumerate(split_words(caption or ""))]


def generation_settings(max_new_tokens, finish_every_change: bool = False):
    """The Describe tab's decoding: greedy, or greedy that ends only where the model gives the end even
    odds (m3diff.stopping: plain greedy ends multi-change captions early)."""
    return GenerationSettings(max_new_tokens=int(max_new_tokens),
                              min_end_probability=FINISH_END_PROBABILITY if finish_every_change else None)


def describe_events(services: Services, before, after, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    finish_every_change: bool = False) -> Iterator[tuple]:
    """The pair through the captioner, streamed: (caption so far, layer scores, Shown) per token; what
    the change reader read is in every Shown, the first included (it is read before the first token)."""
    b, a = load_pair(before, after)
    settings = generation_settings(max_new_tokens, finish_every_change)
    for d in services.captioner.describe_stream(b, a, settings=settings):
        yield d.caption, d.layer_scores, Shown(b, a, d.trace, d.caption, d.feature_difference, d.changes)


def describe_api(services: Services, before, after, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """The ``/describe`` endpoint: (caption, {layer: mean Score}, changes) for two image files; changes
    is what the change reader read (``ChangeReading.to_json``: {"changes": [...], "size": [w, h],
    "threshold"}), or None for a model without a reader, so that "read nothing" and "cannot read" differ."""
    b, a = load_pair(before, after)
    d = services.batcher.describe(b, a, GenerationSettings(max_new_tokens=int(max_new_tokens)))
    changes = d.changes.to_json() if d.changes is not None else None
    return d.caption, {str(k): round(float(v), 6) for k, v in d.layer_scores.items()}, changes


def read_changes_view(shown: Shown | None):
    """The "What the model read" panel of a described pair (``webapp.reading``): the list, and the read
    boxes on the before and the after image."""
    if shown is None:
        return reading_view(None, None, None)
    return reading_view(shown.changes, shown.before, shown.after)


def heatmaps(shown: Shown | None, layer, kind: str):
    """The chosen map over each image on one absolute colour scale (``analysis.evidence``: anchored at
    0, so a flat map looks flat), and the scale's legend."""
    if shown is None or (shown.trace is None and shown.feature_difference is None):
        return None, None, ""
    try:
        number = None if kind == "feature_difference" else int(str(layer).lstrip("L"))
        mb, ma = shown_maps(shown.trace, shown.feature_difference, number, kind)
    except (ValueError, AttributeError) as exc:
        raise gr.Error(str(exc) if isinstance(exc, ValueError) else "this model has no MDP maps") from None
    hb, ha, scale = map_overlays(shown.before, shown.after, mb, ma)
    return hb, ha, colour_legend(scale, kind if number is None else f"{kind}@{number}")


def explain_word(services: Services, shown: Shown | None, word: str | None):
    """Captum attribution of one caption word on both images (``analysis.attribution.explain_maps``, run
    where the model lives), as overlays on one shared colour scale, and a line saying what was explained."""
    if shown is None or not shown.caption:
        raise gr.Error("Describe a pair first, then pick a word of its caption.")
    if not word:
        raise gr.Error("Pick a word of the caption to explain.")
    index = int(str(word).split(":", 1)[0])
    try:
        mb, ma, note = call_on(services.captioner, explain_maps, shown.before, shown.after, shown.caption, index)
    except ValueError as exc:
        raise refusal(str(exc), title="Cannot explain this word") from None
    hb, ha, scale = map_overlays(shown.before, shown.after, mb, ma)
    return hb, ha, note + "\n\n" + scale_note(scale, "attribution")


def twin_caption(services: Services, shown: Shown | None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 finish_every_change: bool = False) -> str:
    """The same pair through the no-MDP twin (the baseline), when one is loaded, decoded as the model was."""
    if services.twin is None:
        return "(no no-MDP twin loaded: start with --twin DIR to compare)"
    if shown is None or shown.before is None:
        return ""
    return services.twin.describe(shown.before, shown.after, with_trace=False,
                                  settings=generation_settings(max_new_tokens, finish_every_change)).caption


def error_pair(traced: Callable, report, pair_id: str | None):
    """The Errors tab's view of one test pair (``analysis.evidence.error_view``): the pair with its true
    boxes for a slider, the loaded model's map over each image on one scale (``traced(before, after)``),
    the colour legend, each image with the boxes the run's change reader read (None without a detection
    section), and the report's text with the pair's hit or miss and what the reader read."""
    try:
        view = error_view(report, pair_id, traced)
    except ImageError as exc:
        raise refusal(str(exc), title="Unusable image") from None
    return view.pair, view.map_before, view.map_after, view.legend, view.read_before, view.read_after, view.text


def _traced(captioner, before, after):
    # a model without MDP may still carry the feature-difference map (the fair comparison with its twin)
    return captioner.describe(before, after, settings=_short())


def load_examples() -> list:
    """The example pairs (m3diff's dataset layout: `m3diff eval --refs examples` reads them too)."""
    path = EXAMPLES_DIR / "test.json"
    return read_split(path) if path.is_file() else []


REAL_PHOTO_LABEL = "real photo, outside its training"  # short: an example button shows ~45 characters


def example_label(services: Services, example) -> str:
    """An example's label; a real photo is marked as outside the embedded model's training (its card says why)."""
    generated = example.domain in DOMAINS
    if not generated and services.captioner.info.source in ("embedded", "untrained-tiny"):
        return f"{example.id} ({REAL_PHOTO_LABEL})"
    return f"{example.id} ({example.domain})"


def default_map(services: Services) -> tuple[str, str | None]:
    """(map kind, "L<layer>") shown first: the loaded model's best-localizing map by its report's pointing
    (``analysis.render.best_localizing_map``); without a report of it, |ΔF| at the deepest MDP layer."""
    info = services.captioner.info
    layers = list(info.mdp_layers) if info.use_mdp else []
    shipped = services.reports.shared.get("m3diff") if info.source == "embedded" else None
    best = best_localizing_map(shipped.report.run.localization) if shipped is not None else None
    if best is None or (best[1] is not None and best[1] not in layers):
        best = ("delta_norm", layers[-1]) if layers else ("feature_difference", None)
    kind, layer = best
    return kind, f"L{layer}" if layer is not None else (f"L{layers[-1]}" if layers else None)


# ============================================================================ experiments (webapp.experiments)
def make_pair_event(services: Services, types, domain: str, seed, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """Make a pair: (before + boxes, after + boxes, references, caption, score line, per-change table, seed,
    share link, before, after for the Describe inputs)."""
    try:
        v = make_pair_view(services, types, domain, seed, max_new_tokens)
    except ExperimentError as exc:
        raise refusal(str(exc), title="Cannot make that pair") from None
    return (v.before, v.after, v.references, v.caption, v.score_line, v.changes, str(v.seed), v.link,
            v.plain_before, v.plain_after)


def probe_event(services: Services, before, after, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                progress=gr.Progress()):
    """Probe this pair: (the rows side by side, a note)."""
    b, a = load_pair(before, after)
    probe = run_probe(services, b, a, max_new_tokens, progress=lambda f, what: progress(f, desc=what))
    return probe_view(probe)


def link_settings(request: gr.Request | None):
    """A shared link's pair settings (?types=color,ocr&domain=photo&seed=7) into the Make-a-pair panel."""
    query = dict(request.query_params) if request is not None else {}
    if "seed" not in query:
        return gr.update(), gr.update(), gr.update()
    try:
        r = request_from_query(query)
    except ImpossiblePair as exc:
        gr.Warning(toast(exc), title="Link not understood")
        return gr.update(), gr.update(), gr.update()
    return list(r.types) or [NO_CHANGE], r.domain, str(r.seed)


def experiment_panels(services: Services, gpu, ui, demo) -> None:
    """The Describe tab's "Make a pair" and "Probe this pair" panels (each a named API endpoint too)."""
    model_calls = _model_calls(services)
    with gr.Accordion("Make a pair: the same generator, the change types you choose", open=False,
                      elem_id="make-pair-panel"):
        with gr.Row():
            types = gr.CheckboxGroup([NO_CHANGE, *TYPE_IDS], value=["color"], elem_id="make-types",
                                     label=f"change types (one to {MAX_TYPES}, or '{NO_CHANGE}')")
        with gr.Row():
            domain = gr.Radio(list(DOMAINS), value="render", label="domain", elem_id="make-domain")
            seed = gr.Textbox("", label="seed (blank: a new random one)", elem_id="make-seed")
            make = gr.Button("Make and describe", variant="primary", elem_id="make-btn")
        with gr.Row():
            made_b = gr.Image(label="Before (true changes: cyan)", interactive=False, height=240, elem_id="made-before")
            made_a = gr.Image(label="After (true changes: green)", interactive=False, height=240, elem_id="made-after")
            refs = gr.Markdown(elem_id="made-refs")
        made_caption = gr.Textbox(label="The model's caption", interactive=False, elem_id="made-caption")
        made_score = gr.Markdown(elem_id="made-score")
        made_changes = gr.Dataframe(interactive=False, wrap=True, elem_id="made-changes", **WIDE_TABLE)
        link = gr.Textbox(label="link to this pair (append to the app's address)", interactive=False,
                          elem_id="made-link")
    make.click(gpu(lambda t, d, s, n: make_pair_event(services, t, d, s, n)), [types, domain, seed, ui.max_tokens],
               [made_b, made_a, refs, made_caption, made_score, made_changes, seed, link, ui.before, ui.after],
               api_name="make_pair", **model_calls)
    demo.load(link_settings, None, [types, domain, seed], api_visibility="private", **CPU_ONLY)
    with gr.Accordion("Probe this pair: swapped, before twice, re-encoded, each MDP scale knocked out, ΔF = 0",
                      open=False, elem_id="probe-panel"):
        gr.Markdown(probe_note(services), elem_id="probe-plan")
        probe = gr.Button("Probe the pair above", elem_id="probe-btn")
        probe_summary = gr.Markdown(elem_id="probe-note")
        probe_rows = gr.Dataframe(interactive=False, wrap=True, elem_id="probe-table", **WIDE_TABLE)
    probe.click(gpu(lambda b, a, n, progress=gr.Progress(): probe_event(services, b, a, n, progress)),
                [ui.before, ui.after, ui.max_tokens], [probe_rows, probe_summary], api_name="probe_pair", **model_calls)


KNOCKOUT_INTRO = (
    "### Which vision layers does each change type depend on?\n"
    "Each MDP scale knocked out in turn (its Score set to 0 in eq. 8, the other scales renormalised), over a "
    "data set's pairs (`m3diff probe --knockout`): the change in CIDEr-D and in change recall per change type.")


def knockout_panel(demo) -> None:
    """The Dashboard's knockout panel: the shipped study of the embedded model, or an uploaded one."""
    with gr.Column(elem_id="knockout-panel"):
        gr.Markdown(KNOCKOUT_INTRO)
        with gr.Row():
            measure = gr.Radio(["CIDEr-D", "change recall"], value="CIDEr-D", label="measure",
                               elem_id="knockout-measure")
            upload = gr.File(label="a knockout study (m3diff probe --knockout --out FILE.json)", file_types=[".json"],
                             type="filepath")
        note = gr.Markdown(elem_id="knockout-note")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="knockout-table", **WIDE_TABLE)
    study = gr.State(None)

    def show(path, m):
        try:
            return knockout_view(load_knockout(path), m)
        except ExperimentError as exc:
            gr.Warning(toast(exc), title="Not a knockout study")
            return knockout_view(load_knockout(None), m)

    for trigger in (demo.load, measure.change):
        trigger(show, [study, measure], [table, note], api_visibility="private", **CPU_ONLY)
    upload.upload(lambda path: path, upload, study, api_visibility="private", **CPU_ONLY).then(
        show, [study, measure], [table, note], api_visibility="private", **CPU_ONLY)


# ============================================================================ layout
# The Dashboard's tables hold two runs side by side with intervals: tall enough never to scroll inside
# themselves, and in a smaller type with wrapping headers so that 13 columns fit 1400 px
WIDE_TABLE = MappingProxyType({"max_height": 4000, "elem_classes": "wide-table"})
CSS = """
#caption textarea {font-size: 1.1rem; line-height: 1.5;}
.wide-table {font-size: .78rem;}
.wide-table table {width: 100% !important; table-layout: auto !important;}
.wide-table th, .wide-table td {width: auto !important; min-width: 0 !important; max-width: none !important;
                                padding: 2px 4px !important;}
.wide-table .cell-wrap, .wide-table .header-content {white-space: normal !important; overflow-wrap: normal;}
.note {border-left: 4px solid #f59e0b; padding-left: .6rem;}
"""
CPU_ONLY = MappingProxyType({"concurrency_limit": None})  # the dashboard never waits behind the model


def build_app(services: Services, gpu: Callable[[Callable], Callable] = lambda f: f):
    """The Blocks app. ``gpu`` wraps the model calls (``spaces.GPU(duration=...)`` on a ZeroGPU Space)."""
    cap = services.captioner
    cap.info  # noqa: B018 — waits here for a model loading in its own process (and raises its load error)
    with gr.Blocks(title="m3diff — what changed between two images") as demo:
        gr.Markdown("# m3diff — what changed between two images, and why the model thinks so\n"
                    "M3Diff (OmniDiff, ICCV 2025): LLaVA-OneVision with multi-scale differential perception (MDP).")
        if not cap.trained:
            gr.Markdown("⚠️ " + UNTRAINED_NOTE, elem_classes="note")
        with gr.Tabs():
            with gr.Tab("Describe", id="describe"):
                experiment_panels(services, gpu, describe_tab(services, gpu), demo)
            with gr.Tab("Dashboard", id="dashboard"):
                reports_state = dashboard_tab(services, demo)
                knockout_panel(demo)
            with gr.Tab("Errors", id="errors"):
                errors_tab(services, gpu, reports_state, demo)
    return demo


def _model_calls(services: Services) -> dict:
    return dict(concurrency_id="model", concurrency_limit=services.config.concurrency)


def uploaded_image(**kwargs):
    """An image input whose upload reaches m3diff's own loader untouched (``m3diff.images.load_image``).

    gr.Image decodes and re-encodes every upload before a callback sees it: a bad file then fails in
    Gradio's preprocessing with its raw message and the server's temporary paths, and a 16-bit PNG is
    clipped to black and white. This input hands the callback the uploaded file's path instead, so the
    loader's rules and messages apply, as in the CLI and the library. (The instance's preprocess is
    replaced rather than subclassed: Gradio writes a .pyi stub beside any module that defines a
    component class.)
    """

    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        return path if path else decode(payload)

    image.preprocess = types.MethodType(preprocess, image)
    return image


def describe_tab(services: Services, gpu) -> None:
    """Describe: a pair in; the caption streamed out with the Score chart, maps, explain, twin and card."""
    ui = SimpleNamespace(**_describe_inputs(services), **_describe_outputs(services))
    _wire_describe(services, gpu, ui)
    return ui


def _describe_inputs(services: Services) -> dict:
    examples = load_examples()
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                before = uploaded_image(label="Before", elem_id="before", height=260)
                after = uploaded_image(label="After", elem_id="after", height=260)
            with gr.Row():
                go = gr.Button("Describe", variant="primary", elem_id="describe-btn")
                max_tokens = gr.Slider(8, 192, value=services.config.max_new_tokens, step=8,
                                       label="max caption tokens")
            finish = gr.Checkbox(False, label="Finish every change: end the caption only where the model gives "
                                 "its end even odds (plain greedy stops early on multi-change pairs)",
                                 elem_id="finish")
            if examples:
                gr.Examples([[str(e.before), str(e.after)] for e in examples], [before, after],
                            example_labels=[example_label(services, e) for e in examples],
                            examples_per_page=len(examples),
                            label="Examples: one generated pair per change type, and a real photo pair")
        with gr.Column(scale=1):
            gr.Markdown(model_statement(services), elem_id="model-statement")
            caption = gr.Textbox(label="Caption", lines=4, elem_id="caption", interactive=False)
            read = read_changes_panel(services)
            scores = gr.Plot(label="MDP Score per layer", elem_id="score-plot")
    return dict(before=before, after=after, go=go, max_tokens=max_tokens, finish=finish, caption=caption,
                scores=scores, **read)


def read_changes_panel(services: Services) -> dict:
    """What the model read (its change reader's facts, which the caption is written from), beside the
    caption; a model without a reader gets the one line saying why, and no empty pictures."""
    reads = services.captioner.reads_changes
    with gr.Column(elem_id="read-panel"):
        gr.Markdown("**What the model read**")
        read_list = gr.HTML(panel_intro(reads), elem_id="read-changes")
        with gr.Row(visible=reads):
            read_b = gr.Image(label="Before: the changes read", interactive=False, height=220, elem_id="read-before")
            read_a = gr.Image(label="After: the changes read", interactive=False, height=220, elem_id="read-after")
    return dict(read_list=read_list, read_b=read_b, read_a=read_a)


def _describe_outputs(services: Services) -> dict:
    layers = [f"L{k}" for k in services.captioner.info.mdp_layers]
    first_kind, first_layer = default_map(services)
    with gr.Row():
        layer = gr.Dropdown(layers, value=first_layer, label="MDP layer", elem_id="layer")
        kind = gr.Radio(map_choices(True), value=first_kind, label="map", elem_id="map-kind")
    with gr.Row():
        heat_b = gr.Image(label="Before + map", elem_id="heat-before", interactive=False, height=280)
        heat_a = gr.Image(label="After + map", elem_id="heat-after", interactive=False, height=280)
        slider = gr.ImageSlider(label="Before / after", type="pil", interactive=False, max_height=280)
    legend = gr.HTML(elem_id="heat-legend")
    with gr.Accordion("Explain a word (captum attribution on both images)", open=False):
        with gr.Row():
            word = gr.Dropdown([], label="word of the caption", elem_id="word")
            explain = gr.Button("Explain")
        with gr.Row():
            attr_b = gr.Image(label="Before: attribution", interactive=False, height=240)
            attr_a = gr.Image(label="After: attribution", interactive=False, height=240)
        attr_note = gr.Markdown()
    with gr.Accordion("The same pair without MDP (the no-MDP twin)", open=services.twin is not None):
        twin = gr.Textbox(label="No-MDP twin caption", interactive=False)
    with gr.Accordion("Model card", open=not services.captioner.trained):
        gr.Markdown(model_card(services.captioner, services.twin))
    return dict(layer=layer, kind=kind, heat_b=heat_b, heat_a=heat_a, legend=legend, slider=slider, word=word,
                explain=explain, attr_b=attr_b, attr_a=attr_a, attr_note=attr_note, twin=twin, shown=gr.State(None))


def _wire_describe(services: Services, gpu, ui) -> None:
    model_calls = _model_calls(services)
    ui.go.click(
        _describe_stream(services, gpu, ui), [ui.before, ui.after, ui.layer, ui.kind, ui.max_tokens, ui.finish],
        [ui.caption, ui.scores, ui.heat_b, ui.heat_a, ui.legend, ui.slider, ui.shown, ui.word, ui.kind,
         ui.read_list, ui.read_b, ui.read_a],
        api_name="describe_stream", api_visibility="undocumented", **model_calls,
    ).then(gpu(lambda shown, n, finish: twin_caption(services, shown, n, finish)), [ui.shown, ui.max_tokens, ui.finish],
           ui.twin, api_visibility="private", **model_calls)
    for trigger in (ui.layer.change, ui.kind.change):
        trigger(heatmaps, [ui.shown, ui.layer, ui.kind], [ui.heat_b, ui.heat_a, ui.legend], api_visibility="private",
                **CPU_ONLY)
    ui.explain.click(gpu(lambda shown, word: explain_word(services, shown, word)), [ui.shown, ui.word],
                     [ui.attr_b, ui.attr_a, ui.attr_note], api_visibility="private", **model_calls)
    # The API endpoint: two image files in, (caption, per-layer scores, changes read) out. Its calls are
    # batched together (m3diff.batching.PairBatcher), so up to api_batch of them may wait at once.
    # labelled: the API page names the outputs by their labels (else "value_41", "value_42")
    api_caption = gr.Textbox(visible=False, label="caption")
    api_scores, api_btn = gr.JSON(visible=False, label="layer_scores"), gr.Button(visible=False)
    api_changes = gr.JSON(visible=False, label="changes")
    api_btn.click(gpu(lambda before, after, max_new_tokens=DEFAULT_MAX_NEW_TOKENS:
                      describe_api(services, before, after, max_new_tokens)),
                  [ui.before, ui.after, ui.max_tokens], [api_caption, api_scores, api_changes], api_name="describe",
                  concurrency_id="model-api", concurrency_limit=max(1, services.config.api_batch))


def _describe_stream(services: Services, gpu, ui):
    """The Describe button's callback: the trace is drawn once (it is complete before the first token),
    then only the caption grows; at the end the words of the caption become pickable."""
    @gpu
    def stream(before, after, max_new_tokens, finish):
        yield from describe_events(services, before, after, max_new_tokens, finish)

    def on_describe(before, after, layer, kind, max_new_tokens, finish=False):
        shown = None
        for caption, scores, now in stream(before, after, max_new_tokens, finish):
            if shown is None:
                hb, ha, legend = heatmaps(now, layer, kind)
                read = read_changes_view(now)
                yield {ui.caption: caption, ui.read_list: read.html, ui.read_b: read.before, ui.read_a: read.after,
                       ui.scores: score_figure(now.trace, scores) if scores else None,
                       ui.heat_b: hb, ui.heat_a: ha, ui.legend: legend, ui.slider: common_size(now.before, now.after),
                       ui.shown: now}
            else:
                yield {ui.caption: caption}
            shown = now
        words = caption_words(shown.caption) if shown else []
        kinds = map_choices(shown is not None and shown.feature_difference is not None)
        yield {ui.shown: shown, ui.word: gr.update(choices=words, value=words[0] if words else None),
               ui.kind: gr.update(choices=kinds)}

    return on_describe


# The Dashboard's tables of what a model gets right beyond its caption scores: (title, elem_id)
CHECK_TABLES = (
    ("**Does the model read its images?** Grounding checks (`m3diff probe`): distinct captions; how much the answer "
     "loss rises with the images of a random pair / of another pair of the same scene (the honest blind gap); what "
     "it says for two identical images", None),
    ("**Does the caption name the change?** Change recall and precision (%), and how often it says what the change "
     "made of it (the sign's new word, the new colour, heading, pose or count, grew or shrank), generated references",
     None),
    ("**Does the change reader read each change?** For a model with a change reader: the true changes it read "
     "(recall), the changes it read that are true (precision), the new value and the object read right, and how "
     "often its box's centre lies in the true box (%), generated references", "detection-table"),
)


def dashboard_tab(services: Services, demo):
    """Dashboard: the loaded reports per change type and domain, run against run, the paper, exports.
    Returns the session's report list (the Errors tab browses the same reports)."""
    store = services.reports
    reports_state = gr.State(store.initial())  # names and store keys only: the reports live in the store
    if services.report_note:
        gr.Markdown("ℹ️ " + services.report_note, elem_classes="note")
    with gr.Row():
        metric = gr.Dropdown(list(SHOWN_METRICS), value="CIDEr-D", label="metric")
        upload = gr.File(label="Compare with another report.json", file_types=[".json"], type="filepath")
    shown = [gr.Markdown(elem_id="report-note"), gr.Plot(label="per change type")]
    for title in ("**Per change type** (n pairs; score [95% bootstrap CI], x100)", "**Per domain and per number of changes** (generated data knows how many; words: the captions' "
                  "mean length beside the references', which CIDEr-D's length penalty weighs)",
                  "**Run vs run** (each run minus the first; [95% paired bootstrap CI] where the runs were "
                  "scored together)"):
        gr.Markdown(title)
        shown.append(gr.Dataframe(interactive=False, wrap=True, **WIDE_TABLE))
    for title, elem in CHECK_TABLES:
        gr.Markdown(title)
        shown.append(gr.Dataframe(interactive=False, wrap=True, elem_id=elem, **WIDE_TABLE))
    gr.Markdown("**How each report was scored** (its protocol card: scorer, tokeniser, CIDEr-D, references, "
                "empty references, SPICE, how ids were matched, what was left out)")
    shown.append(gr.Markdown(elem_id="protocol-note"))
    shown.append(gr.Dataframe(interactive=False, wrap=True, elem_id="protocol-table", **WIDE_TABLE))
    localization_panel(store, reports_state, demo)
    gr.Markdown("**The paper's reference numbers** (OmniDiff Table 3, x100)")
    gr.Dataframe(paper_table(), interactive=False)
    paper_plot = gr.Plot(label="the paper, per domain")
    with gr.Row():
        csv_btn = gr.Button("Export per-type table: CSV")
        tex_btn = gr.Button("Export per-type table: LaTeX")
        export_file = gr.File(label="export", interactive=False)

    view = lambda state, m: dashboard_view(store, state, m)  # noqa: E731
    metric.change(view, [reports_state, metric], shown, api_visibility="private", **CPU_ONLY)
    allowed = services.operator_folders()
    upload.upload(lambda state, path, m: add_report(store, state, path, m, allowed), [reports_state, upload, metric],
                  [reports_state, *shown], api_visibility="private", **CPU_ONLY)
    for button, fmt in ((csv_btn, "csv"), (tex_btn, "latex")):
        button.click(lambda state, f=fmt: export(_reports(store, state)[0], f), reports_state, export_file,
                     api_visibility="private", **CPU_ONLY)
    demo.load(view, [reports_state, metric], shown, api_visibility="private", **CPU_ONLY)
    for trigger in (demo.load, metric.change):
        trigger(lambda m: dashboard_figure({}, m), metric, paper_plot, api_visibility="private", **CPU_ONLY)
    return reports_state


LOCALIZATION_INTRO = (
    "### Does the model look at the change?\n"
    "Measured on generated pairs, whose true change boxes are known. **Pointing**: share of images whose "
    "map peaks inside a true box. **Energy**: share of the map's mass inside the boxes. Each model map "
    "(MDP maps at the deepest MDP layer) beside the plain pixel difference |before − after| and a uniform "
    "map (chance); MDP model and no-MDP twin side by side when the reports hold both.")


def localization_panel(store, reports_state, demo) -> None:
    """The Dashboard's localization panel: pointing and energy per slice, sanity and no-change lines."""
    with gr.Column(elem_id="localization-panel"):
        gr.Markdown(LOCALIZATION_INTRO)
        by = gr.Radio(list(SLICES), value="change type", label="slices", elem_id="localization-by")
        outputs = []
        for title, elem in (("**Pointing** (%)", "localization-pointing"),
                            ("**Energy inside the boxes** (%)", "localization-energy")):
            gr.Markdown(title)
            outputs.append(gr.Dataframe(interactive=False, wrap=True, elem_id=elem, **WIDE_TABLE))
        outputs.append(gr.Markdown(elem_id="localization-notes"))
    for trigger in (demo.load, by.change, reports_state.change):
        trigger(lambda state, b: localization_view(store, state, b), [reports_state, by], outputs,
                api_visibility="private", **CPU_ONLY)


def _reports(store, state) -> tuple[dict, str]:
    """({name: Report} a session shows, a note naming its uploads the server has let go)."""
    loaded, dropped = store.resolve(state)
    note = ""
    if dropped:

        note = (f"ℹ️ The server let go of {md(', '.join(dropped))} to make room for other visitors' reports: "
                "upload it again to see it.")
    return {name: r.report for name, r in loaded.items()}, note


def localization_view(store, state, by: str = "change type"):
    """(pointing table, energy table, sanity and no-change lines) of a session's reports."""
    reports, _ = _reports(store, state)
    return (localization_table(reports, "pointing", by), localization_table(reports, "energy", by),
            localization_notes(reports))


def dashboard_view(store, state, metric: str):
    """The Dashboard's note, figure and tables (``analysis.render``) for a session's reports."""
    reports, note = _reports(store, state)
    return (note, dashboard_figure(reports, metric), slice_table(reports, "per_type"),
            slice_table(reports, ("per_domain", "per_changes")),
            delta_table(reports), grounding_table(reports), changes_table(reports), detection_table(reports),
            protocol_note(reports), protocol_table(reports))


def add_report(store, state, path, metric: str, allowed: tuple[Path, ...] = ()):
    """An uploaded report.json joins the session's reports (under its file name; a name taken gets a ').
    It is checked as data before anything reads it, held once on the server, and its images are shown
    only from ``allowed`` folders (``Services.operator_folders``)."""
    if path is None:
        return (state, *dashboard_view(store, state, metric))
    try:
        loaded = store.read(path, search=(HERE,), allowed=allowed)
    except ReportError as exc:  # a warning: the Dashboard keeps showing what it had
        print(f"m3diff app: refused a report upload: {log_line(exc)}", file=sys.stderr)
        gr.Warning(toast(exc), title="Not a report")
        return (state, *dashboard_view(store, state, metric))
    state, _ = store.add(state, loaded, Path(path).stat().st_size)
    return (state, *dashboard_view(store, state, metric))


def errors_tab(services: Services, gpu, reports_state, demo) -> None:
    """Errors: a report's test pairs, filtered and sorted; a row shows the pair, its text and its maps."""
    store = services.reports
    run_names = [n for n, _ in store.initial()]
    if not run_names:
        gr.Markdown("ℹ️ No report loaded: upload a `report.json` on the Dashboard tab, then pick it here.",
                    elem_classes="note")
    with gr.Row():
        run = gr.Dropdown(run_names, value=run_names[0] if run_names else None, label="run", allow_custom_value=False)
        ftype = gr.Dropdown(["all"], value="all", label="change type")
        fdomain = gr.Dropdown(["all"], value="all", label="domain")
        sort_by = gr.Dropdown(list(SHOWN_METRICS), value="CIDEr-D", label="sort by")
        asc = gr.Checkbox(True, label="worst first")
    table = gr.Dataframe(interactive=False, wrap=True, elem_id="errors-table")
    with gr.Row():
        pair = [gr.ImageSlider(label="pair (true boxes: before cyan, after green)", type="pil", interactive=False,
                               max_height=260, elem_id="errors-pair"),
                gr.Image(label="Before + the model's map", interactive=False, height=260, elem_id="errors-map-before"),
                gr.Image(label="After + the model's map", interactive=False, height=260, elem_id="errors-map-after")]
    pair.append(gr.HTML(elem_id="errors-legend"))
    with gr.Row():
        # shown only for a run with a detection section: every other pair would get two empty frames
        pair += [gr.Image(label="Before: the change reader's boxes (true boxes dashed)", interactive=False,
                          height=260, visible=False, elem_id="errors-read-before"),
                 gr.Image(label="After: the change reader's boxes (true boxes dashed)", interactive=False,
                          height=260, visible=False, elem_id="errors-read-after")]
    text = gr.Markdown(elem_id="errors-text")
    traced = gpu(lambda before, after: _traced(services.captioner, before, after))

    def select_pair(state, name, df, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        loaded = store.resolve(state)[0].get(name)
        ok = loaded is not None and df is not None and row is not None
        *maps, read_b, read_a, text = error_pair(traced, loaded if ok else None, df.iloc[row]["id"] if ok else None)
        read = [gr.update(value=im, visible=im is not None) for im in (read_b, read_a)]
        return *maps, *read, text

    filters = [reports_state, run, ftype, fdomain, sort_by, asc]
    choices = lambda state, name: run_filters(store, state, name)  # noqa: E731
    rows = lambda *a: filter_table(store, *a)  # noqa: E731
    run.change(choices, [reports_state, run], [ftype, fdomain], api_visibility="private", **CPU_ONLY)
    for comp in (run, ftype, fdomain, sort_by, asc):
        comp.change(rows, filters, table, api_visibility="private", **CPU_ONLY)
    table.select(select_pair, [reports_state, run, table], [*pair, text], api_visibility="private",
                 **_model_calls(services))
    reports_state.change(lambda state, name: gr.update(choices=[n for n, _ in state],
                                                       value=name or next((n for n, _ in state), None)),
                         [reports_state, run], run, api_visibility="private", **CPU_ONLY)
    demo.load(choices, [reports_state, run], [ftype, fdomain], api_visibility="private", **CPU_ONLY).then(
        rows, filters, table, api_visibility="private", **CPU_ONLY)


def run_filters(store, state, name: str | None):
    """The change types and domains of a report's pairs, as the Errors tab's filter choices."""
    reports, _ = _reports(store, state)
    if name not in reports:
        return gr.update(choices=["all"], value="all"), gr.update(choices=["all"], value="all")
    types, domains = report_choices(reports[name])
    return gr.update(choices=["all", *types], value="all"), gr.update(choices=["all", *domains], value="all")


def filter_table(store, state, name: str | None, change_type, domain, sort_by, ascending):
    reports, _ = _reports(store, state)
    if name not in reports:
        return pd.DataFrame()
    return pairs_frame(reports[name], change_type or "all", domain or "all", sort_by, bool(ascending))


def _short():
    return GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)


# ============================================================================ start
def launch(demo, config: AppConfig, **kwargs):
    """Queue and launch with the app's limits: upload size, served folders, theme."""


    demo.queue(max_size=64, default_concurrency_limit=None)
    refuse_server_files(demo, allow_urls=config.allow_image_urls)  # files only as uploads, before Gradio moves one
    optional = {"describe": (2, [config.max_new_tokens])}
    kwargs.setdefault("app_kwargs", {"middleware": [Middleware(OptionalAPIArguments, optional=optional)]})
    return demo.launch(
        server_name=config.host, server_port=config.port, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES_DIR), str(EMBEDDED_DIR / "reports")], footer_links=["api"],
        theme=gr.themes.Soft(primary_hue="indigo"), css=CSS,
        # an exception the app did not turn into its own line (gr.Error) shows as a bare "Error", never
        # its text, which may name the server's files; the server's log keeps the traceback
        show_error=False,
        # every API call without a session is a session of its own; Gradio keeps 10,000 of them in
        # memory by default, which grew the server by ~700 MB in a 2-minute soak
        state_session_capacity=SESSION_CAPACITY, **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(config: AppConfig) -> int:
    """Load, lay out and serve; a load error is one line and exit status 2."""
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


if __name__ == "__main__":  # `python app.py` and `make app`
    sys.exit(main())
