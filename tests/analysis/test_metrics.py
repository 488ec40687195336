"""Metric numbers: hand-computable cases, equality with pycocoevalcap's own scorers, slices re-scored."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from analysis import resample
from analysis.metrics import CaptionScorer, ScorerConfig, check_metrics, lcs_length, rouge_l
from tests.analysis.conftest import make_split


def test_bleu_hand_computed(scorer):
    # hypothesis == reference (5 tokens): every precision 1, no brevity penalty -> BLEU 100
    c = scorer.prepare(["a"], ["a red cube is here"], [["a red cube is here"]], tokenized=True)
    s = scorer.score(c)
    assert s["BLEU-1"] == pytest.approx(100.0) and s["BLEU-4"] == pytest.approx(100.0, abs=1e-6)
    # 3 of 4 unigrams match, 1 of 3 bigrams; hyp as long as ref -> BLEU-2 = sqrt(3/4 * 1/3) = 0.5
    c = scorer.prepare(["a"], ["a b c x"], [["a b c d"]], tokenized=True)
    s = scorer.score(c)
    assert s["BLEU-1"] == pytest.approx(75.0, abs=1e-6)
    assert s["BLEU-2"] == pytest.approx(100 * math.sqrt(0.75 * 2 / 3), abs=1e-6)


def test_cider_hand_computed(scorer):
    # Two pairs whose hypotheses equal their single reference, no n-gram shared across pairs: every
    # n-gram has df 1, idf log(2); the cosine is 1 per order, the length penalty 1 -> 10 per pair.
    c = scorer.prepare(["a", "b"], ["red cube left", "blue ball right"], [["red cube left"], ["blue ball right"]],
                       tokenized=True)
    score, per = scorer.cider(c)
    # order 4 has no n-gram in 3 words: val 0 for it, so the mean over 4 orders is 3/4 -> 7.5
    assert per == pytest.approx([7.5, 7.5]) and score == pytest.approx(7.5)
    # with a single document, log(1) = 0 for everything: CIDEr-D is 0 whatever the words
    c1 = scorer.prepare(["a"], ["red cube left"], [["red cube left"]], tokenized=True)
    assert scorer.cider(c1)[0] == 0.0


def test_identical_to_pycocoevalcap(scorer):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    recs, preds = make_split(40, seed=3)
    ids = [r["id"] for r in recs]
    gts = PTBTokenizer().tokenize({r["id"]: [{"caption": c} for c in r["captions"]] for r in recs})
    res = PTBTokenizer().tokenize({p["id"]: [{"caption": p["caption"]}] for p in preds})
    want = {}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    want.update({f"BLEU-{k + 1}": 100 * b[k] for k in range(4)})
    want["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    want["CIDEr-D"] = 100 * Cider().compute_score(gts, res)[0]
    want["METEOR"] = 100 * scorer._meteor.compute_score(gts, res)[0]  # the same jar, its own protocol

    c = scorer.prepare(ids, [p["caption"] for p in preds], [r["captions"] for r in recs])
    got = scorer.score(c)
    for m, v in want.items():
        assert got[m] == pytest.approx(v, rel=1e-12, abs=1e-12), m
    assert got["SPICE"] is None  # no CoreNLP jars on the test machines
    assert c.hyps == [res[i][0] for i in ids] and c.refs == [gts[i] for i in ids]


def test_reference_cider_option_agrees(scorer):
    recs, preds = make_split(30, seed=4)
    c = scorer.prepare([r["id"] for r in recs], [p["caption"] for p in preds], [r["captions"] for r in recs])
    ref = CaptionScorer.__new__(CaptionScorer)
    ref.config = ScorerConfig(reference_cider=True)
    idx = list(range(0, 30, 2))
    assert scorer.cider(c, idx)[0] == pytest.approx(CaptionScorer.cider(ref, c, idx)[0], rel=1e-12)


def test_subsets_are_rescored_not_sliced(scorer):
    """A slice's CIDEr-D uses the slice's document frequencies: it differs from averaging the
    whole-corpus per-pair scores over the slice, and equals scoring the slice alone."""
    recs, preds = make_split(50, seed=5)
    ids, hyps, refs = [r["id"] for r in recs], [p["caption"] for p in preds], [r["captions"] for r in recs]
    c = scorer.prepare(ids, hyps, refs)
    idx = [i for i, r in enumerate(recs) if "color" in r["change_types"]]
    assert 3 <= len(idx) < 50
    sliced = scorer.score(c, idx)
    alone = scorer.prepare([ids[i] for i in idx], [hyps[i] for i in idx], [refs[i] for i in idx])
    fresh = scorer.score(alone)
    for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert sliced[m] == pytest.approx(fresh[m], rel=1e-12), m
    per_pair_whole = 100 * scorer.cider(c)[1][idx].mean()
    assert abs(sliced["CIDEr-D"] - per_pair_whole) > 1e-6


def test_resampled_metrics_match_with_unit_weights(scorer):
    recs, preds = make_split(40, seed=6)
    c = scorer.prepare([r["id"] for r in recs], [p["caption"] for p in preds], [r["captions"] for r in recs])
    c.finish()
    ones = np.ones((1, 40))
    s = scorer.score(c)
    assert 100 * resample.bleu(c.bleu_stats, ones)[0, 3] == pytest.approx(s["BLEU-4"], rel=1e-9)
    assert 100 * resample.meteor(resample.parse_meteor_stats(c.meteor_stats), ones)[0] == pytest.approx(s["METEOR"], rel=1e-9)
    assert 100 * c.cider_stats.corpus(ones)[0] == pytest.approx(s["CIDEr-D"], rel=1e-9)
    # a resample with a pair drawn twice == pycocoevalcap given that pair twice under two ids
    w = np.ones((1, 40)); w[0, 0], w[0, 1] = 2, 0
    idx = [0, 0] + list(range(2, 40))
    dup = scorer.prepare([f"k{i}" for i in range(40)], [c.hyps[i] for i in idx], [c.refs[i] for i in idx], tokenized=True)
    assert 100 * c.cider_stats.corpus(w)[0] == pytest.approx(scorer.score(dup)["CIDEr-D"], rel=1e-9)


def test_fast_rouge_equals_pycocoevalcap():
    from pycocoevalcap.rouge.rouge import Rouge, my_lcs

    rng = random.Random(0)
    vocab = "a b c d e".split()
    for _ in range(500):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == my_lcs(a, b)
        assert rouge_l(" ".join(a), [" ".join(b), "a b"]) == Rouge().calc_score([" ".join(a)], [" ".join(b), "a b"])


def test_line_breaks_do_not_shift_ids(scorer):
    # pycocoevalcap's tokenizer would put "lines" on the next caption's id
    assert scorer.tokenize(["two\rlines", "next", "", "x\u2028y"]) == ["two lines", "next", "", "x y"]


def test_spice_reported_unavailable_without_jars(monkeypatch, tmp_path):
    from analysis import metrics

    monkeypatch.setattr(metrics, "SPICE_JARS", (tmp_path / "missing.jar",))
    a = check_metrics()
    assert not a.spice and "SPICE" not in a.runnable and any("CoreNLP" in n for n in a.notes)
    # the line is stored in reports, which the app shows to visitors: no path of this machine in it
    hint = next(n for n in a.notes if "CoreNLP" in n)
    assert str(metrics._PKG_DIR) not in hint and "/" not in hint.replace("spice/lib", "")
    with pytest.raises(RuntimeError, match="CoreNLP"):
        CaptionScorer(ScorerConfig(spice=True, meteor=False), availability=a)


