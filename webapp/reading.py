"""The Describe tab's "What the model read": the changes a model's change reader read in the pair
(``m3diff.reader``), which its caption is written from, as a list of plain lines and as boxes on both
images, one colour per change type in both (``m3diff.overlay.TYPE_COLOURS``).

A model without a reader (the paper's M3Diff) writes its caption from the image tokens alone: the
panel says so in one line. Plain functions of a ``ChangeReading``; the app only lays them out.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

from PIL import Image

from m3diff.facts import ChangeFact, ChangeReading, said
from m3diff.overlay import draw_changes, type_colour_hex

NO_READER = ("This model has no change reader: the paper's M3Diff writes its caption from the image tokens "
             "alone.")
BEFORE_DESCRIBING = ("Describe a pair to see the changes the model's change reader reads in it: its caption is "
                     "written from them.")


def new_value(fact: ChangeFact) -> str:
    """What the change made of the object, in words: the new colour, size, heading, pose, sign word, kind,
    place or count; a camera or light change's detail. Empty where the type has none (an addition, a
    disappearance: the object itself is the news)."""
    after = fact.after
    if fact.type == "counting":
        return f"{fact.n_before} → {fact.n_after}"
    if fact.type in ("viewpoint", "illumination"):
        return ", ".join(part.replace("=", " ") for part in fact.detail.split())
    if after is None:
        return ""
    value = {"color": after.color, "size": after.size, "orientation": after.direction, "pose": after.pose,
             "ocr": after.text, "substitution": after.kind,
             "removal": " ".join(p for p in (after.h, after.v) if p)}.get(fact.type, "")
    return value.replace("_", " ")


def change_line(fact: ChangeFact) -> str:
    """One read change as a person reads it: ``type: before → after · new value · confidence``."""
    parts = []
    if fact.before is not None or fact.after is not None:
        parts.append(f"{fact.before.phrase() if fact.before else '(nothing)'} → "
                     f"{fact.after.phrase() if fact.after else '(gone)'}")
    value = new_value(fact)
    if value:
        parts.append(f"new value: {value}")
    parts.append(f"confidence {fact.confidence:.0%}")
    return f"{fact.type}: " + " · ".join(parts)


def panel_intro(reads_changes: bool) -> str:
    """What the panel says before a pair is described: what it will show, or why it shows nothing."""
    return f'<p class="read-none">{_text(BEFORE_DESCRIBING if reads_changes else NO_READER)}</p>'


def reading_html(reading: ChangeReading | None) -> str:
    """The list beside the caption (``reading`` None: the model has no reader, said in one line). Every
    line is escaped: the facts are the model's, whose vocabulary a model folder defines, and a page must
    show them as text."""
    if reading is None:
        return panel_intro(False)
    if not reading.changes:
        return (f'<p class="read-empty">The change reader read no change (none at confidence ≥ '
                f'{reading.threshold:.0%}): the caption was written from "Changes read: none."</p>')
    given = {id(c) for c in said(reading.changes)}
    items = []
    for c in reading.changes:
        # a camera or light change beside a semantic one is not handed to the language model (captions
        # name it only when it is the pair's only change): say so, or the list would overstate the prompt
        aside = "" if id(c) in given else " (not given to the language model: not the pair's only change)"
        items.append(f'<li data-type="{html.escape(c.type)}"><span class="read-swatch" style="display:inline-block;'
                     f'width:.8em;height:.8em;margin-right:.4em;background:{type_colour_hex(c.type)}"></span>'
                     f"{_text(change_line(c) + aside)}</li>")
    count = len(reading.changes)
    return (f'<p>The change reader read {count} change{"s" if count != 1 else ""} (confidence ≥ '
            f"{reading.threshold:.0%}); the caption is written from them. Boxes on the pair below, in the "
            f'same colours.</p><ul class="read-list">{"".join(items)}</ul>')


def _text(s: str) -> str:
    """Text between tags: <, > and & escaped; quotes are plain text there (only an attribute needs them escaped)."""
    return html.escape(s, quote=False)


@dataclass(frozen=True)
class ReadingView:
    """The panel's outputs: the list, and each image with the read boxes (None without a reader)."""

    html: str
    before: Image.Image | None
    after: Image.Image | None


def reading_view(reading: ChangeReading | None, before: Image.Image | None,
                 after: Image.Image | None) -> ReadingView:
    """The list and both drawings of one pair's reading (``reading``: ``Description.changes``, None for a
    model without a reader)."""
    text = reading_html(reading)
    if reading is None or before is None or after is None:
        return ReadingView(text, None, None)
    frame = reading.size if all(reading.size) else before.size
    return ReadingView(text, draw_changes(before, reading.changes, "before", frame),
                       draw_changes(after, reading.changes, "after", frame))
