"""Scores per change type, domain, source dataset and number of changes, with n, bootstrap intervals,
caption lengths and per-pair scores.

Conventions (docs/analysis.md explains them for users):

- Every slice is re-scored as its own corpus, as the change-captioning literature does
  (RobustChangeCaptioning's ``score_generation_by_type``): BLEU is corpus-level over the slice, CIDEr-D's
  document frequencies come from the slice's references, METEOR is the jar's aggregate over the slice.
  A pair with several change types is in each of their slices.
- ``macro`` is the unweighted mean of the per-type scores over the types that occur (n >= 1);
  ``micro`` is the pooled score: every pair that has at least one type, each once, scored as one corpus
  (equal to ``overall`` when every pair is typed).
- Intervals: percentile bootstrap over the slice's pairs (``bootstrap`` resamples, default 1000), with
  every resample re-scored as a corpus, document frequencies included (``analysis.resample``).
  The resampling of a slice is seeded by (seed, slice), so two runs scored on the same pairs share
  their resamples and their difference gets a paired interval (``compare``).
- Number of changes (``per_changes``, keyed "0", "1", ...) where the data says it (a generated pair's
  ``regions``): a caption of a four-change pair is scored against four-change references, and CIDEr-D's
  length penalty (a Gaussian of the length difference, sigma 6 words) falls hard on a caption that
  leaves one change out. Every slice reports its captions' and references' mean length in words
  (PTB-tokenised, as the metrics see them), so a short caption is seen as short, not only as wrong.
- Per-pair scores, for sorting and browsing errors only: CIDEr-D with the document frequencies of the
  whole evaluated set, pycocoevalcap's smoothed sentence BLEU, the jar's segment METEOR, ROUGE-L.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from analysis import resample
from analysis.metrics import HEADLINE, METRICS, CaptionScorer, PreparedCorpus
from m3diff.change_types import TYPE_IDS
from m3diff.data.record import DiffPair

@dataclass(frozen=True)
class BreakdownConfig:
    bootstrap: int = 1000  # resamples per slice; 0 turns intervals off
    confidence: float = 0.95
    seed: int = 0
    worst_k: int = 10
    min_n_for_ci: int = 2  # a slice of one pair has no spread to resample


@dataclass
class SliceResult:
    kind: str  # "overall" | "micro" | "type" | "domain" | "source" | "changes"
    name: str
    n: int
    scores: dict[str, float | None]  # x100
    ci: dict[str, tuple[float, float] | None]  # x100, (low, high)
    worst: list[str]  # ids of the worst pairs (per-pair CIDEr-D, then BLEU-4)
    ids: list[str] = field(repr=False, default_factory=list)
    draws: dict[str, np.ndarray] | None = field(repr=False, default=None)  # bootstrap draws, x100
    words: dict[str, float] | None = None  # mean length in words: {"caption": ..., "references": ...}

    def to_json(self) -> dict:
        out = {"n": self.n, **{k: _r(v) for k, v in self.scores.items()},
               "ci": {k: (None if v is None else [_r(v[0]), _r(v[1])]) for k, v in self.ci.items()},
               "worst": self.worst}
        if self.words is not None:
            out["words"] = {k: _r(v, 2) for k, v in self.words.items()}
        return out


@dataclass
class PairScore:
    id: str
    caption: str
    refs: list[str]
    types: list[str]
    domain: str
    source: str
    scores: dict[str, float | None]  # x100

    def to_json(self) -> dict:
        return {"id": self.id, "caption": self.caption, "refs": self.refs, "types": self.types,
                "domain": self.domain, "source": self.source, **{k: _r(v) for k, v in self.scores.items()}}


@dataclass
class Breakdown:
    overall: SliceResult
    micro: SliceResult | None
    per_type: dict[str, SliceResult]
    per_domain: dict[str, SliceResult]
    per_source: dict[str, SliceResult]
    macro: dict[str, float | None]
    macro_types: list[str]  # the types the macro mean is over
    absent_types: list[str]  # of the 12, those with no pair here
    pairs: list[PairScore]
    config: BreakdownConfig
    per_changes: dict[str, SliceResult] = field(default_factory=dict)  # "0", "1", ...: where the data says

    def slices(self):
        yield ("overall", "overall"), self.overall
        for kind, table in (("type", self.per_type), ("domain", self.per_domain), ("source", self.per_source),
                            ("changes", self.per_changes)):
            for name, s in table.items():
                yield (kind, name), s


def analyse(scorer: CaptionScorer, corpus: PreparedCorpus, pairs: list[DiffPair], hyps_raw: list[str] | None = None,
            config: BreakdownConfig | None = None, progress=None) -> Breakdown:
    """Score the whole set and every slice. ``pairs`` are in the corpus's order."""
    config = config or BreakdownConfig()
    if [p.id for p in pairs] != corpus.ids:
        raise ValueError("pairs and corpus must list the same ids in the same order")
    hyps_raw = hyps_raw if hyps_raw is not None else corpus.hyps
    n = len(corpus)
    _, cider_all = scorer.cider(corpus)
    per_pair = {
        "CIDEr-D": 100.0 * cider_all,
        "BLEU-4": 100.0 * corpus.sentence_bleu[:, 3],
        "METEOR": None,
        "ROUGE-L": 100.0 * corpus.rouge,
        "SPICE": None if corpus.spice is None else 100.0 * corpus.spice,
    }
    order = np.lexsort((np.array(corpus.ids), per_pair["BLEU-4"], per_pair["CIDEr-D"]))  # worst first
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    sampler = _Sampler(corpus, config)
    hyp_words = np.array([len(h.split()) for h in corpus.hyps], dtype=float)
    ref_words = np.array([np.mean([len(r.split()) for r in refs]) if refs else 0.0 for refs in corpus.refs])

    def run(kind: str, name: str, idx) -> SliceResult:
        idx = np.asarray(sorted(idx), dtype=int)
        if kind != "overall" and len(idx) == n:  # e.g. the only domain: the same corpus, scored once
            return replace(overall, kind=kind, name=name)
        # METEOR comes last (below): the JVM may still be scoring pairs while these run
        scores = scorer.score(corpus, idx, meteor=False)
        draws = sampler.draws(kind, name, idx)
        worst = [corpus.ids[i] for i in idx[np.argsort(rank[idx], kind="stable")][: config.worst_k]]
        if progress is not None:
            progress(kind, name)
        words = {"caption": float(hyp_words[idx].mean()), "references": float(ref_words[idx].mean())}
        return SliceResult(kind, name, len(idx), scores, {}, worst, [corpus.ids[i] for i in idx], draws, words)

    overall = None
    overall = run("overall", "overall", range(n))
    by_type = {t: [i for i, p in enumerate(pairs) if t in p.change_types] for t in TYPE_IDS}
    per_type = {t: run("type", t, idx) for t, idx in by_type.items() if idx}
    typed = [i for i, p in enumerate(pairs) if p.change_types]
    micro = None
    if typed:
        micro = overall if len(typed) == n else run("micro", "micro", typed)
    per_domain = {d: run("domain", d, idx) for d, idx in _groups(p.domain for p in pairs).items()}
    per_source = {s: run("source", s, idx) for s, idx in _groups(p.source for p in pairs).items()}
    counts = [change_count(p) for p in pairs]
    per_changes = {}
    if any(c is not None for c in counts):
        by_count = _groups(None if c is None else str(c) for c in counts)
        per_changes = {c: run("changes", c, by_count[c]) for c in sorted(by_count, key=int)}

    corpus.finish()
    done: set[int] = set()
    for s in [overall, micro, *per_type.values(), *per_domain.values(), *per_source.values(), *per_changes.values()]:
        if s is None or id(s.scores) in done:  # replaced slices share their dicts with overall
            continue
        done.add(id(s.scores))
        idx = corpus.index(s.ids)
        s.scores["METEOR"] = scorer.meteor(corpus, idx)
        if s.draws is not None and s.scores["METEOR"] is not None:
            s.draws["METEOR"] = sampler.meteor_draws(s.kind, s.name, np.asarray(idx))
        a = (1 - config.confidence) / 2 * 100
        s.ci.update({m: None for m in METRICS})
        for m, d in (s.draws or {}).items():
            lo, hi = np.percentile(d, [a, 100 - a])
            s.ci[m] = (float(lo), float(hi))
    per_pair["METEOR"] = None if corpus.meteor is None else 100.0 * corpus.meteor

    macro = {m: _mean([s.scores[m] for s in per_type.values()]) for m in METRICS}
    pair_scores = [
        PairScore(p.id, hyps_raw[i], list(p.captions), list(p.change_types), p.domain, p.source,
                  {m: (None if per_pair[m] is None else float(per_pair[m][i])) for m in HEADLINE})
        for i, p in enumerate(pairs)
    ]
    return Breakdown(overall, micro, per_type, per_domain, per_source, macro, list(per_type),
                     [t for t in TYPE_IDS if t not in per_type], pair_scores, config, per_changes)


