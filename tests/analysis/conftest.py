"""Shared fixtures: one CaptionScorer (one METEOR JVM, ~7 s to start) for the whole session."""
from __future__ import annotations

import json
import random
from contextlib import contextmanager

import pytest

from m3diff.change_types import TYPE_IDS

NOUNS = "man woman chair table cup car dog sign lamp bottle box plant book window door".split()
ADJ = "red blue green small large wooden metal left right".split()
VERB = "moved appeared disappeared changed rotated replaced".split()
FUN = "the a of in on to from with near behind".split()


def sentence(rng: random.Random, k: int) -> str:
    out: list[str] = []
    while len(out) < k:
        out += [rng.choice(FUN), rng.choice(ADJ), rng.choice(NOUNS), rng.choice(VERB), rng.choice(FUN), rng.choice(NOUNS)]
    return " ".join(out[:k]).capitalize() + "."


def make_split(n: int, seed: int = 0, words: int = 16) -> tuple[list[dict], list[dict]]:
    """Records in our layout and noisy-copy predictions for them."""
    rng = random.Random(seed)
    recs, preds = [], []
    for i in range(n):
        types = rng.sample(TYPE_IDS, rng.choice([1, 1, 2, 3]))
        caps = [sentence(rng, rng.randint(words // 2, words * 3 // 2)) for _ in range(rng.choice([1, 2, 3]))]
        recs.append({"id": f"p{i:04d}", "before": f"img/{i}_a.png", "after": f"img/{i}_b.png", "captions": caps,
                     "change_types": types, "domain": rng.choice(["real", "render"]), "scene": f"s{i % 7}"})
        hyp = [w if rng.random() < 0.6 else rng.choice(NOUNS + ADJ + FUN) for w in caps[0].split()]
        preds.append({"id": f"p{i:04d}", "caption": " ".join(hyp)})
    return recs, preds


@pytest.fixture(scope="session")
def scorer():
    from analysis.metrics import CaptionScorer

    with CaptionScorer() as s:
        yield s


@pytest.fixture()
def cli_scorer(monkeypatch, scorer):
    """`m3diff eval` run inside a test scores with the session's scorer instead of starting its own METEOR
    JVM (10-15 s each on the loaded 2-core machine); a different ScorerConfig (--no-meteor) still gets its own."""
    import analysis.metrics as metrics

    real = metrics.CaptionScorer

    @contextmanager
    def shared(config=None, availability=None):
        if config is None or config == scorer.config:
            yield scorer  # not closed here: the session fixture owns it
        else:
            with real(config, availability) as own:
                yield own

    monkeypatch.setattr(metrics, "CaptionScorer", shared)
    return scorer


@pytest.fixture()
def dataset(tmp_path):
    """A 60-pair test split in our layout, with a predictions file."""
    recs, preds = make_split(60, seed=1)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.json").write_text(json.dumps(recs))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path
