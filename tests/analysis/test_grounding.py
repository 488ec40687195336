"""Grounding checks: do they tell a model that reads its pair from one that does not?"""
from __future__ import annotations

import json
import zlib

import pytest

from analysis.grounding import GroundingChecks, check_grounding, says_no_change, swaps
from m3diff.data.record import DiffPair
from m3diff.describing import Description


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from m3diff.data.synth.generator import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(seed=9, pairs=400, size=64, no_change=0.3), root, workers=1, progress=False)
    return root


def test_no_change_matcher_reads_the_generators_references(generated):
    from m3diff.data.readers import read_dataset

    pairs = read_dataset(generated, split="train").pairs
    unchanged = [p for p in pairs if p.extra.get("no_change")]
    changed = [p for p in pairs if not p.extra.get("no_change")]
    assert len(unchanged) > 10 and changed
    assert all(says_no_change(c) for p in unchanged for c in p.captions)
    # change captions often close with "nothing else changed" / "apart from this the images are identical"
    wrong = [c for p in changed for c in p.captions if says_no_change(c)]
    assert not wrong, wrong[:3]
    assert says_no_change("There are no differences.") and says_no_change("the two images are identical")
    assert not says_no_change("") and not says_no_change("The red cube moved. Nothing else changed.")


def test_no_change_pairs_are_the_same_scene_without_any_change(generated):
    import numpy as np
    from PIL import Image

    from m3diff.data.readers import read_dataset

    for p in read_dataset(generated, split="train").pairs:
        if p.extra.get("no_change"):
            a = np.asarray(Image.open(p.before), np.int16)
            b = np.asarray(Image.open(p.after), np.int16)
            assert p.change_types == () and p.extra["regions"] == []
            if p.extra["no_change"] == "identical":
                assert np.array_equal(a, b)
            else:  # JPEG ringing at edges or faint noise: small on average, never a visible edit
                assert 0 < np.abs(a - b).mean() < 8, p.extra["no_change"]


def test_swaps_pick_another_pair_and_the_same_scene():
    pairs = [DiffPair(f"p{i}", None, None, ("x",), scene=f"s{i % 3}") for i in range(9)] + \
        [DiffPair("alone", None, None, ("x",), scene="lonely")]
    random, same = swaps(pairs, seed=1)
    assert all(random[i] != i for i in range(len(pairs)))
    for i, j in enumerate(same[:9]):
        assert j != i and pairs[j].scene == pairs[i].scene
    assert same[9] == -1


# -- a captioner whose behaviour we control: it reads its images exactly, or not at all ----------
def _pair_of(path) -> str:
    return str(path).rsplit("/", 1)[-1].split("_")[0]


class Oracle:
    """Captions name the pair its after image belongs to; identical images get 'no difference'."""

    def __init__(self, shuffle: bool = False):
        self.shuffle = shuffle

    def _images(self, pairs):
        return pairs[1:] + pairs[:1] if self.shuffle and len(pairs) > 1 else pairs

    def describe_batch(self, pairs, with_trace=False, settings=None):
        out = []
        for before, after in self._images(list(pairs)):
            text = "There is no difference." if before == after else f"The change of {_pair_of(after)}."
            out.append(Description(text, {}, None, 0.0))
        return out


def oracle_loss(captioner, images, answers, batch_size):
    """Low loss when the images are those of the pair the reference describes."""
    images = captioner._images(list(images))
    return [(0.5 if _pair_of(after) in answer else 1.5, 1) for (_, after), answer in zip(images, answers)]


def _pairs(n=24):
    return [DiffPair(f"p{i:02d}", f"/d/p{i:02d}_before.png", f"/d/p{i:02d}_after.png",
                     (f"The change of p{i:02d}.",), scene=f"scene{i % 4}") for i in range(n)]


def test_a_model_that_reads_its_images_passes():
    checks = check_grounding(Oracle(), _pairs(), identical=10, loss_fn=oracle_loss)
    assert checks.distinct_share == 1.0 and checks.no_change_share == 1.0
    assert checks.same_scene_gap == pytest.approx(2.0) and checks.random_gap == pytest.approx(2.0)
    assert checks.flags == []
    d = checks.to_dict()
    assert d["passed"] and json.loads(json.dumps(d))["same_scene_gap"] == pytest.approx(2.0)


