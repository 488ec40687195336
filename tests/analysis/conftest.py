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
def slice_result(n, cider, lo=None, hi=None, kind="type", name="", words=None):
    """One slice's scores as analysis.breakdown holds them (made-up numbers for the views to show)."""
    from analysis.breakdown import SliceResult
    from analysis.metrics import METRICS

    scores = {m: None for m in METRICS} | {"CIDEr-D": cider, "BLEU-4": cider / 4, "METEOR": 10.0, "ROUGE-L": 30.0}
    ci = {m: None for m in METRICS} | ({"CIDEr-D": (lo, hi)} if lo is not None else {})
    return SliceResult(kind, name, n, scores, ci, [], words=words)


def breakdown(pairs, overall, per_type=None, per_domain=None, per_changes=None, macro_types=()):
    from analysis.breakdown import Breakdown, BreakdownConfig
    from analysis.metrics import METRICS

    return Breakdown(overall, None, per_type or {}, per_domain or {}, {}, {m: None for m in METRICS} | {"CIDEr-D": 1.0},
                     list(macro_types), [], pairs, BreakdownConfig(bootstrap=0), per_changes or {})


def make_report(tmp_path, name="m3diff", shift=0.0, with_images=True, per_changes=None):
    """A report.json as `m3diff eval` writes it (``Report.save``), over a tiny dataset of four pairs."""
    from analysis.breakdown import PairScore
    from analysis.report import PairRecord, Report, ReportMeta, RunReport
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
        pairs.append(PairScore(pid, f"prediction {i}", [f"the {t[0]} changed"], t, "render" if i % 2 else "photo",
                               "synthetic", {"CIDEr-D": 10.0 * i + shift, "BLEU-4": 5.0 * (3 - i), "METEOR": 1.0,
                                             "ROUGE-L": 2.0, "SPICE": None}))
    (data / "test.json").write_text(dumps_records(records), encoding="utf-8")
    bd = breakdown(pairs, slice_result(4, 20.0 + shift, 10.0 + shift, 30.0 + shift, "overall", "overall"),
                   {"color": slice_result(2, 12.0 + shift, 5.0, 19.0), "addition": slice_result(1, 8.0 + shift),
                    "counting": slice_result(1, 3.0 + shift), "ocr": slice_result(1, 40.0 + shift)},
                   {"photo": slice_result(2, 15.0 + shift, kind="domain"), "render": slice_result(2, 25.0 + shift, kind="domain")},
                   per_changes)
    report = Report(ReportMeta(references=str(data), split="test"), {name: RunReport(bd)},
                    [PairRecord(p) for p in pairs])
    return report.save(tmp_path / f"{name}.json")


@pytest.fixture
def report_file(tmp_path):
    return make_report(tmp_path)
