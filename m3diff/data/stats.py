"""Dataset statistics in the shape of the paper's Table 2."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from m3diff.change_types import TYPE_IDS
from m3diff.data.record import DiffPair

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# A sentence ends at . ! ? followed by space or the end; a decimal point is not an end.
_SENTENCE_END = re.compile(r"(?<!\d)[.!?]+(?=\s|$)")
LONG_CAPTION_WORDS = 20


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if words(s)]


@dataclass
class DatasetStats:
    """A split in the shape of the paper's Table 2, and what its reader noticed."""

    pairs: int
    captions: int
    sentences: int
    sentences_per_caption: float
    captions_per_pair: float
    avg_words: float
    vocabulary: int
    long_caption_pct: float
    per_type: dict[str, int]  # a pair with several types counts under each
    untyped_pairs: int
    per_domain: dict[str, int]
    format: str | None = None
    missing_images: int = 0
    empty_reference_pairs: int = 0  # pairs whose only references are "" (kept, as the authors keep them)

    def to_json(self) -> dict:
        return asdict(self)

    def format_text(self, title: str = "") -> str:
        lines = [title] if title else []
        lines += [
            f"pairs                   {self.pairs:,}",
            f"captions                {self.captions:,}  ({self.captions_per_pair} per pair)",
            f"sentences               {self.sentences:,}  ({self.sentences_per_caption} per caption)",
            f"average words           {self.avg_words}",
            f"vocabulary              {self.vocabulary:,}",
            f"captions > {LONG_CAPTION_WORDS} words      {self.long_caption_pct}%",
            "domains                 " + ", ".join(f"{k} {v:,}" for k, v in self.per_domain.items()),
            "pairs per change type" + ("" if self.per_type else "  (none labelled)"),
        ]
        lines += [f"  {t:<22}{self.per_type[t]:,}" for t in TYPE_IDS if t in self.per_type]
        if self.untyped_pairs:
            lines.append(f"  {'(no type label)':<22}{self.untyped_pairs:,}")
        if self.empty_reference_pairs:
            lines.append(f"pairs with only empty references  {self.empty_reference_pairs:,} (kept, each with one \"\" "
                         "reference, as the authors' evaluation files keep them)")
        return "\n".join(lines)


def compute_stats(pairs: Iterable[DiffPair]) -> DatasetStats:
    """Pairs, captions, sentences, average words per caption, vocabulary, % captions over 20 words,
    and pairs per change type."""
    n_pairs = n_caps = n_sents = n_words = n_long = 0
    vocab: set[str] = set()
    per_type = Counter()
    per_domain = Counter()
    untyped = 0
    for p in pairs:
        n_pairs += 1
        per_domain[p.domain or "?"] += 1
        for t in p.change_types:
            per_type[t] += 1
        untyped += not p.change_types
        for c in p.captions:
            w = words(c)
            n_caps += 1
            n_words += len(w)
            n_long += len(w) > LONG_CAPTION_WORDS
            n_sents += len(sentences(c))
            vocab.update(w)
    return DatasetStats(
        pairs=n_pairs, captions=n_caps, sentences=n_sents,
        sentences_per_caption=round(n_sents / n_caps, 2) if n_caps else 0.0,
        captions_per_pair=round(n_caps / n_pairs, 2) if n_pairs else 0.0,
        avg_words=round(n_words / n_caps, 2) if n_caps else 0.0,
        vocabulary=len(vocab),
        long_caption_pct=round(100.0 * n_long / n_caps, 1) if n_caps else 0.0,
        per_type={t: per_type[t] for t in TYPE_IDS if per_type[t]},
        untyped_pairs=untyped,
        per_domain=dict(sorted(per_domain.items())))
