"""Make a pair and score its caption on the spot (analysis.madepair, analysis.metrics.CiderBackground)."""
from __future__ import annotations

import io

import pytest
from pycocoevalcap.cider.cider_scorer import CiderScorer

from analysis.madepair import MadePairScorer, make_and_describe, model_size, request_from_query, share_query
from analysis.metrics import CiderBackground, ptb_like
from m3diff.data.synth.chosen import ImpossiblePair, PairRequest, dataset_references, make_pair
from m3diff.data.synth.generator import SynthConfig
from m3diff.describing import GenerationSettings


@pytest.fixture(scope="module")
def background_refs():
    return dataset_references(SynthConfig(seed=0, pairs=400), range(9, 400, 10))


def test_the_python_tokenisation_is_the_ptb_tokenizers_on_generated_references(background_refs):
    from analysis.metrics import CaptionScorer, ScorerConfig

    texts = [r for refs in background_refs for r in refs] + ["The sign didn't say OPEN; it's the man's left-hand arrow."]
    with CaptionScorer(ScorerConfig(meteor=False, spice=False)) as scorer:
        assert [ptb_like(t) for t in texts] == scorer.tokenize(texts)


def test_cider_of_one_caption_is_pycocoevalcaps_over_the_whole_corpus(background_refs):
    made = make_pair(PairRequest(("color",), "render", seed=3))
    caption = "The small gray cube in the middle turned green."
    cs = CiderScorer(n=4, sigma=6.0)
    for refs in background_refs:
        cs += ("", [ptb_like(r) for r in refs])
    cs += (ptb_like(caption), [ptb_like(r) for r in made.references])
    _, scores = cs.compute_score()
    background = CiderBackground(background_refs)
    assert background.score(caption, made.references) == pytest.approx(100 * scores[-1], rel=1e-9)
    assert background.score(made.references[0], made.references[1:]) > background.score("nothing here", made.references)


def test_a_reference_named_as_the_caption_names_the_change_and_its_new_value():
    made = make_pair(PairRequest(("color",), "photo", seed=11))
    score = MadePairScorer(background_pairs=20).score(made, made.references[0])
    hit, = score.changes.truth
    assert hit.type == "color" and hit.recalled and hit.value_right
    assert score.cider > 0 and not score.says_no_change
    nothing = MadePairScorer(background_pairs=20).score(made, "The two images are the same.")
    assert nothing.says_no_change and not nothing.changes.truth[0].recalled


def test_a_shared_link_makes_the_same_pair_byte_for_byte():
    request = PairRequest(("ocr", "counting"), "photo", seed=4242, size=96)
    again = request_from_query(share_query(request))
    assert again == request
    png = lambda im: (lambda b: (im.save(b, format="PNG"), b.getvalue())[1])(io.BytesIO())  # noqa: E731
    assert png(make_pair(again).after) == png(make_pair(request).after)
    with pytest.raises(ImpossiblePair, match="whole numbers"):
        request_from_query("types=color&seed=abc")


def test_make_and_describe_draws_at_the_models_resolution(make_model, processor):
    from m3diff.pipeline import DiffCaptioner

    captioner = DiffCaptioner(make_model(seed=1), processor, source="test-tiny")
    size = model_size(captioner.info.image_size)
    assert size == max(64, captioner.info.image_size)
    result = make_and_describe(captioner, MadePairScorer(background_pairs=20),
                               PairRequest(("size",), "render", seed=1, size=size), GenerationSettings(max_new_tokens=6))
    assert result.made.before.size == (size, size)
    assert result.score.changes.types == ("size",) and len(result.score.changes.truth) == 1
