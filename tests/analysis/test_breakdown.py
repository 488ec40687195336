from __future__ import annotations

import numpy as np
import pytest

from analysis.breakdown import BreakdownConfig, analyse, compare
from m3diff.data.record import DiffPair
from tests.analysis.conftest import make_split


def _pairs(recs):
    return [DiffPair(id=r["id"], before=None, after=None, captions=tuple(r["captions"]),
                     change_types=tuple(r["change_types"]), domain=r["domain"], source="synthetic") for r in recs]


@pytest.fixture(scope="module")
def run(scorer):
    recs, preds = make_split(120, seed=7)
    pairs = _pairs(recs)
    hyps = [p["caption"] for p in preds]
    c = scorer.prepare([p.id for p in pairs], hyps, [p.captions for p in pairs])
    return analyse(scorer, c, pairs, hyps, BreakdownConfig(bootstrap=300)), pairs, hyps, c


def test_slices_counts_and_multi_type(run):
    bd, pairs, _, _ = run
    for t, s in bd.per_type.items():
        assert s.n == sum(t in p.change_types for p in pairs)
    assert sum(s.n for s in bd.per_type.values()) == sum(len(p.change_types) for p in pairs) > len(pairs)
    assert sum(s.n for s in bd.per_domain.values()) == len(pairs)
    assert bd.macro["CIDEr-D"] == pytest.approx(np.mean([s.scores["CIDEr-D"] for s in bd.per_type.values()]))
    assert bd.micro.scores == bd.overall.scores  # every pair typed: pooled == overall


def test_ci_contains_estimate_and_shrinks_with_n(run, scorer):
    bd, pairs, hyps, c = run
    for s in [bd.overall, *bd.per_type.values()]:
        for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
            lo, hi = s.ci[m]
            assert lo <= s.scores[m] <= hi, (s.name, m)
    small = analyse(scorer, scorer.prepare([p.id for p in pairs[:30]], hyps[:30], [p.captions for p in pairs[:30]]),
                    pairs[:30], hyps[:30], BreakdownConfig(bootstrap=300))
    for m in ("BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR"):
        w_small = small.overall.ci[m][1] - small.overall.ci[m][0]
        w_big = bd.overall.ci[m][1] - bd.overall.ci[m][0]
        assert w_big < w_small, m


def test_worst_and_pair_scores(run):
    bd, *_ = run
    by_id = {p.id: p for p in bd.pairs}
    worst = [by_id[i].scores["CIDEr-D"] for i in bd.overall.worst]
    assert worst == sorted(worst) and worst[0] == min(p.scores["CIDEr-D"] for p in bd.pairs)
    for t, s in bd.per_type.items():
        assert all(t in by_id[i].types for i in s.worst)


def test_compare_paired_deltas(run, scorer):
    bd, pairs, hyps, _ = run
    worse = ["the red chair moved"] * len(pairs)
    c2 = scorer.prepare([p.id for p in pairs], worse, [p.captions for p in pairs])
    bd2 = analyse(scorer, c2, pairs, worse, BreakdownConfig(bootstrap=300))
    cmp = compare({"a": bd, "b": bd2})
    e = cmp.runs["b"]["overall:overall"]
    assert e.paired and e.deltas["CIDEr-D"].delta < 0 and e.deltas["CIDEr-D"].ci[1] < 0


def _counted(pairs, counts):
    """The same pairs, each with as many change regions as ``counts`` says (None: a dataset that does not say)."""
    return [DiffPair(id=p.id, before=None, after=None, captions=p.captions, change_types=p.change_types,
                     domain=p.domain, source=p.source,
                     extra={} if n is None else {"regions": [{"type": "color"}] * n})
            for p, n in zip(pairs, counts)]


def test_pairs_are_sliced_by_their_number_of_changes_where_the_data_says_it(run, scorer):
    _, pairs, hyps, c = run
    counts = [i % 3 for i in range(len(pairs))]
    bd = analyse(scorer, c, _counted(pairs, counts), hyps, BreakdownConfig(bootstrap=0))
    assert list(bd.per_changes) == ["0", "1", "2"]
    for k, s in bd.per_changes.items():
        assert s.ids == [p.id for p, n in zip(pairs, counts) if str(n) == k]
        # each slice is its own corpus: its CIDEr-D is the one of its pairs alone
        assert s.scores["CIDEr-D"] == pytest.approx(scorer.score(c, c.index(s.ids), meteor=False)["CIDEr-D"])
    assert ("changes", "2") in dict(bd.slices())
    # a real dataset's types say which kinds occur, not how often: no slice rather than a wrong one
    assert analyse(scorer, c, _counted(pairs, [None] * len(pairs)), hyps, BreakdownConfig(bootstrap=0)).per_changes == {}


def test_every_slice_says_how_long_its_captions_and_references_are(scorer):
    pairs = [DiffPair(id=f"p{i}", before=None, after=None, captions=("a red ball moved to the left", "the ball moved"),
                      change_types=("color",), domain="render", source="synthetic") for i in range(4)]
    hyps = ["the ball moved", "the ball moved", "a red ball moved to the left side", "ball"]
    c = scorer.prepare([p.id for p in pairs], hyps, [p.captions for p in pairs])
    bd = analyse(scorer, c, pairs, hyps, BreakdownConfig(bootstrap=0))
    assert bd.overall.words == pytest.approx({"caption": (3 + 3 + 8 + 1) / 4, "references": (7 + 3) / 2})
    assert bd.overall.to_json()["words"] == {"caption": 3.75, "references": 5.0}
    assert bd.per_type["color"].words == bd.overall.words