def test_the_same_model_fed_shuffled_images_fails():
    checks = check_grounding(Oracle(shuffle=True), _pairs(), identical=10, loss_fn=oracle_loss)
    assert checks.same_scene_gap < 0.25
    assert any("same-scene" in f for f in checks.flags)


class Constant:
    """Writes one sentence whatever it sees, and scores every caption alike: a blind model."""

    def describe_batch(self, pairs, with_trace=False, settings=None):
        return [Description("The small green arrow turned.", {}, None, 0.0) for _ in pairs]


def test_a_blind_model_is_flagged_on_every_check():
    def flat(captioner, images, answers, batch_size):
        return [(float(zlib.crc32(a.encode()) % 7), 1) for a in answers]

    checks = check_grounding(Constant(), _pairs(), identical=5, loss_fn=flat)
    assert checks.same_scene_gap == pytest.approx(0.0)
    assert len(checks.flags) == 3  # distinct captions, same-scene gap, identical pairs


def test_a_scene_without_partners_is_reported_not_passed():
    pairs = [DiffPair(f"p{i}", f"/d/p{i}_b.png", f"/d/p{i}_a.png", (f"The change of p{i}.",), scene=f"s{i}")
             for i in range(4)]
    checks = check_grounding(Oracle(), pairs, identical=0, loss_fn=oracle_loss)
    assert checks.same_scene_gap is None and checks.no_change_share is None
    assert any("unmeasured" in f for f in checks.flags)
    assert isinstance(checks, GroundingChecks)


@pytest.mark.slow
def test_probe_flags_an_untrained_model_end_to_end(generated, tmp_path):
    """The real model path: `m3diff probe` on a random tiny model flags it and writes the checks."""
    import subprocess
    import sys

    import warnings

    from m3diff.pipeline import DiffCaptioner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DiffCaptioner.untrained().save_pretrained(tmp_path / "blind")
    out = tmp_path / "g.json"
    run = subprocess.run([sys.executable, "-m", "m3diff", "probe", "--model", f"blind={tmp_path / 'blind'}",
                          "--data", str(generated), "--split", "train", "--pairs", "24", "--identical", "4",
                          "--max-new-tokens", "8", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FLAG" in run.stdout
    doc = json.loads(out.read_text())
    blind = doc["models"]["blind"]
    assert not blind["passed"] and abs(blind["same_scene_gap"]) < 0.1
    assert blind["n_same_scene"] > 0 and blind["n_pairs"] == 24
    assert 0 < blind["distinct_ceiling"] <= 1  # generated data: the ceiling is known


def test_the_distinct_ceiling_is_reported_beside_the_share():
    """Four pairs whose references say the same thing cap any describer at 20 of 24 distinct."""
    facts = [("the light is darker",)] * 4 + [(f"change {i}",) for i in range(20)]
    reads = check_grounding(Oracle(), _pairs(), identical=0, loss_fn=oracle_loss, facts=facts)
    assert reads.distinct_ceiling == pytest.approx(20 / 24) and reads.distinct_share == 1.0
    assert reads.to_dict()["distinct_ceiling"] == pytest.approx(20 / 24)
    with pytest.raises(ValueError, match="facts for 3 pairs, but 24"):
        check_grounding(Oracle(), _pairs(), identical=0, loss_fn=oracle_loss, facts=facts[:3])

    def flat(captioner, images, answers, batch_size):
        return [(1.0, 1) for _ in answers]

    blind = check_grounding(Constant(), _pairs(), identical=0, loss_fn=flat, facts=facts)
    assert any(f.startswith("distinct captions 0% < 90%") and "83%" in f for f in blind.flags)
    from analysis.render import grounding_rows
    from analysis.report import GroundingSection, Report, ReportMeta

    none = check_grounding(Constant(), _pairs(), identical=0, loss_fn=flat)
    report = Report(ReportMeta(), {}, [], grounding=GroundingSection("d", "test", 24, {"blind": blind, "none": none}))
    rows = grounding_rows(report)
    assert rows[0]["distinct captions"] == "0% (ceiling 83%)" and rows[1]["distinct captions"] == "0%"


