"""Evidence as the app shows it: maps over their images on one absolute colour scale with a legend,
a test pair's images (its files, or regenerated from the generator settings its report records), its
true change boxes, whether each map pointed at the change (report.json's ``localization``) and what the
run's change reader read beside the true changes (its ``detection``).

Everything here is plain numpy / PIL / text, so the app only lays it out and tests need no browser.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from analysis.localization import ColourScale, shared_scale
from analysis.render import change_lines, detection_pair_md, hit_line, map_label, pair_markdown
from analysis.report import LoadedReport, Region
from m3diff.change_types import DISTRACTORS
from m3diff.data.synth.generator import SynthConfig, regenerate
from m3diff.describing import MAP_KINDS
from m3diff.images import load_image
from m3diff.overlay import common_size, draw_changes, overlay

CMAP = "inferno"
# the map kinds' units, for the colour legend: a scale means nothing without them
UNITS = {
    "attn_eq5": "attention weight: the difference queries' mean attention on the patch (a query's weights sum "
                "to 1 over both images' patches and the difference tokens)",
    "attn_eq6": "attention weight: the share of the patch's attention that goes to the difference tokens (0–1)",
    "delta_norm": "‖ΔF‖: L2 norm of the vision features' difference per patch (feature units)",
    "feature_difference": "‖P(F′1) − P(F′2)‖: L2 norm of the difference of the image tokens the language model "
                          "reads, per patch (embedding units)",
    "pixel_difference": "mean |before − after| per patch (grey levels, 0–255)",
    "attribution": "attribution of the word (captum, signed; 0 = no effect)",
    "saliency_caption": "|gradient| of log p(caption | images) per patch (captum Saliency)",
}
FEATURE_DIFFERENCE_LABEL = "‖P(F′1) − P(F′2)‖ (image tokens the LLM reads)"
BOX_COLOURS = {"before": (0, 210, 255), "after": (60, 255, 120)}  # cyan / green: not in inferno


# -- maps over images on one absolute scale ---------------------------------------------------------
def map_overlays(before: Image.Image, after: Image.Image, map_before: np.ndarray, map_after: np.ndarray,
                 boxes_before=(), boxes_after=(), scale: ColourScale | None = None, alpha: float = 0.55,
                 sizes: tuple | None = None):
    """Both maps ([g, g] on the model's padded square; ``grid_to_image`` places them, padding undone)
    over their images on ONE absolute scale (``shared_scale``: anchored at 0, so a flat map looks flat
    and a weak one dark), with the true boxes drawn on top. ``sizes``: the original images' sizes the
    boxes are in, when ``before`` / ``after`` are resized copies. Returns (before, after, scale)."""
    scale = scale or shared_scale([map_before, map_after])
    lo_hi = (scale.vmin, scale.vmax)
    size_b, size_a = sizes or (before.size, after.size)
    out_b = draw_boxes(overlay(before, map_before, alpha, CMAP, scale=lo_hi), boxes_before, size_b, "before")
    out_a = draw_boxes(overlay(after, map_after, alpha, CMAP, scale=lo_hi), boxes_after, size_a, "after")
    return out_b, out_a, scale


def colour_legend(scale: ColourScale, kind: str) -> str:
    """An HTML colour bar: the scale's range, in the map kind's units."""
    from matplotlib import colormaps

    cmap = colormaps[CMAP]
    stops = ", ".join("#%02x%02x%02x" % tuple(int(255 * c) for c in cmap(t)[:3]) for t in np.linspace(0, 1, 9))
    base = kind.split("@", 1)[0]
    units = UNITS.get(base, base)
    anchor = "symmetric around 0" if scale.vmin < 0 else "from 0"
    return (f'<div class="colour-legend" data-vmin="{scale.vmin:.6g}" data-vmax="{scale.vmax:.6g}">'
            f'<div style="height:14px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
            f'<div style="display:flex;justify-content:space-between;font-size:.85rem">'
            f'<span>{_num(scale.vmin)}</span><span>one scale for both images, {anchor}</span>'
            f'<span>{_num(scale.vmax)}</span></div>'
            f'<div style="font-size:.85rem">{html.escape(units)}</div></div>')


def scale_note(scale: ColourScale, kind: str) -> str:
    """The colour scale in words, for a place that shows text only."""
    units = UNITS.get(kind.split("@", 1)[0], kind)
    return f"Colour scale {_num(scale.vmin)} … {_num(scale.vmax)}, one for both images: {units}."


def _num(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


def draw_boxes(image: Image.Image, boxes, original_size: tuple[int, int], which: str, dashed: bool = False) -> Image.Image:
    """``boxes`` ((x0, y0, x1, y1) in the original image's pixels, ends exclusive) outlined on ``image``
    (the original or a resized copy of it). ``dashed``: drawn over another box (the change reader's, in
    its type's colour) it leaves that box showing between its dashes; such boxes are clipped to the
    image first (a report may come from anyone, and a box a million pixels wide would be a million dashes)."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return image
    out = image.convert("RGB").copy()
    sx, sy = out.width / original_size[0], out.height / original_size[1]
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 100))
    if not dashed:
        for x0, y0, x1, y1 in boxes:
            draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=BOX_COLOURS[which], width=width)
        return out
    dash = 2 * width + 2  # short enough that a small box still shows the read box between its dashes
    for box in boxes:
        x0, x1 = sorted(min(max(v * sx, 0.0), out.width - 1.0) for v in (box[0], box[2]))
        y0, y1 = sorted(min(max(v * sy, 0.0), out.height - 1.0) for v in (box[1], box[3]))
        for (a0, b0), (a1, b1) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)),
                                   ((x0, y1), (x0, y0))):
            length = max(abs(a1 - a0), abs(b1 - b0))
            steps = max(1, int(length // dash))
            for i in range(0, steps, 2):  # every other stretch: a dash, then a gap
                t0, t1 = i / steps, min(1.0, (i + 1) / steps)
                draw.line([(a0 + (a1 - a0) * t0, b0 + (b1 - b0) * t0), (a0 + (a1 - a0) * t1, b0 + (b1 - b0) * t1)],
                          fill=BOX_COLOURS[which], width=width)
    return out


# -- the map kinds a Description offers ----------------------------------------------------------------
def map_choices(has_feature_difference: bool) -> list[tuple[str, str]]:
    """(label, key) of the maps the Describe tab can draw: the MDP trace's, and ‖P(F′1) − P(F′2)‖ when
    the Description carries it."""
    out = [(label, key) for key, label in MAP_KINDS.items()]
    return out + ([(FEATURE_DIFFERENCE_LABEL, "feature_difference")] if has_feature_difference else [])


def shown_maps(trace, feature_difference, layer: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) [g, g] maps of a Description: one MDP layer's ``kind``, or the layer-free
    ``feature_difference`` (one map for the pair, shown on both images)."""
    if kind == "feature_difference":
        if feature_difference is None:
            raise ValueError("this model's description has no feature-difference map")
        m = np.asarray(feature_difference, np.float32)
        return m, m
    return trace.maps(layer, kind)


# -- a report's test pair ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairPictures:
    before: Image.Image
    after: Image.Image
    regions: list[Region]  # the true changes (empty when unknown)
    source: str  # where the images came from, for a person


def generator_settings(loaded: LoadedReport):
    """The ``SynthConfig`` of a report's generated references (its ``meta.generator``), or None; settings
    that do not check out count as none (a report may come from anyone)."""
    settings = loaded.report.meta.generator
    if settings is None:
        return None
    try:
        return SynthConfig.from_dict(settings)
    except (ValueError, TypeError):
        return None


def pair_pictures(loaded: LoadedReport, pair_id: str) -> PairPictures | None:
    """A test pair's images: the files the report's references name (only inside its allowed folders),
    else regenerated from the generator's settings (reads only the package's own data), else None. A
    regenerated pair whose change types differ from the report's is refused: the settings are not the
    ones the report was scored on."""
    record = loaded.report.pair(pair_id)
    files = loaded.pair_files(pair_id)
    if files is not None:
        b, a = load_image(files[0], name="before image"), load_image(files[1], name="after image")
        return PairPictures(b, a, list(record.regions or []), "the report's data folder")
    cfg = generator_settings(loaded)
    if cfg is None:
        return None

    try:
        truth, b, a = regenerate(cfg, pair_id)
    except ValueError:
        return None
    if set(truth["change_types"]) != set(record.score.types):
        return None
    regions = record.regions if record.regions is not None else [
        Region(r["type"], r.get("before"), r.get("after")) for r in truth["regions"]]
    return PairPictures(b, a, list(regions), f"regenerated from the generator's settings (seed {cfg.seed})")


def true_boxes(regions: list[Region]) -> tuple[list, list]:
    """(before boxes, after boxes) of the semantic changes: what localization is scored against."""
    sem = [r for r in regions or [] if r.type not in DISTRACTORS]
    return [r.before for r in sem if r.before], [r.after for r in sem if r.after]


# -- the Errors tab's view of one pair ---------------------------------------------------------------
@dataclass(frozen=True)
class ErrorView:
    pair: tuple | None  # (before, after) at one size with their true boxes, for a slider
    map_before: Image.Image | None
    map_after: Image.Image | None
    legend: str  # HTML colour bar of the maps ("" without maps)
    text: str  # markdown
    read_before: Image.Image | None = None  # the change reader's boxes beside the true ones (report's detection)
    read_after: Image.Image | None = None


def detection_pictures(pics: PairPictures, hits) -> tuple[Image.Image, Image.Image] | None:
    """Each image of the pair with the boxes its run's change reader read (``DetectionHit.detected``,
    outlined and labelled in its type's colour, as the Describe tab draws them) and the true boxes the
    reading was scored against (``DetectionHit.truth``), dashed in cyan / green over them; None without
    hits. Both kinds of box are in the pair's image pixels, as `m3diff eval` compared them."""
    if not hits:
        return None
    read = [h.detected for h in hits if h.detected is not None]
    truth = [h.truth for h in hits if h.truth is not None]
    out = []
    for side, image in (("before", pics.before), ("after", pics.after)):
        drawn = draw_changes(image, read, side, image.size)
        out.append(draw_boxes(drawn, [getattr(t, f"box_{side}") for t in truth], image.size, side, dashed=True))
    return out[0], out[1]


def at_least(image: Image.Image, side: int = 384) -> Image.Image:
    """A small image (generated pairs are 128 px) enlarged for the page, so its boxes can be seen."""
    k = side / max(image.size)
    if k <= 1:
        return image
    return image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.LANCZOS)


