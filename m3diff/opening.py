"""The count-first opening of a caption: "Three changes." before the description.

A model trained with it (the `grounding.count_first` recipe option; its config's `caption_opening` is
"count") decides how many things changed once, at the first answer token, and every later end-of-caption
decision can read that number back from its own context. The opening is a plan, not part of the
description: the pipeline takes it off the caption and reports it as ``Description.changes_counted``.
"""
from __future__ import annotations

import re

OPENINGS = ("count",)  # the values of M3DiffConfig.caption_opening besides None
NUMBER_WORDS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")
# Camera and light changes: the references describe them only when nothing else changed (a distractor
# beside an object change, as in CLEVR-Change), so they count only then.
GLOBAL_TYPES = frozenset({"viewpoint", "illumination"})
_OPENING_RE = re.compile(r"\s*(" + "|".join(NUMBER_WORDS) + r") changes?\.(?:\s+|$)")


def count_sentence(n: int) -> str:
    """ "No change.", "One change.", "Two changes." … (n ≥ 10 is said as "Nine changes.")."""
    n = max(0, min(int(n), len(NUMBER_WORDS) - 1))
    return f"{NUMBER_WORDS[n]} change{'' if n < 2 else 's'}."


def described_changes(regions) -> int:
    """How many changes the references of a generated pair describe: its object changes, or 1 when only
    the camera or the light changed, 0 for a no-change pair. ``regions``: the generator's per-change
    records (each with a ``type``)."""
    types = [r["type"] for r in regions or ()]
    return sum(t not in GLOBAL_TYPES for t in types) or (1 if types else 0)


def with_opening(answer: str, regions) -> str:
    """A reference caption as a count-first model is trained to write it."""
    return f"{count_sentence(described_changes(regions))} {answer}"


def opening_text(changes_counted: int | None) -> str:
    """The sentence a count-first model said before its caption (``Description.changes_counted``), for
    re-scoring the caption as the model wrote it (captum attributions); "" for other models."""
    return "" if changes_counted is None else count_sentence(changes_counted)


def split_opening(caption: str) -> tuple[int | None, str]:
    """(the number said, the description) of a count-first caption. A caption that does not open with
    a count sentence is returned whole with None; one that is only the count is kept as it is."""
    m = _OPENING_RE.match(caption)
    if m is None:
        return None, caption
    rest = caption[m.end():].strip()
    return NUMBER_WORDS.index(m.group(1)), rest or caption.strip()


def could_open(text: str) -> bool:
    """Whether a stream should hold the start of a count-first caption back: it may still become a count
    sentence, or it is one with nothing after it yet."""
    text = text.lstrip()
    m = _OPENING_RE.match(text)
    if m:
        return not text[m.end():].strip()
    return any(count_sentence(n).startswith(text) for n in range(len(NUMBER_WORDS)))
