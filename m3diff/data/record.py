"""The one record every dataset reader yields: a before/after pair with its reference captions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from m3diff.change_types import validate_types


@dataclass(frozen=True)
class DiffPair:
    id: str
    before: Path | None  # None when a reader was asked for annotations only and the image is missing
    after: Path | None
    captions: tuple[str, ...]
    change_types: tuple[str, ...] = ()
    domain: str = ""  # "render" | "photo" for generated data, "real" | "render" for OmniDiff, ...
    scene: str = ""
    source: str = ""  # the dataset it came from: "synthetic", "spot_the_diff", "clevr_change", ...
    split: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.id:
            raise ValueError("a DiffPair needs a non-empty id")
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "change_types", validate_types(self.change_types))