def change_count(pair: DiffPair) -> int | None:
    """How many changes a pair has, where its data says so: a generated pair lists each change's region
    (none for a no-change pair); a real dataset's types say which kinds occur, not how many times."""
    regions = pair.extra.get("regions")
    return len(regions) if isinstance(regions, list) else None


@dataclass(frozen=True)
class Delta:
    delta: float
    ci: tuple[float, float] | None = None  # paired bootstrap interval, where the runs were scored together


@dataclass
class SliceDelta:
    n: int
    n_base: int
    paired: bool
    deltas: dict[str, Delta | None]


@dataclass
class Comparison:
    """Each run minus the base run, per slice ("type:color", "overall:overall", …) and metric."""

    base: str
    runs: dict[str, dict[str, SliceDelta]]


def compare(runs: dict[str, Breakdown], base: str | None = None) -> Comparison | None:
    """Each run's scores minus the base run's, per slice and metric, with a paired interval where the
    two runs were scored on the same pairs (their resamples are then the same)."""
    if not runs:
        return None
    base = base or next(iter(runs))
    ref = dict(runs[base].slices())
    out = Comparison(base, {})
    for name, bd in runs.items():
        if name == base:
            continue
        table = {}
        for key, s in bd.slices():
            b = ref.get(key)
            if b is None:
                continue
            paired = s.draws is not None and b.draws is not None and s.ids == b.ids
            deltas: dict[str, Delta | None] = {}
            for m in METRICS:
                if s.scores[m] is None or b.scores[m] is None:
                    deltas[m] = None
                    continue
                ci = None
                if paired and m in s.draws and m in b.draws:
                    a = (1 - bd.config.confidence) / 2 * 100
                    lo, hi = np.percentile(s.draws[m] - b.draws[m], [a, 100 - a])
                    ci = (float(lo), float(hi))
                deltas[m] = Delta(float(s.scores[m] - b.scores[m]), ci)
            table[f"{key[0]}:{key[1]}"] = SliceDelta(s.n, b.n, paired, deltas)
        out.runs[name] = table
    return out


