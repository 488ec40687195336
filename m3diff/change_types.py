"""The 12 OmniDiff change types, and the one table that maps other datasets' labels onto them.

The paper names the types without defining them; the definitions below are this project's
decision (see ``shared/PAPER.md`` §2). Every label mapping in the code base goes through
``LABEL_MAP`` so there is exactly one place to read or change it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChangeType:
    id: str
    definition: str
    distractor: bool = False  # camera or lighting changes: described only when they are the only change


CHANGE_TYPES: tuple[ChangeType, ...] = (
    ChangeType("viewpoint", "the camera moves; the scene itself is unchanged", distractor=True),
    ChangeType("illumination", "the lighting changes; the scene itself is unchanged", distractor=True),
    ChangeType("addition", "an object appears that was not there before"),
    ChangeType("disappearance", "an object is gone and nothing takes its place"),
    ChangeType("removal", "an object is moved away from its place to another place in the scene"),
    ChangeType("substitution", "an object is replaced by a different object at the same place"),
    ChangeType("size", "the same object becomes larger or smaller"),
    ChangeType("color", "the same object changes its colour"),
    ChangeType("orientation", "the same object rotates rigidly or faces another direction"),
    ChangeType("pose", "the articulated configuration of a person, animal or figure changes"),
    ChangeType("ocr", "text in the scene changes"),
    ChangeType("counting", "the number of instances of one category changes"),
)

TYPE_IDS: tuple[str, ...] = tuple(t.id for t in CHANGE_TYPES)
BY_ID: dict[str, ChangeType] = {t.id: t for t in CHANGE_TYPES}
DISTRACTORS: frozenset[str] = frozenset(t.id for t in CHANGE_TYPES if t.distractor)

# (dataset, its label) -> our type ids. An empty tuple means "no semantic change" (a distractor-only
# pair whose distractor is not labelled by the dataset).
LABEL_MAP: dict[tuple[str, str], tuple[str, ...]] = {
    # CLEVR-Change (Park et al. 2019), type_mapping.json keys; the nsc pairs are viewpoint+illumination
    ("clevr_change", "color"): ("color",),
    ("clevr_change", "material"): ("color",),  # material changes the rendered surface appearance
    ("clevr_change", "add"): ("addition",),
    ("clevr_change", "drop"): ("disappearance",),
    ("clevr_change", "move"): ("removal",),  # PAPER.md §2: "move" is removal (moved elsewhere)
    ("clevr_change", "distractor"): ("viewpoint", "illumination"),
    # CLEVR-DC (Kim et al. 2021): six actions; every pair also has an extreme viewpoint change
    ("clevr_dc", "color"): ("color", "viewpoint"),
    ("clevr_dc", "texture"): ("color", "viewpoint"),
    ("clevr_dc", "add"): ("addition", "viewpoint"),
    ("clevr_dc", "remove"): ("disappearance", "viewpoint"),
    ("clevr_dc", "move"): ("removal", "viewpoint"),
    ("clevr_dc", "nothing"): ("viewpoint",),
}


def map_label(dataset: str, label: str) -> tuple[str, ...]:
    """Our type ids for a dataset's own change label; a clear error for an unknown one."""
    try:
        return LABEL_MAP[(dataset, label)]
    except KeyError:
        known = sorted(lab for ds, lab in LABEL_MAP if ds == dataset)
        raise KeyError(
            f"no mapping for {dataset!r} label {label!r}; known labels: {', '.join(known) or 'none'}"
        ) from None


def validate_types(types) -> tuple[str, ...]:
    """Check a list of type ids and return it in canonical order."""
    unknown = [t for t in types if t not in BY_ID]
    if unknown:
        raise ValueError(f"unknown change type(s) {unknown}; expected some of: {', '.join(TYPE_IDS)}")
    return tuple(t for t in TYPE_IDS if t in set(types))
