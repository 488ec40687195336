"""Does the change reader read each true change (analysis.detection): hand-made facts whose scores are
known, the predictions file and report.json holding them, their views, and synth -> predict -> eval with a
model that has a reader."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from analysis import render
from analysis.detection import DetectionHit, evaluate_detection, pointing, read_reading, score_pair, summarize_detection
from analysis.inputs import InputError, Predictions, load_predictions
from analysis.report import DetectionRun, Report, ReportError, read_report
from m3diff.facts import ChangeFact, ChangeReading, ObjectFact, facts_of_record
from tests.analysis.conftest import make_report

BOX = (10.0, 10.0, 30.0, 30.0)
INSIDE = (15.0, 12.0, 27.5, 26.5)  # centre (21.25, 19.25): in BOX
OUTSIDE = (35.0, 35.0, 45.0, 45.0)  # centre (40, 40): out of BOX


def colour_change(after_colour="blue", box_after=BOX, kind="cube"):
    return ChangeFact("color", ObjectFact(kind, "red"), ObjectFact(kind, after_colour), box_before=BOX,
                      box_after=box_after)


def sign_change(word="OPEN"):
    return ChangeFact("ocr", ObjectFact("sign", "white", text="STOP"), ObjectFact("sign", "white", text=word),
                      box_before=BOX, box_after=BOX)


def by_type(hits):
    return {h.type: h for h in hits}


# ----------------------------------------------------------------------------------- scoring, by hand
def test_a_missed_type_lowers_recall_and_an_invented_one_lowers_precision():
    truth = [colour_change(), sign_change()]
    found = [colour_change(), ChangeFact("size", ObjectFact("ball", "green", "small"), ObjectFact("ball", "green", "large"))]
    hits = by_type(score_pair(truth, found))
    assert set(hits) == {"color", "ocr", "size"}
    assert hits["color"].matched and not hits["ocr"].matched and not hits["size"].matched
    assert hits["ocr"].detected is None and hits["size"].truth is None
    s = summarize_detection({"p": list(hits.values())}).overall
    assert (s.n_true, s.n_detected, s.n_matched) == (2, 2, 1)
    assert s.recall == pytest.approx(1 / 2) and s.precision == pytest.approx(1 / 2)
    # the same pair with everything read: both reach 1
    perfect = summarize_detection({"p": score_pair(truth, truth)}).overall
    assert perfect.recall == perfect.precision == perfect.value_accuracy == perfect.pointing == 1.0


def test_a_wrong_new_colour_is_value_wrong_but_the_object_is_still_right():
    wrong = by_type(score_pair([colour_change("blue")], [colour_change("green")]))["color"]
    assert wrong.matched and wrong.value_right is False and wrong.object_right is True
    # a colour's new value is the colour alone: a wrong object is caught by object_right, not by the value
    other_object = by_type(score_pair([colour_change()], [colour_change(kind="ball")]))["color"]
    assert other_object.object_right is False and other_object.value_right is True
    word = by_type(score_pair([sign_change("OPEN")], [sign_change("EXIT")]))["ocr"]
    assert word.value_right is False and word.object_right is True
    s = summarize_detection({"a": score_pair([colour_change()], [colour_change("green")]),
                             "b": score_pair([colour_change()], [colour_change()])})
    assert s.overall.n_valued == 2 and s.overall.value_accuracy == pytest.approx(0.5)
    assert s.per_type["color"].value_accuracy == pytest.approx(0.5)


def test_each_type_is_valued_by_its_own_new_value():
    def pair(type_, before, after, **kw):
        return ChangeFact(type_, before, after, **kw)

    moved = pair("removal", ObjectFact("cube", "red", h="left", v="back"), ObjectFact("cube", "red", h="right", v="front"))
    assert score_pair([moved], [replace(moved, after=replace(moved.after, v="back"))])[0].value_right is False
    assert score_pair([moved], [replace(moved, after=replace(moved.after, size="large"))])[0].value_right is True
    count = pair("counting", ObjectFact("cone", "pink"), ObjectFact("cone", "pink"), n_before=2, n_after=3)
    assert score_pair([count], [replace(count, n_after=4)])[0].value_right is False
    assert score_pair([count], [replace(count, n_before=5)])[0].value_right is True
    added = pair("addition", None, ObjectFact("cylinder", "yellow"))
    hit = score_pair([added], [replace(added, after=ObjectFact("cylinder", "purple"))])[0]
    assert hit.value_right is False and hit.object_right is False  # an addition's object is the one added
    gone = pair("disappearance", ObjectFact("ball", "gray"), None)
    hit = score_pair([gone], [gone])[0]
    assert hit.value_right is None and hit.object_right is True  # nothing new to read
    light = pair("illumination", None, None, detail="light=darker")
    assert (score_pair([light], [light])[0].value_right, score_pair([light], [light])[0].object_right) == (None, None)


def test_a_box_centre_outside_the_true_box_is_not_pointed():
    inside = by_type(score_pair([colour_change()], [replace(colour_change(), box_before=INSIDE, box_after=INSIDE)]))
    assert inside["color"].pointed is True
    half = replace(colour_change(), box_before=INSIDE, box_after=OUTSIDE)
    assert pointing(colour_change(), half) == [True, False]
    assert by_type(score_pair([colour_change()], [half]))["color"].pointed is False
    # scored per image: one of two images pointed is half
    s = summarize_detection({"p": score_pair([colour_change()], [half])}).overall
    assert (s.n_boxed, s.pointing) == (2, 0.5)
    # no box on one side: only the image where both have one is scored
    no_after = replace(colour_change(), box_before=OUTSIDE, box_after=None)
    assert pointing(colour_change(), no_after) == [False]
    assert score_pair([colour_change(box_after=None)], [colour_change(box_after=None)])[0].pointed is True
    boxless = ChangeFact("viewpoint", detail="side=left")
    assert score_pair([boxless], [boxless])[0].pointed is None


def test_no_change_pairs_count_what_the_reader_invents():
    s = summarize_detection({"still": [], "seen": score_pair([], [colour_change()]), "real": score_pair([colour_change()], [])})
    assert s.no_change_pairs == 2 and s.false_change_rate == pytest.approx(0.5)
    assert s.overall.recall == 0.0 and s.overall.precision == 0.0 and s.overall.n_pairs == 3
    assert s.per_type["color"].n_pairs == 2 and summarize_detection({}).overall.recall is None


def test_matching_by_type_refuses_two_changes_of_one_type():
    with pytest.raises(ValueError, match="two color changes"):
        score_pair([colour_change(), colour_change("green")], [])
    with pytest.raises(ValueError, match="pair 'x'"):
        evaluate_detection({"x": ChangeReading((colour_change(),))},
                           [{"id": "x", "changes": [colour_change().to_json(), colour_change("green").to_json()]}])


def test_hits_are_checked_as_they_are_made():
    with pytest.raises(ValueError, match="true or a detected"):
        DetectionHit("color", None, None)
    with pytest.raises(ValueError, match="holds a ocr change"):
        DetectionHit("color", sign_change(), None)
    with pytest.raises(ValueError, match="not matched"):
        DetectionHit("color", colour_change(), None, value_right=False)


def test_records_are_read_with_their_true_changes_and_real_data_is_skipped():
    rec = {"id": "g", "changes": [colour_change().to_json(), sign_change().to_json()]}
    real = {"id": "r", "captions": ["a caption"]}
    readings = {"g": ChangeReading((colour_change("green"),)), "r": ChangeReading((colour_change(),)),
                "unread": ChangeReading()}
    summary, pairs = evaluate_detection(readings, [rec, real])
    assert set(pairs) == {"g"} and summary.overall.n_true == len(facts_of_record(rec)) == 2
    assert summary.overall.value_accuracy == 0.0


# ----------------------------------------------------------------------------------- the predictions file
def test_the_predictions_file_keeps_the_changes_read(tmp_path):
    readings = {"a": ChangeReading((colour_change(), sign_change()), (64, 48), 0.4).to_json(),
                "b": ChangeReading((), (64, 64)).to_json()}
    run = Predictions(None, {"a": "the cube turned blue", "b": "nothing changed", "c": "no reader here"},
                      changes=readings)
    path = tmp_path / "pred.json"
    run.save(path, order=["b", "a", "c"])
    assert list(json.loads(path.read_text())["changes"]) == ["b", "a"]
    back = load_predictions(path)
    assert back.changes == readings
    reading = read_reading(back.changes["a"])
    assert reading.changes == (colour_change(), sign_change()) and reading.size == (64, 48) and reading.threshold == 0.4
    plain = Predictions(None, {"a": "x"})
    plain.save(path)
    assert "changes" not in json.loads(path.read_text()) and load_predictions(path).changes == {}


@pytest.mark.parametrize("entry, says", [
    ("a reading", "expected an object"),
    ({"changes": [{"type": "colour"}]}, "changes[0].type"),
    ({"changes": [{"type": "color", "box_after": [1, 2, 3]}]}, "changes[0].box_after"),
    ({"changes": [{"type": "color", "after": {"color": 3}}]}, "changes[0].after"),
    ({"changes": [{"type": "counting", "n_after": 2.5}]}, "changes[0].n_after"),
    ({"changes": [{"type": "color"}, {"type": "color"}]}, "two color changes"),
    ({"changes": [], "size": [64]}, "'size'"),
    ({"changes": [{"type": "color", "confidence": "high"}]}, "changes[0].confidence"),
])
def test_a_bad_reading_in_a_predictions_file_is_refused_naming_its_pair(tmp_path, entry, says):
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"predictions": [{"id": "p7", "caption": "x"}], "changes": {"p7": entry}}))
    with pytest.raises(InputError) as err:
        load_predictions(path)
    assert "'p7'" in str(err.value) and says in str(err.value) and str(path) in str(err.value)
    path.write_text(json.dumps({"predictions": [{"id": "p7", "caption": "x"}], "changes": ["p7"]}))
    with pytest.raises(InputError, match="'changes' must be an object keyed by pair id"):
        load_predictions(path)


# ----------------------------------------------------------------------------------- report.json
def detection_run() -> DetectionRun:
    pairs = {"p0": score_pair([colour_change(), sign_change()], [colour_change("green", INSIDE),
                                                                  ChangeFact("size", ObjectFact("ball", "green"),
                                                                             ObjectFact("ball", "green", "large"),
                                                                             box_before=OUTSIDE, confidence=0.75)]),
             "p1": score_pair([ChangeFact("counting", ObjectFact("cone", "pink"), ObjectFact("cone", "pink"), 2, 3,
                                          box_before=BOX, box_after=BOX)],
                              [ChangeFact("counting", ObjectFact("cone", "pink"), ObjectFact("cone", "pink"), 2, 3,
                                          box_before=INSIDE, box_after=OUTSIDE, confidence=0.5)]),
             "p2": []}
    return DetectionRun(summarize_detection(pairs), pairs)


@pytest.fixture
def with_detection(tmp_path):
    path = make_report(tmp_path)
    report = read_report(path).report
    report.run.detection = detection_run()
    report.save(path)
    return path


def test_a_report_with_a_detection_section_reads_back_the_same(with_detection):
    written = json.loads(with_detection.read_text())
    section = written["runs"]["m3diff"]["detection"]
    assert set(section["pairs"]["p0"][0]) == {"type", "truth", "detected", "matched", "value_right", "object_right",
                                              "pointed"}
    back = read_report(with_detection).report
    assert back.to_json() == written
    det = back.run.detection
    assert det.pairs == detection_run().pairs and det.summary.to_dict() == detection_run().summary.to_dict()
    assert det.summary.no_change_pairs == 1 and det.summary.overall.recall == pytest.approx(2 / 3)


def test_a_report_without_a_detection_section_still_loads(tmp_path):
    from tests.analysis.test_render import EXAMPLE_REPORT

    for path in (make_report(tmp_path), EXAMPLE_REPORT):
        report = read_report(path).report
        assert all(run.detection is None for run in report.runs.values())
        assert "detection" not in report.to_json()["runs"][report.base]


def _colour_hit(d):  # p0's hits in TYPE_IDS order: size (invented), color (matched), ocr (missed)
    hit = d["pairs"]["p0"][1]
    assert hit["type"] == "color" and hit["matched"]
    return hit


@pytest.mark.parametrize("edit, field", [
    (lambda d: _colour_hit(d).update({"matched": False}), "pairs.p0[1].matched"),
    (lambda d: d["pairs"]["p0"][0].update({"matched": True}), "pairs.p0[0].matched"),
    (lambda d: _colour_hit(d)["truth"].update({"type": "colour"}), "pairs.p0[1].truth"),
    (lambda d: _colour_hit(d)["truth"].update({"type": "ocr"}), "holds a ocr change"),
    (lambda d: d["pairs"]["p0"][0].update({"value_right": True}), "not matched has no value"),
    (lambda d: _colour_hit(d).update({"pointed": "yes"}), "pairs.p0[1].pointed: expected true or false"),
    (lambda d: _colour_hit(d)["detected"].update({"box_after": [1, 2]}), "pairs.p0[1].detected.box_after"),
    (lambda d: _colour_hit(d)["detected"]["after"].update({"color": 7}), "detected.after.color"),
    (lambda d: d["overall"].update({"n_true": 1.5}), "detection.overall.n_true: expected a whole number"),
    (lambda d: d["per_type"]["color"].update({"recall": "half"}), "detection.per_type.color.recall"),
])
def test_a_wrongly_typed_detection_field_is_refused_with_its_path(with_detection, edit, field):
    data = json.loads(with_detection.read_text())
    edit(data["runs"]["m3diff"]["detection"])
    with_detection.write_text(json.dumps(data))
    with pytest.raises(ReportError) as err:
        read_report(with_detection)
    assert field in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- views
def test_the_detection_views_show_the_summary(with_detection, tmp_path):
    report = read_report(with_detection).report
    s = report.run.detection.summary
    df = render.detection_table({"m": report})
    assert list(df["slice"]) == ["overall", *[t for t in s.per_type]]
    overall = df.iloc[0]
    assert overall["true"] == str(s.overall.n_true) and overall["detected"] == str(s.overall.n_detected)
    assert overall["recall %"] == f"{100 * s.overall.recall:.1f}" and overall["pointing %"] == f"{100 * s.overall.pointing:.1f}"
    size = df.set_index("slice").loc["size"]
    assert (size["true"], size["recall %"], size["precision %"]) == ("0", "—", "0.0")  # invented
    md = render.change_detection_md({"M3Diff": report}).splitlines()
    assert md[0].startswith("| slice | true | detected | recall %") and md[2].startswith("| overall | 3 | 3 |")
    two = render.detection_table({"a": report, "b": read_report(make_report(tmp_path / "b", "b")).report})
    assert "m3diff: recall %" not in two.columns and "recall %" in two.columns  # one run with a reader: no prefix
    line, = render.detection_lines(report)
    assert f"detection recall {100 * s.overall.recall:.1f}%" in line and f"precision {100 * s.overall.precision:.1f}%" in line
    assert "1 no-change pairs" in line
    assert "Change reader" in render.html_report(report)
    plain = read_report(make_report(tmp_path / "c")).report
    assert render.detection_lines(plain) == [] and render.change_detection_md({"x": plain}) == ""
    assert "not in the loaded reports" in render.detection_table({"x": plain}).iloc[0, 0]
    assert "Change reader" not in render.html_report(plain)


# ----------------------------------------------------------------------------------- synth -> predict -> eval
@pytest.fixture(scope="module")
def reader_run(tmp_path_factory):
    """24 generated pairs, a tiny random model with a change reader, and its predictions of the test split."""
    import warnings

    from m3diff.cli import main
    from m3diff.pipeline import DiffCaptioner

    work = tmp_path_factory.mktemp("reader")
    data = work / "synth"
    assert main(["synth", "--out", str(data), "--pairs", "24", "--seed", "0", "--size", "64", "--workers", "1",
                 "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a tiny RANDOM model": that is the point here
        captioner = DiffCaptioner.untrained(change_reader=True)
    assert captioner.reads_changes
    captioner.save_pretrained(work / "model")
    pred = work / "pred.json"
    assert main(["predict", "--data", str(data), "--split", "test", "--out", str(pred), "--model", str(work / "model"),
                 "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    return work, data, pred


@pytest.mark.slow
def test_predict_stores_what_the_reader_read_and_eval_scores_it(reader_run, cli_scorer, capsys):
    from m3diff.cli import main

    work, data, pred = reader_run
    test = {r["id"]: r for r in json.loads((data / "test.json").read_text())}
    loaded = load_predictions(pred)
    assert set(loaded.changes) == set(test) == set(loaded.captions)
    readings = {k: read_reading(v) for k, v in loaded.changes.items()}
    assert all(r.size == (64, 64) for r in readings.values())
    # a resumed run keeps what was read before (pairs already predicted are not described again)
    from analysis.predict import start_run
    from m3diff.data.readers import read_dataset

    pairs = read_dataset(data, split="test", images="require").pairs
    resumed = start_run(pred, pairs, model=loaded.model, data=str(data), split="test", min_end_probability=None)
    assert resumed.changes == loaded.changes
    capsys.readouterr()
    out = work / "eval"
    assert main(["eval", "--pred", f"reader={pred}", "--refs", str(data), "--split", "test", "--out", str(out),
                 "--bootstrap", "0", "--no-meteor", "--on-empty", "score-as-empty"]) == 0
    printed = capsys.readouterr().out
    report = Report.loads((out / "report.json").read_text())
    det = report.run.detection
    assert det is not None and set(det.pairs) == set(test)
    o = det.summary.overall
    # the random reader's presence logits sit near 0.5: it reads some changes, true and not
    assert o.n_true > 0 and o.n_detected > 0
    assert o.n_true == sum(len(r["changes"]) for r in test.values())
    assert o.n_detected == sum(len(r.changes) for r in readings.values())
    for pid, hits in det.pairs.items():
        assert {h.type for h in hits if h.truth is not None} == {c["type"] for c in test[pid]["changes"]}
        assert [h.detected for h in hits if h.detected is not None] == list(readings[pid].changes)
    assert o.n_matched == sum(h.matched for hs in det.pairs.values() for h in hs)
    assert f"reader: change reader ({o.n_pairs} pairs): detection recall" in printed
    # a file predicted without a reader leaves the section out
    plain = work / "plain.json"
    plain.write_text(json.dumps([{"id": i, "caption": "x"} for i in test]))
    assert main(["eval", "--pred", f"plain={plain}", "--refs", str(data), "--split", "test", "--out", str(work / "e2"),
                 "--bootstrap", "0", "--no-meteor"]) == 0
    assert Report.loads((work / "e2" / "report.json").read_text()).run.detection is None
    assert "detection recall" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------- one pair, for the Errors tab
def _rows(text: str) -> dict[str, list[str]]:
    """The per-hit table of ``detection_pair_md``: type -> its cells (the header and rule left out)."""
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return {c[0]: c[1:] for c in cells}


def test_a_pair_view_lists_each_hit_with_its_verdicts(with_detection):
    report = read_report(with_detection).report
    rows = _rows(render.detection_pair_md(report, report.pair("p0")))
    assert list(rows) == ["size", "color", "ocr"]  # TYPE_IDS order, one row per type true or read
    truth, read, obj, value, pointed = rows["color"]
    # read green where it turned blue: the object (the red cube) right, the new value wrong; its before box is
    # the true box and its after box's centre lies inside the true one: pointed
    assert (obj, value, pointed) == ("✓", "✗", "✓")
    assert "blue cube" in truth and "green cube" in read and "green cube" not in truth
    assert read.endswith("\\(confidence 100%\\)")  # the reader's confidence
    assert rows["ocr"][1] == "— \\(missed\\)" and rows["ocr"][2:] == ["–", "–", "–"]
    assert "reading OPEN" in rows["ocr"][0]
    assert rows["size"][0] == "— \\(did not happen\\)" and rows["size"][2:] == ["–", "–", "–"]
    assert "large green ball" in rows["size"][1] and "\\(confidence 75%\\)" in rows["size"][1]
    # a count read right whose after box's centre lies outside the true box: value ✓, pointing ✗
    assert _rows(render.detection_pair_md(report, report.pair("p1")))["counting"][2:] == ["✓", "✓", "✗"]
    head = render.detection_pair_md(report, report.pair("p0")).splitlines()[0]
    assert "read 1 of 2 true changes, and 1 that did not happen" in head
    assert "it read none" in render.detection_pair_md(report, report.pair("p2"))
    assert "did not score this pair" in render.detection_pair_md(report, report.pair("p3"))


def test_a_pair_view_of_a_run_without_readings_says_why_in_one_line(tmp_path):
    report = read_report(make_report(tmp_path)).report
    text = render.detection_pair_md(report, report.pair("p0"))
    assert "\n" not in text and render.NO_READINGS in text and "|" not in text


def test_a_hostile_report_value_stays_text_in_the_pair_view(with_detection):
    data = json.loads(with_detection.read_text())
    colour = _colour_hit(data["runs"]["m3diff"]["detection"])
    colour["detected"]["after"]["kind"] = "<img src=x onerror=alert(1)> | [link](http://evil)\n| forged | row |"
    colour["truth"]["detail"] = "*bold* `code`"
    with_detection.write_text(json.dumps(data))
    report = read_report(with_detection).report
    text = render.detection_pair_md(report, report.pair("p0"))
    assert "<img" not in text and "&lt;img" in text and "](http" not in text
    rows = _rows(text)
    assert list(rows) == ["size", "color", "ocr"]  # the newline and the pipes did not make a row or a column
    assert all(len(cells) == 5 for cells in rows.values())
    assert "\\*bold\\* \\`code\\`" in rows["color"][0]


def test_the_headline_gains_the_readers_recall_and_precision_only_with_a_detection_section(with_detection, tmp_path):
    report = read_report(with_detection).report
    plain = read_report(make_report(tmp_path / "plain")).report
    s = report.run.detection.summary.overall
    lines = render.headline_md({"reader": report, "plain": plain}).splitlines()
    row, = [line for line in lines if "change reader read" in line]
    assert row.split(" | ")[1:] == [f"{100 * s.recall:.1f}% / {100 * s.precision:.1f}%", "– |"]
    assert "change reader" not in render.headline_md({"plain": plain})
