"""`m3diff synth` -> `m3diff predict` (a saved tiny model) -> `m3diff eval`, on one generated set."""
from __future__ import annotations

import csv
import json

import pytest

from analysis.render import changes_label
from analysis.report import Report
from m3diff.cli import main
from m3diff.pipeline import DiffCaptioner


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def data(workdir):
    out = workdir / "synth"
    assert main(["synth", "--out", str(out), "--pairs", "60", "--seed", "0", "--size", "64", "--workers", "1",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def model_dir(workdir, tiny_tokenizer, tiny_config):
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.processing import PairProcessor

    import torch

    torch.manual_seed(0)
    model = M3DiffForConditionalGeneration(preset("tiny", vocab_size=len(tiny_tokenizer))).eval()
    path = workdir / "model"
    DiffCaptioner(model, PairProcessor.for_config(tiny_config, tiny_tokenizer)).save_pretrained(path)
    return path


def _test_ids(data):
    return [r["id"] for r in json.loads((data / "test.json").read_text())]


def _predict(data, model_dir, out, *extra):
    return main(["predict", "--data", str(data), "--split", "test", "--out", str(out), "--model", str(model_dir),
                 "--max-new-tokens", "8", "--batch-size", "4", *extra])


@pytest.fixture(scope="module")
def predictions(data, model_dir, workdir):
    out = workdir / "pred.json"
    assert _predict(data, model_dir, out) == 0
    return out


def test_predict_writes_one_caption_per_test_pair(predictions, data, model_dir):
    doc = json.loads(predictions.read_text())
    assert doc["model"] == str(model_dir) and doc["split"] == "test" and doc["data"] == str(data)
    rows = doc["predictions"]
    ids = _test_ids(data)
    assert len(ids) >= 4 and [r["id"] for r in rows] == ids  # one per pair, in the split's order
    assert all(set(r) == {"id", "caption"} and isinstance(r["caption"], str) for r in rows)
    assert any(r["caption"] for r in rows)
    assert "changes" not in doc  # a model without a change reader has none to store



def test_predict_resumes_only_missing_ids(predictions, data, model_dir, workdir, monkeypatch, capsys):
    doc = json.loads(predictions.read_text())
    missing = doc["predictions"][1]
    partial = dict(doc, predictions=[r for r in doc["predictions"] if r["id"] != missing["id"]])
    out = workdir / "partial.json"
    out.write_text(json.dumps(partial))
    described = []
    original = DiffCaptioner.describe_batch

    def spy(self, pairs, **kwargs):
        described.extend(pairs)
        return original(self, pairs, **kwargs)

    monkeypatch.setattr(DiffCaptioner, "describe_batch", spy)
    assert _predict(data, model_dir, out) == 0
    assert len(described) == 1 and missing["id"] in str(described[0][0])
    # the missing caption is recomputed (greedy decoding: the same), the others kept, the split order restored
    assert json.loads(out.read_text())["predictions"] == doc["predictions"]
    described.clear()
    capsys.readouterr()
    assert _predict(data, model_dir, out) == 0
    assert not described and "already predicted" in capsys.readouterr().err


@pytest.fixture
def seen_settings(monkeypatch) -> list:
    """The GenerationSettings of every describe_batch call the test makes, in order."""
    seen = []
    original = DiffCaptioner.describe_batch

    def spy(self, pairs, **kwargs):
        seen.append(kwargs["settings"])
        return original(self, pairs, **kwargs)

    monkeypatch.setattr(DiffCaptioner, "describe_batch", spy)
    return seen


def test_predict_records_the_end_threshold_and_resumes_only_with_the_same(predictions, data, model_dir, workdir,
                                                                          capsys, seen_settings):
    out = workdir / "ended.json"
    assert _predict(data, model_dir, out, "--min-end-probability", "0.5", "--limit", "2") == 0
    assert [s.min_end_probability for s in seen_settings] == [0.5] and json.loads(out.read_text())["min_end_probability"] == 0.5
    before = out.read_text()
    capsys.readouterr()
    for other in ([], ["--min-end-probability", "0.9"]):  # plain greedy, or another threshold: two runs mixed
        assert _predict(data, model_dir, out, *other) == 2
        err = capsys.readouterr().err
        assert "min_end_probability 0.5" in err and "--min-end-probability 0.5" in err and "Traceback" not in err
        assert out.read_text() == before
    assert _predict(data, model_dir, out, "--min-end-probability", "0.5") == 0  # the same: it goes on
    assert len(json.loads(out.read_text())["predictions"]) == len(_test_ids(data))
    for bad in ("0", "1.5"):
        assert _predict(data, model_dir, workdir / "z.json", "--min-end-probability", bad) == 2
        assert "--min-end-probability must be in (0, 1]" in capsys.readouterr().err
    # a file of plain greedy captions is not resumed with a threshold either
    assert _predict(data, model_dir, predictions, "--min-end-probability", "0.5") == 2
    assert "min_end_probability None" in capsys.readouterr().err


def test_predict_records_joint_facts_and_resumes_only_with_the_same(data, model_dir, workdir, capsys, seen_settings):
    seen = seen_settings
    out = workdir / "joint.json"
    assert _predict(data, model_dir, out, "--joint-facts", "--limit", "2") == 0
    assert [s.each_change for s in seen] == [False] and json.loads(out.read_text())["joint_facts"] is True
    before = out.read_text()
    capsys.readouterr()
    assert _predict(data, model_dir, out) == 2  # one prompt per change: another decoding, not resumed into it
    err = capsys.readouterr().err
    assert "every change read in one prompt" in err and "pass --joint-facts" in err and "Traceback" not in err
    assert out.read_text() == before
    assert _predict(data, model_dir, out, "--joint-facts") == 0 and seen[-1].each_change is False
    each = workdir / "each.json"
    assert _predict(data, model_dir, each, "--limit", "1") == 0
    assert seen[-1].each_change is True and "joint_facts" not in json.loads(each.read_text())
    assert _predict(data, model_dir, each, "--joint-facts") == 2 and "pass no --joint-facts" in capsys.readouterr().err


def test_predict_keeps_rows_outside_a_limit(predictions, data, model_dir, workdir):
    doc = json.loads(predictions.read_text())
    out = workdir / "limited.json"
    out.write_text(json.dumps(dict(doc, predictions=doc["predictions"][1:])))
    assert _predict(data, model_dir, out, "--limit", "1") == 0  # describes pair 0 only ...
    assert json.loads(out.read_text())["predictions"] == doc["predictions"]  # ... and loses nothing


def test_predict_refuses_a_file_of_another_model_or_split(predictions, data, model_dir, workdir, capsys):
    doc = json.loads(predictions.read_text())
    for field, value in (("model", "someone/else"), ("split", "val")):
        out = workdir / f"other_{field}.json"
        out.write_text(json.dumps(dict(doc, **{field: value})))
        before = out.read_text()
        assert _predict(data, model_dir, out) == 2
        err = capsys.readouterr().err
        assert value in err and "--out" in err and "Traceback" not in err
        assert out.read_text() == before
    assert _predict(data, model_dir, workdir / "x.json", "--batch-size", "0") == 2
    capsys.readouterr()
    for bad in (["--attribution"], ["--maps", "--sanity-pairs", "-1"]):
        assert _predict(data, model_dir, workdir / "y.json", *bad) == 2
        err = capsys.readouterr().err
        assert ("--maps" in err or "--sanity-pairs" in err) and "Traceback" not in err
        assert not (workdir / "y.json").exists()


def test_eval_on_the_generated_split(predictions, data, workdir, cli_scorer):
    # A one-fixed-sentence baseline: the first reference of the first training pair, for every test pair.
    train = json.loads((data / "train.json").read_text())
    fixed = workdir / "fixed.json"
    fixed.write_text(json.dumps([{"id": i, "caption": train[0]["captions"][0]} for i in _test_ids(data)]))
    out = workdir / "eval"
    rc = main(["eval", "--pred", f"model={predictions}", "--pred", f"fixed={fixed}", "--refs", str(data),
               "--split", "test", "--out", str(out), "--bootstrap", "50", "--on-empty", "score-as-empty"])
    assert rc == 0
    for f in ("report.json", "scores.csv", "table.tex", "report.html"):
        assert (out / f).stat().st_size > 0, f
    rep = Report.loads((out / "report.json").read_text())
    bd = rep.run.scores
    n = len(_test_ids(data))
    assert bd.overall.n == n == len(rep.pairs)
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert 0 <= bd.overall.scores[metric] <= 1000
    types = {t for r in json.loads((data / "test.json").read_text()) for t in r["change_types"]}
    assert set(bd.per_type) == types and all(v.n >= 1 for v in bd.per_type.values())
    assert set(rep.runs) == {"model", "fixed"} and rep.comparison.base == "model"
    # generated pairs say how many changes they have: one slice per count, every pair in one of them
    counts = {str(len(r["regions"])) for r in json.loads((data / "test.json").read_text())}
    assert set(bd.per_changes) == counts and sum(s.n for s in bd.per_changes.values()) == n
    fixed_words = len(train[0]["captions"][0].split())
    assert rep.runs["fixed"].scores.overall.words["caption"] == pytest.approx(fixed_words, abs=2)
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["slice"] for r in rows if r["slice_kind"] == "changes"} == counts
    assert all(float(r["words references"]) > 0 for r in rows if r["slice_kind"] != "macro")
    assert {r["run"] for r in rows} == {"model", "fixed"}
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "n"} <= set(rows[0])
    assert {r["slice"] for r in rows if r["slice_kind"] == "type"} == types
    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "\nmodel &" in tex and "\nfixed &" in tex
    page = (out / "report.html").read_text()
    assert "plotly" in page and "words: caption / references" in page
    assert all(f">{changes_label(k)}<" in page for k in counts)


