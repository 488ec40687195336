from __future__ import annotations

import json

import pytest

from analysis.inputs import InputError, align, load_references, parse_predictions
from m3diff.data.record import DiffPair


def _refs(n=8):
    return [DiffPair(id=f"r{i}", before=None, after=None, captions=(f"caption {i}",), change_types=("color",))
            for i in range(n)]


def test_prediction_formats():
    a = parse_predictions([{"id": "r1", "caption": "x"}])
    b = parse_predictions([{"image_id": 1, "caption": "x"}])
    c = parse_predictions({"r1": "x"})
    assert a.captions == {"r1": "x"} and b.captions == {"1": "x"} and c.captions == {"r1": "x"}
    with pytest.raises(InputError, match="record #0 needs 'id'"):
        parse_predictions([{"caption": "x"}])


def test_mismatch_lists_ids_and_needs_a_choice():
    preds = parse_predictions([{"id": f"r{i}", "caption": "c"} for i in range(2, 8)] + [{"id": "zz", "caption": "c"}])
    with pytest.raises(InputError) as e:
        align(preds, _refs())
    msg = str(e.value)
    assert "'zz'" in msg and "2 reference id(s) without a prediction: 'r0', 'r1'" in msg and "--on-mismatch intersect" in msg
    al = align(preds, _refs(), on_mismatch="intersect")
    assert al.ids == [f"r{i}" for i in range(2, 8)] and al.notes and al.dropped["reference_without_prediction"] == ["r0", "r1"]


def test_many_ids_are_truncated_with_a_count():
    preds = parse_predictions([{"id": f"x{i}", "caption": "c"} for i in range(20)] + [{"id": "r0", "caption": "c"}])
    with pytest.raises(InputError, match=r"20 prediction id\(s\).*\(\+15 more\)"):
        align(preds, _refs())


def test_duplicates_and_empty():
    rows = [{"id": f"r{i}", "caption": "c"} for i in range(8)] + [{"id": "r3", "caption": "other"}]
    with pytest.raises(InputError, match="appear more than once: 'r3'"):
        align(parse_predictions(rows), _refs())
    assert align(parse_predictions(rows), _refs(), on_duplicate="last").hyps[3] == "other"
    rows = [{"id": f"r{i}", "caption": "" if i == 5 else "c"} for i in range(8)]
    with pytest.raises(InputError, match="1 empty prediction.*'r5'.*--on-empty score-as-empty"):
        align(parse_predictions(rows), _refs())
    al = align(parse_predictions(rows), _refs(), on_empty="score-as-empty")
    assert al.hyps[5] == "" and len(al.ids) == 8 and al.notes


def test_no_common_ids_is_always_an_error():
    with pytest.raises(InputError, match="no id is in both"):
        align(parse_predictions({"a": "c"}), _refs(), on_mismatch="intersect")


def test_coco_ground_truth(tmp_path):
    p = tmp_path / "gt.json"
    p.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}],
                             "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"},
                                             {"image_id": 2, "caption": "c"}]}))
    pairs = load_references(p)
    assert [(x.id, x.captions) for x in pairs] == [("1", ("a", "b")), ("2", ("c",))]


def test_eval_cli_writes_four_reports(dataset, cli_scorer, capsys):
    from m3diff.cli import main

    out = dataset / "out"
    fixed = dataset / "fixed.json"
    recs = json.loads((dataset / "data" / "test.json").read_text())
    fixed.write_text(json.dumps([{"id": r["id"], "caption": "the red chair moved to the left."} for r in recs]))
    rc = main(["eval", "--pred", str(fixed), "--refs", str(dataset / "data"), "--split", "test",
               "--out", str(out), "--bootstrap", "50"])
    assert rc == 0
    for f in ("report.json", "scores.csv", "table.tex", "report.html"):
        assert (out / f).stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["overall"]) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "n", "ci"}
    assert rep["overall"]["SPICE"] is None and rep["overall"]["n"] == 60
    assert all("n" in v and "CIDEr-D" in v for v in rep["per_type"].values())
    assert len(rep["pairs"]) == 60 and {"id", "caption", "refs", "types", "domain", "CIDEr-D", "BLEU-4"} <= set(rep["pairs"][0])
    assert "Real" in (out / "table.tex").read_text() and "Render" in (out / "table.tex").read_text()
    assert "plotly" in (out / "report.html").read_text()


def test_eval_cli_bad_input_is_one_line_exit_2(dataset, capsys):
    from m3diff.cli import main

    bad = dataset / "bad.json"
    bad.write_text(json.dumps([{"id": "nope", "caption": "x"}]))
    rc = main(["eval", "--pred", str(bad), "--refs", str(dataset / "data"), "--split", "test", "--no-meteor"])
    err = capsys.readouterr().err
    assert rc == 2 and "'nope'" in err and "Traceback" not in err


def test_doctor(capsys):
    from m3diff.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "METEOR" in out and "SPICE" in out
