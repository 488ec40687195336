"""Shared fixtures: one CaptionScorer (one METEOR JVM, ~7 s to start) for the whole session."""
from __future__ import annotations

import json
import random
from contextlib import contextmanager

import pytest

from m3diff.change_types import TYPE_IDS
from tests.conftest import pair_images

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


# ---------------------------------------------------------------------------- report.json files (Dashboard, Errors)
def slice_json(n, cider, lo=None, hi=None, **more):
    ci = {"CIDEr-D": [lo, hi]} if lo is not None else {"CIDEr-D": None}
    return {"n": n, "CIDEr-D": cider, "BLEU-4": cider / 4, "METEOR": 10.0, "ROUGE-L": 30.0, "SPICE": None,
            "ci": ci, "worst": [], **more}


def make_report(tmp_path, name="m3diff", shift=0.0, with_images=True):
    """A report.json in `m3diff eval`'s shape (analysis.report.build_report) over a tiny dataset."""
    from m3diff.data.layout import dumps_records

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    records, pairs = [], []
    types = [["color"], ["addition", "color"], ["counting"], ["ocr"]]
    for i, t in enumerate(types):
        b, a = pair_images(seed=i)
        pid = f"p{i}"
        if with_images:
            b.save(data / "images" / f"{pid}_b.png")
            a.save(data / "images" / f"{pid}_a.png")
        records.append({"id": pid, "before": f"images/{pid}_b.png", "after": f"images/{pid}_a.png",
                        "captions": [f"the {t[0]} changed"], "change_types": t,
                        "domain": "render" if i % 2 else "photo", "scene": f"s{i}"})
        pairs.append({"id": pid, "caption": f"prediction {i}", "refs": [f"the {t[0]} changed"], "types": t,
                      "domain": "render" if i % 2 else "photo", "source": "synthetic",
                      "CIDEr-D": 10.0 * i + shift, "BLEU-4": 5.0 * (3 - i), "METEOR": 1.0, "ROUGE-L": 2.0,
                      "SPICE": None})
    (data / "test.json").write_text(dumps_records(records), encoding="utf-8")
    rep = {
        "schema": "m3diff.eval/1",
        "meta": {"run": name, "references": str(data), "split": "test", "n_pairs": 4},
        "overall": slice_json(4, 20.0 + shift, 10.0 + shift, 30.0 + shift),
        "micro": None, "macro": {"CIDEr-D": 1.0, "types": []}, "absent_types": [],
        "per_type": {"color": slice_json(2, 12.0 + shift, 5.0, 19.0), "addition": slice_json(1, 8.0 + shift),
                     "counting": slice_json(1, 3.0 + shift), "ocr": slice_json(1, 40.0 + shift)},
        "per_domain": {"photo": slice_json(2, 15.0 + shift), "render": slice_json(2, 25.0 + shift)},
        "per_source": {}, "pairs": pairs,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(rep), encoding="utf-8")
    return path


@pytest.fixture
def report_file(tmp_path):
    return make_report(tmp_path)