# ---------------------------------------------------------------- predict faults: resume, images, empty input
def _copy(data, dest):
    import shutil

    if not dest.exists():
        shutil.copytree(data, dest)
    return dest


def test_predict_refuses_to_resume_with_another_dataset(predictions, data, model_dir, workdir, capsys):
    other = _copy(data, workdir / "other_set")
    out = workdir / "resume_other.json"
    out.write_text(predictions.read_text())
    before = out.read_text()
    assert _predict(other, model_dir, out) == 2
    err = capsys.readouterr().err
    assert "data" in err and "--restart" in err and "Traceback" not in err
    assert out.read_text() == before
    # asked to, it starts again on the new data
    assert _predict(other, model_dir, out, "--restart") == 0
    doc = json.loads(out.read_text())
    assert doc["data"] == str(other) and [r["id"] for r in doc["predictions"]] == _test_ids(other)


def test_predict_refuses_to_resume_when_the_images_changed(data, model_dir, workdir, capsys):
    from PIL import Image

    regen = _copy(data, workdir / "regenerated")
    out = workdir / "resume_regen.json"
    assert _predict(regen, model_dir, out, "--limit", "2") == 0
    first = json.loads((regen / "test.json").read_text())[0]
    Image.new("RGB", (64, 64), (200, 10, 10)).save(regen / first["before"])  # same id and path, other image
    before = out.read_text()
    capsys.readouterr()
    assert _predict(regen, model_dir, out) == 2
    err = capsys.readouterr().err
    assert repr(first["id"]) in err and "changed" in err and "--restart" in err
    assert out.read_text() == before


