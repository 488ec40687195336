"""Controlled experiments (analysis.probe): probe one pair, knock out MDP scales over a data set."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from analysis.probe import (KnockoutStudy, caption_losses, knockout_study, plan_note, probe_pair, probe_plan,
                            reencode, twin_row, with_twin, word_diff)
from m3diff.data.record import DiffPair
from m3diff.data.synth.chosen import PairRequest, make_pair
from m3diff.describing import GenerationSettings, MDPKnockout
from tests.conftest import pair_images

SETTINGS = GenerationSettings(max_new_tokens=8)


@pytest.fixture
def captioner(make_model, processor):
    from m3diff.pipeline import DiffCaptioner

    return DiffCaptioner(make_model(seed=1), processor, source="test-tiny")


def test_word_diff_marks_only_the_words_that_differ():
    assert word_diff("the red cube moved", "the red cube moved.") == "same"
    assert word_diff("the red cube moved", "the blue cube moved") == "the [-red-] {+blue+} cube moved"
    assert word_diff("a cube", "") == "[-a cube-]"


def test_reencoding_keeps_the_picture_and_changes_the_bytes():
    before = make_pair(PairRequest(("color",), "photo", seed=1, size=96)).before  # a picture, not noise
    again = reencode(before, seed=0)
    diff = np.abs(np.asarray(again, np.int16) - np.asarray(before, np.int16))
    assert 0 < diff.mean() < 20 and again.size == before.size
    assert np.array_equal(np.asarray(again), np.asarray(reencode(before, seed=0)))  # seeded: the same every time


def test_a_probe_runs_every_planned_row_with_its_ablation(captioner, pair):
    probe = probe_pair(captioner, *pair, settings=SETTINGS)
    layers = captioner.info.mdp_layers
    assert [r.name for r in probe.rows] == probe_plan(layers)
    assert probe.row("original").diff == "same" and probe.row("original").loss_change == pytest.approx(0.0)
    for layer in layers:
        scores = probe.row(f"layer {layer} knocked out").layer_scores
        assert scores[layer] == 0 and all(v > 0 for k, v in scores.items() if k != layer)
        # renormalised: the total Score the model computed is kept
        assert sum(scores.values()) == pytest.approx(sum(probe.row("original").layer_scores.values()), rel=1e-4)
    assert all(r.loss is not None and np.isfinite(r.loss) for r in probe.rows)
    assert str(len(probe.rows)) in plan_note(layers)


def test_two_identical_images_give_the_same_caption_in_the_before_twice_row(captioner):
    image, _ = pair_images(seed=4)
    probe = probe_pair(captioner, image, image, settings=SETTINGS)
    assert probe.row("before twice").caption == probe.row("original").caption
    assert probe.row("before twice").diff == "same"
    assert probe.row("before twice").loss_change == pytest.approx(0.0, abs=1e-4)


def test_zero_delta_changes_the_answer_loss_and_a_knockout_leaves_nothing_behind(captioner, pair):
    caption = "the red cube moved behind the blue sphere"
    plain = caption_losses(captioner, [pair], [caption])[0][0]
    zeroed = caption_losses(captioner, [pair], [caption], MDPKnockout(zero_delta=True))[0][0]
    assert abs(zeroed - plain) > 1e-3  # the logits read the difference branch
    assert caption_losses(captioner, [pair], [caption])[0][0] == pytest.approx(plain, abs=1e-6)


def test_concurrent_calls_do_not_see_each_others_knockout(captioner, pair):
    layer = captioner.info.mdp_layers[0]
    expected = {k: captioner.describe(*pair, settings=SETTINGS, knockout=k).layer_scores
                for k in (None, MDPKnockout(scales=(layer,)))}
    got, errors = {}, []

    def run(k):
        try:
            for _ in range(3):
                got.setdefault(k, []).append(captioner.describe(*pair, settings=SETTINGS, knockout=k).layer_scores)
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in expected]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for k, runs in got.items():
        for scores in runs:
            assert scores == pytest.approx(expected[k])


def test_the_twin_row_is_its_own_model(make_model, processor, captioner, pair):
    from m3diff.pipeline import DiffCaptioner

    twin = DiffCaptioner(make_model(seed=2, use_mdp=False), processor, source="test-twin")
    probe = probe_pair(captioner, *pair, settings=SETTINGS)
    row = twin_row(twin, *pair, probe.row("original").caption, settings=SETTINGS)
    both = with_twin(probe, row)
    assert both.rows[-1].name == "no-MDP twin" and both.rows[-1].loss_change is None and both.generates == 2
    with pytest.raises(ValueError, match="no MDP"):
        twin.describe(*pair, settings=SETTINGS, knockout=MDPKnockout(zero_delta=True))


def _made_pairs(n: int) -> list[DiffPair]:
    types = ["color", "size", "addition", "ocr"]
    out = []
    for i in range(n):
        made = make_pair(PairRequest((types[i % len(types)],), "render", seed=i, size=64))
        r = made.record
        out.append(DiffPair(r["id"] + f"-{i}", made.before, made.after, tuple(r["captions"]),
                            tuple(r["change_types"]), r["domain"], r["scene"], "synthetic", "test", dict(r)))
    return out


@pytest.mark.slow
def test_a_knockout_study_measures_each_scale_with_paired_intervals(captioner, tmp_path):
    pairs = _made_pairs(8)
    study = knockout_study(captioner, pairs, model_name="tiny", batch_size=4, settings=SETTINGS, bootstrap=50)
    assert study.layers == tuple(captioner.info.mdp_layers)
    for layer in study.layers:
        d = study.cider[layer]["all"]
        assert d.n == 8 and d.low <= d.delta <= d.high
        assert set(study.cider[layer]) >= {"color", "size", "addition", "ocr"}
        assert "all" in study.recall[layer]
    again = KnockoutStudy.from_json(study.to_json())
    assert again.to_json() == study.to_json()
    with pytest.raises(ValueError, match="knockout"):
        KnockoutStudy.from_json({"kind": "something else"})


def test_the_shipped_models_logits_read_the_difference_branch():
    """A trained model, not a random one: ΔF = 0 changes its answer loss of a true reference; a knockout of a
    scale whose weights it learnt to use changes it too, and neither stays behind."""
    from m3diff.describing import EMBEDDED_DIR
    from m3diff.pipeline import DiffCaptioner

    if not (EMBEDDED_DIR / "config.json").is_file():
        pytest.skip("no embedded model in m3diff/weights")
    captioner = DiffCaptioner.from_pretrained(device="cpu")
    made = make_pair(PairRequest(("color",), "render", seed=2, size=captioner.info.image_size))
    pair, caption = (made.before, made.after), made.references[0]
    plain = caption_losses(captioner, [pair], [caption])[0][0]
    for knockout in (MDPKnockout(zero_delta=True), MDPKnockout(scales=(captioner.info.mdp_layers[-1],))):
        assert abs(caption_losses(captioner, [pair], [caption], knockout)[0][0] - plain) > 1e-2 * plain
    assert caption_losses(captioner, [pair], [caption])[0][0] == pytest.approx(plain, rel=1e-6)


def test_identical_images_give_a_dark_feature_difference_map(captioner):
    """The map a visitor sees first on the shipped model (its best by pointing) is exactly 0 on an identical
    pair: the MDP treats both images alike, so P(F′1) = P(F′2)."""
    image, _ = pair_images(seed=5)
    d = captioner.describe(image, image, settings=SETTINGS)
    assert float(np.abs(d.feature_difference).max()) < 1e-5
