"""Make a pair, caption it, score the caption on the spot: a controlled experiment a visitor reruns.

    scorer = MadePairScorer()                      # explicit cache: the CIDEr-D background, built on first use
    made = make_pair(PairRequest(("color",), "photo", seed=7, size=captioner.info.image_size))
    d = captioner.describe(made.before, made.after)
    result = scorer.score(made, d.caption)         # CIDEr-D against the generator's references, and per true
    result.cider, result.changes.truth              # change: named? its new value said? (analysis.changes)

``share_query`` / ``request_from_query`` turn a request into URL parameters and back, so a link (or the
seed alone) reproduces the same pair byte for byte.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from analysis.changes import PairChanges, score_caption
from analysis.grounding import says_no_change
from analysis.metrics import CiderBackground
from m3diff.data.synth.chosen import NO_CHANGE, ImpossiblePair, MadePair, PairRequest, dataset_references, make_pair
from m3diff.data.synth.generator import SynthConfig
from m3diff.describing import GenerationSettings

# The background corpus of CIDEr-D's document frequencies: the test pairs (index digit 9) of `m3diff synth`'s
# default data set, seed 0 — the kind of pairs the shipped reports are scored on
BACKGROUND_PAIRS = 300


def new_seed() -> int:
    """A fresh seed for a pair nobody asked for yet (shown, so it can be shared)."""
    return secrets.randbelow(10**6)


@dataclass(frozen=True)
class MadePairScore:
    cider: float  # CIDEr-D x100 against the pair's references, document frequencies of the background
    changes: PairChanges  # per true change: named, recalled, the new value said (analysis.changes)
    says_no_change: bool  # the caption says the images do not differ (analysis.grounding's rule)


class MadePairScorer:
    """Scores captions of made pairs. Holds the CIDEr-D background (built once, ~0.6 s, on first use); safe
    to share between concurrent requests (building is locked, scoring reads only)."""

    def __init__(self, background_pairs: int = BACKGROUND_PAIRS, seed: int = 0):
        self.background_pairs = background_pairs
        self.seed = seed
        self._background: CiderBackground | None = None
        self._lock = threading.Lock()

    @property
    def background(self) -> CiderBackground:
        with self._lock:
            if self._background is None:
                cfg = SynthConfig(seed=self.seed, pairs=10 * self.background_pairs)
                self._background = CiderBackground(dataset_references(cfg, range(9, cfg.pairs, 10)))
            return self._background

    def score(self, made: MadePair, caption: str) -> MadePairScore:
        return MadePairScore(self.background.score(caption, made.references), score_caption(caption, made.record),
                             says_no_change(caption))


@dataclass(frozen=True)
class MadePairResult:
    made: MadePair
    description: object  # m3diff.describing.Description of the pair (caption, Scores, trace)
    score: MadePairScore
    seconds: float  # making, describing and scoring


def model_size(image_size: int) -> int:
    """The side to draw a pair at for a model of ``image_size`` px: its own, within what the generator draws."""
    return max(64, min(512, int(image_size)))


def make_and_describe(captioner, scorer: MadePairScorer, request: PairRequest,
                      settings: GenerationSettings = GenerationSettings()) -> MadePairResult:
    """The pair ``request`` names, captioned by ``captioner`` (here or in its own process) and scored."""
    start = time.perf_counter()
    made = make_pair(request)
    d = captioner.describe(made.before, made.after, settings=settings)
    return MadePairResult(made, d, scorer.score(made, d.caption), time.perf_counter() - start)


def share_query(request: PairRequest) -> str:
    """URL parameters that make the same pair again: ``types=color,ocr&domain=photo&seed=7&size=128``."""
    return urlencode({"types": ",".join(request.types) or NO_CHANGE, "domain": request.domain,
                      "seed": request.seed, "size": request.size})


def request_from_query(query: str | dict) -> PairRequest:
    """The request a shared link names; ``ImpossiblePair`` (one line) for a link that names none."""
    params = parse_qs(query.lstrip("?")) if isinstance(query, str) else {k: [v] for k, v in query.items()}
    one = lambda k, default: (params.get(k) or [default])[0]  # noqa: E731
    try:
        seed, size = int(one("seed", "")), int(one("size", "128"))
    except ValueError:
        raise ImpossiblePair("the link's seed and size must be whole numbers, e.g. ?types=color&seed=7") from None
    types = tuple(t.strip() for t in str(one("types", NO_CHANGE)).split(",") if t.strip())
    return PairRequest(types, str(one("domain", "render")), seed, size)


__all__ = ["MadePairScorer", "MadePairScore", "MadePairResult", "make_and_describe", "model_size", "new_seed", "share_query", "request_from_query", "BACKGROUND_PAIRS"]