def test_predict_skips_a_corrupt_image_names_the_pair_and_keeps_the_rest(data, model_dir, workdir, capsys):
    corrupt = _copy(data, workdir / "corrupt_set")
    recs = json.loads((corrupt / "test.json").read_text())
    bad = recs[2]
    good_bytes = (corrupt / bad["after"]).read_bytes()
    (corrupt / bad["after"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out = workdir / "corrupt_pred.json"
    assert _predict(corrupt, model_dir, out) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("m3diff predict: error:")
    assert repr(bad["id"]) in last and "1 pair(s) skipped" in last and bad["after"].split("/")[-1] in last
    kept = [r["id"] for r in json.loads(out.read_text())["predictions"]]
    assert kept == [r["id"] for r in recs if r["id"] != bad["id"]]
    # fixed, the same command finishes the file
    (corrupt / bad["after"]).write_bytes(good_bytes)
    assert _predict(corrupt, model_dir, out) == 0
    assert [r["id"] for r in json.loads(out.read_text())["predictions"]] == [r["id"] for r in recs]


def test_predict_on_an_empty_split_is_an_error_not_a_success(data, model_dir, workdir, capsys):
    empty = _copy(data, workdir / "empty_split")
    (empty / "test.json").write_text("[]")
    out = workdir / "empty_pred.json"
    assert _predict(empty, model_dir, out) == 2
    err = capsys.readouterr().err
    assert "no pairs" in err and "already predicted" not in err
    assert not out.exists()


def test_predict_max_new_tokens_must_be_positive(data, model_dir, workdir, capsys):
    out = workdir / "zero.json"
    assert _predict(data, model_dir, out, "--max-new-tokens", "0") == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens must be at least 1" in err and "Traceback" not in err and not out.exists()


def test_predict_refuses_image_paths_outside_the_dataset_unless_allowed(data, model_dir, workdir, capsys):
    import shutil

    leaky = _copy(data, workdir / "leaky")
    recs = json.loads((leaky / "test.json").read_text())
    shutil.copy(leaky / recs[0]["before"], workdir / "outside.png")
    recs[0]["before"] = "../outside.png"
    (leaky / "test.json").write_text(json.dumps(recs))
    out = workdir / "leaky_pred.json"
    assert _predict(leaky, model_dir, out, "--limit", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leads outside the dataset folder" in err and not out.exists()
    assert _predict(leaky, model_dir, out, "--limit", "1", "--allow-outside-root") == 0
    assert capsys.readouterr().err.count("outside the dataset folder") == 1


# ---------------------------------------------------------------- evidence: predict --maps -> eval's localization
@pytest.fixture(scope="module")
def predictions_with_maps(predictions, data, model_dir, workdir):
    """Resumed from the caption-only file: every pair is described again for its maps."""
    out = workdir / "pred-maps.json"
    out.write_text(predictions.read_text())
    assert _predict(data, model_dir, out, "--maps", "--attribution", "--sanity-pairs", "2") == 0
    return out


def test_predict_maps_stores_every_pairs_maps_and_a_sanity_check(predictions_with_maps, data, tiny_config):
    from analysis.localization import decode_maps

    doc = json.loads(predictions_with_maps.read_text())
    assert set(doc["maps"]) == set(_test_ids(data))
    g = tiny_config.patch_grid
    maps = decode_maps(doc["maps"][_test_ids(data)[0]])
    layers = tiny_config.mdp_layers
    assert set(maps) - {"saliency_caption"} == {"feature_difference", *(f"{k}@{l}" for k in ("attn_eq5", "attn_eq6",
                                                                                            "delta_norm") for l in layers)}
    from m3diff.describing import caption_words

    with_words = [i for i in _test_ids(data) if caption_words(next(r["caption"] for r in doc["predictions"] if r["id"] == i))]
    assert all("saliency_caption" in decode_maps(doc["maps"][i]) for i in with_words)
    assert all(m.shape == (2, g, g) for m in maps.values())
    steps = doc["sanity"]["steps"]
    assert [s["randomised"] for s in steps] == [["model.mdp"], ["model.mdp", "model.vision_tower"]]
    assert steps[0]["n_pairs"] == 2 and set(doc["sanity"]["verdicts"]) == set(maps) - {"saliency_caption"}


def test_eval_writes_localization_and_sanity_for_runs_with_maps(predictions_with_maps, predictions, data, workdir,
                                                               cli_scorer):
    out = workdir / "eval-maps"
    rc = main(["eval", "--pred", f"model={predictions_with_maps}", "--pred", f"plain={predictions}", "--refs",
               str(data), "--split", "test", "--out", str(out), "--bootstrap", "0", "--no-meteor",
               "--on-empty", "score-as-empty"])
    assert rc == 0
    rep = Report.loads((out / "report.json").read_text())
    assert rep.meta.generator == json.loads((data / "synth_config.json").read_text())
    test = {r["id"]: r for r in json.loads((data / "test.json").read_text())}
    for rec in rep.pairs:
        assert [(g.type, g.before, g.after) for g in rec.regions] == [
            (r["type"], r["before"] and tuple(r["before"]), r["after"] and tuple(r["after"])) for r in test[rec.id]["regions"]]
    # "plain" has no maps
    assert rep.runs["model"].localization is not None and rep.runs["plain"].localization is None
    assert rep.runs["model"].sanity is not None and rep.runs["plain"].sanity is None
    loc = rep.runs["model"].localization
    overall = loc.summary.overall
    assert {"feature_difference", "pixel_difference", "uniform"} <= set(overall)
    # the baselines, scored on the generated boxes: the pixel difference finds the changes, a flat map
    # scores its area share
    assert overall["pixel_difference"].pointing > overall["uniform"].pointing + 0.3
    assert overall["uniform"].energy == pytest.approx(overall["uniform"].area, abs=1e-6)
    with_boxes = {i for i, r in test.items() if any(x["type"] not in ("viewpoint", "illumination") for x in r["regions"])}
    assert set(loc.pairs) == with_boxes and loc.n_pairs == len(with_boxes)
    assert all(0 <= v <= 1 for row in loc.pairs.values() for v in row.values() if v is not None)




def test_the_library_predicts_a_split_in_pieces_without_the_cli(data, model_dir, predictions, workdir):
    """analysis.predict is what `m3diff predict` calls: a library user resumes a file batch by batch and
    gets the same captions as the command wrote."""
    from analysis.predict import PredictOptions, ResumeError, pending, predict_pairs, start_run
    from m3diff.data.readers import read_dataset
    from m3diff.describing import GenerationSettings

    pairs = read_dataset(data, split="test", images="require").pairs
    captioner = DiffCaptioner.from_pretrained(model_dir)
    options = PredictOptions(batch_size=4, settings=GenerationSettings(max_new_tokens=8))
    out = workdir / "library_pred.json"
    run = start_run(out, pairs, model=str(model_dir), data=str(data), split="test", min_end_probability=None)
    seen = []
    first = predict_pairs(captioner, run, pairs[:5], options, progress=seen.append)
    assert first.predicted == 5 and seen == [4, 1] and not first.failed

    resumed = start_run(out, pairs, model=str(model_dir), data=str(data), split="test", min_end_probability=None)
    assert [p.id for p in pending(resumed, pairs, options)] == [p.id for p in pairs[5:]]
    assert predict_pairs(captioner, resumed, pairs, options).predicted == len(pairs) - 5
    by_cli = {r["id"]: r["caption"] for r in json.loads(predictions.read_text())["predictions"]}
    assert resumed.captions == by_cli

    with pytest.raises(ResumeError, match="split"):
        start_run(out, pairs, model=str(model_dir), data=str(data), split="val", min_end_probability=None)
    with pytest.raises(ValueError, match="--attribution"):
        PredictOptions(attribution=True)