class _Sampler:
    """Bootstrap draws for a slice: the same resamples for the same (seed, slice, n)."""

    def __init__(self, corpus: PreparedCorpus, config: BreakdownConfig):
        self.corpus, self.config = corpus, config
        self._meteor = None

    def weights(self, kind: str, name: str, n: int) -> np.ndarray | None:
        b = self.config.bootstrap
        if b <= 0 or n < self.config.min_n_for_ci:
            return None
        rng = np.random.default_rng([self.config.seed, zlib.crc32(f"{kind}/{name}/{n}".encode())])
        return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)  # [B, n] draw counts

    def draws(self, kind: str, name: str, idx: np.ndarray) -> dict[str, np.ndarray] | None:
        n = len(idx)
        w = self.weights(kind, name, n)
        if w is None:
            return None
        c = self.corpus
        out = {}
        bleu = 100.0 * resample.bleu(c.bleu_stats[idx], w)
        for k in range(4):
            out[f"BLEU-{k + 1}"] = bleu[:, k]
        out["ROUGE-L"] = 100.0 * (w @ c.rouge[idx]) / n
        out["CIDEr-D"] = 100.0 * c.cider_stats.subset(idx).corpus(w)
        if c.spice is not None:
            out["SPICE"] = 100.0 * (w @ c.spice[idx]) / n
        return out

    def meteor_draws(self, kind: str, name: str, idx: np.ndarray) -> np.ndarray:
        if self._meteor is None:
            self._meteor = resample.parse_meteor_stats(self.corpus.meteor_stats)
        w = self.weights(kind, name, len(idx))  # the same resamples as the slice's other metrics
        return 100.0 * resample.meteor(self._meteor[idx], w)


def _groups(values) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v:
            groups.setdefault(v, []).append(i)
    return groups


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)
