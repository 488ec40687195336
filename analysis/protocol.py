"""How a report's numbers were computed: the protocol card every report carries.

What users of difference-captioning repositories ask about most is a score that does not match a
paper's: the ×100 scale, CIDEr against CIDEr-D, empty references, how ids were matched, which pairs
were left out. A report that states these answers most of them, and two reports whose protocols differ
say so when they are compared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version

TOKENIZER = "PTBTokenizer of pycocoevalcap (Stanford CoreNLP 3.4.1): lower-cased, punctuation removed"
CIDER = "CIDEr-D (pycocoevalcap's Cider: σ = 6 length penalty, clipped n-gram counts, ×10), not CIDEr"
SCALE = "×100"


def scorer_version() -> str:
    try:
        return f"pycocoevalcap {version('pycocoevalcap')}"
    except PackageNotFoundError:  # pragma: no cover - a dependency of this package
        return "pycocoevalcap (version unknown)"


@dataclass(frozen=True)
class Protocol:
    scorer: str
    pairs: int
    references_per_pair: tuple[int, float, int]  # min, mean, max
    empty_references: int  # "" references kept and scored as pycocoevalcap scores them
    empty_reference_pairs: int  # pairs whose every reference is ""
    meteor: bool
    spice: bool
    id_matching: str  # "exact", "dataset aliases", "image extension"
    left_out: dict[str, int] = field(default_factory=dict)  # why -> how many ids were not scored
    tokenizer: str = TOKENIZER
    cider: str = CIDER
    scale: str = SCALE

    @classmethod
    def of(cls, references, *, meteor: bool, spice: bool, id_matching: str = "exact",
           left_out: dict[str, list] | None = None) -> "Protocol":
        """The protocol of one scored run: ``references`` are the scored pairs' reference tuples."""
        counts = [len(r) for r in references]
        empty = sum(1 for refs in references for c in refs if not c.strip())
        return cls(scorer=scorer_version(), pairs=len(counts),
                   references_per_pair=(min(counts, default=0), round(sum(counts) / len(counts), 3) if counts else 0.0,
                                        max(counts, default=0)),
                   empty_references=empty,
                   empty_reference_pairs=sum(1 for refs in references if not any(c.strip() for c in refs)),
                   meteor=meteor, spice=spice, id_matching=id_matching,
                   left_out={k: len(v) for k, v in (left_out or {}).items() if v})

    def to_json(self) -> dict:
        out = asdict(self)
        out["references_per_pair"] = dict(zip(("min", "mean", "max"), self.references_per_pair))
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Protocol":
        refs = data.get("references_per_pair") or {}
        return cls(**{**data, "references_per_pair": (refs.get("min", 0), refs.get("mean", 0.0), refs.get("max", 0)),
                      "left_out": dict(data.get("left_out") or {})})

    def lines(self) -> list[tuple[str, str]]:
        """(what, how) rows, as the Dashboard, report.html and table.tex state them."""
        lo, mean, hi = self.references_per_pair
        left = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in self.left_out.items()) or "none"
        return [
            ("scorer", self.scorer),
            ("tokeniser", self.tokenizer),
            ("CIDEr", self.cider),
            ("scale", self.scale),
            ("pairs scored", f"{self.pairs:,}"),
            ("references per pair", f"{lo}–{hi}, mean {mean:g}"),
            ("empty references", f"{self.empty_references} kept as references ({self.empty_reference_pairs} "
                                 "pair(s) with no other), as pycocoevalcap scores them"),
            ("METEOR", "on" if self.meteor else "off"),
            ("SPICE", "on" if self.spice else "off (needs Stanford CoreNLP 3.6.0)"),
            ("ids matched", self.id_matching),
            ("left out", left),
        ]

    def differences(self, other: "Protocol") -> list[str]:
        """What differs between two protocols that changes the numbers (the pairs scored aside)."""
        mine, theirs = dict(self.lines()), dict(other.lines())
        keys = ("scorer", "scale", "CIDEr", "references per pair", "empty references", "METEOR", "SPICE",
                "ids matched", "left out")
        return [f"{k}: {mine[k]} vs {theirs[k]}" for k in keys if mine[k] != theirs[k]]
