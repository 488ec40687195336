"""The training mixture: DiffPairs of several sources → question-answer samples (JSONL).

Paper §4.3: one sample per pair, except CLEVR-Change and CLEVR-DC where every caption of a pair
is its own sample. A source's weight scales how many of its samples go in (integer part: whole
copies; fractional part: a seeded random subset). Each line:
``{"id", "source", "before", "after", "prompt", "answer", "change_types", "domain", "split"}``
with absolute image paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3diff.data.layout import Dataset
from m3diff.data.readers import format_name

EVERY_CAPTION_SOURCES = frozenset({"clevr_change", "clevr_dc"})
GROUND_TRUTH_KEYS = ("regions", "objects", "changes")


@dataclass(frozen=True)
class MixSource:
    path: Path
    format: str | None = None
    weight: float = 1.0


def parse_source(spec: str) -> MixSource:
    """``DIR[:FORMAT][:WEIGHT]``: a trailing number is the weight, a known name the format."""
    parts = spec.split(":")
    path, fmt, weight = parts[0], None, 1.0
    for part in parts[1:]:
        try:
            weight = float(part)
            continue
        except ValueError:
            pass
        fmt = format_name(part)
    if not path:
        raise ValueError(f"--source {spec!r}: no folder given")
    if weight < 0:
        raise ValueError(f"--source {spec!r}: the weight must not be negative")
    return MixSource(Path(path), fmt, weight)


def _answer_captions(pair) -> list[str]:
    # Spot-the-Diff's references are single sentences; an annotator's whole description is the answer.
    if pair.source == "spot_the_diff" and pair.extra.get("annotators"):
        return [" ".join(a) for a in pair.extra["annotators"]]
    # an empty reference is kept for scoring (readers.EMPTY_REFERENCES) but teaches nothing
    return [c for c in pair.captions if c.strip()]


def build_mixture(datasets: list[tuple[MixSource, Dataset]], seed: int = 0, every_caption: bool = False,
                  shuffle: bool = True) -> list[dict]:
    from m3diff.processing import DEFAULT_PROMPT  # lazy: torch and transformers, not needed to read data

    rng = np.random.default_rng([seed, 20250])
    samples: list[dict] = []
    for src, ds in datasets:
        base: list[dict] = []
        for p in ds.pairs:
            caps = _answer_captions(p)
            if not caps:
                continue
            if every_caption or p.source in EVERY_CAPTION_SOURCES:
                chosen = list(enumerate(caps))
            else:
                k = int(rng.integers(len(caps)))
                chosen = [(k, caps[k])]
            for k, answer in chosen:
                base.append({
                    "id": f"{p.source}/{p.id}#{k}", "source": p.source,
                    "before": str(Path(p.before).resolve()) if p.before else None,
                    "after": str(Path(p.after).resolve()) if p.after else None,
                    "prompt": DEFAULT_PROMPT, "answer": answer, "change_types": list(p.change_types),
                    "domain": p.domain, "split": p.split,
                    # the generator's ground truth, for grounded training (training/auxiliary.py)
                    **{k: p.extra[k] for k in GROUND_TRUTH_KEYS if k in p.extra},
                })
        whole, frac = divmod(src.weight, 1.0)
        part = base * int(whole)
        if frac > 0 and base:
            keep = np.sort(rng.permutation(len(base))[: int(round(frac * len(base)))])
            part += [base[i] for i in keep]
        samples += part
    if shuffle:
        samples = [samples[i] for i in rng.permutation(len(samples))]
    return samples


def write_jsonl(samples: list[dict], path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    tmp.replace(path)  # a failed run never leaves half a mixture behind
    return len(samples)