def model_map(description) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, before map, after map) of a Description: ‖P(F′1) − P(F′2)‖ when it carries it, else ‖ΔF‖
    of the deepest MDP layer (the same choice as ``best_map``), else None."""
    if description is None:
        return None
    if description.feature_difference is not None:
        m = np.asarray(description.feature_difference, np.float32)
        return "feature_difference", m, m
    trace = description.trace
    if trace is None or not trace.layers:
        return None
    layer = trace.layers[-1]
    return (f"delta_norm@{layer}", *trace.maps(layer, "delta_norm"))


def error_view(loaded: LoadedReport | None, pair_id: str | None, describe) -> ErrorView:
    """A report's test pair with its true boxes, the loaded model's map over each image (one absolute
    scale, boxes drawn on it), the report's text and the pair's hit or miss, and, when the report's run
    has a ``detection`` section, what its change reader read beside the true changes (a row per hit, and
    both images with the read boxes). ``describe(before, after)`` runs the loaded model (a Description,
    or None)."""
    if loaded is None or pair_id is None:
        return ErrorView(None, None, None, "", "")
    report = loaded.report
    record = report.pair(pair_id)
    text = pair_markdown(record) + "\n\n" + hit_line(report, record)
    if changes := change_lines(report, record):
        text += "\n\n" + changes
    text += "\n\n" + detection_pair_md(report, record)
    hits = None if report.run.detection is None else report.run.detection.pairs.get(pair_id)
    pics = pair_pictures(loaded, pair_id)
    if pics is None:
        if loaded.images.get(pair_id):
            why = "its images are outside the folders this app may read"
        elif report.meta.references and loaded.references_dir is None:  # named, but not read: never say where
            why = "the references the report names were not found in the folders this app may read"
        else:
            why = "the report does not say where this pair's images are"
        return ErrorView(None, None, None, "", text + f"\n\n_({why})_")
    boxes_b, boxes_a = true_boxes(pics.regions)
    b, a = common_size(at_least(pics.before), at_least(pics.after))
    pair = (draw_boxes(b, boxes_b, pics.before.size, "before"), draw_boxes(a, boxes_a, pics.after.size, "after"))
    text += f"\n\n_Images: {pics.source}; true boxes: before in cyan, after in green._"
    read = detection_pictures(pics, hits) or (None, None)
    if read[0] is not None:
        text += ("\n\n_What the change reader read: its boxes in each type's colour, labelled, under the true boxes "
                 "dashed in cyan (before) and green (after)._")
    d = describe(pics.before, pics.after)
    if d is not None and d.layer_scores:
        text += "\n\n**MDP Score**: " + "  ".join(f"L{k} {v:.3f}" for k, v in d.layer_scores.items())
    found = model_map(d)
    if found is None:
        return ErrorView(pair, None, None, "", text, *read)
    name, mb, ma = found
    hb, ha, scale = map_overlays(at_least(pics.before), at_least(pics.after), mb, ma, boxes_b, boxes_a,
                                 sizes=(pics.before.size, pics.after.size))
    text += f"\n\n**Map shown**: {map_label(name)} of the model now loaded."
    return ErrorView(pair, hb, ha, colour_legend(scale, name), text, *read)
