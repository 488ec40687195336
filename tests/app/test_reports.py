"""Dashboard and Errors tabs as plain functions over report.json files."""
from __future__ import annotations

import json

import pytest

import app
from tests.app.conftest import make_report


def test_load_report_refuses_what_m3diff_eval_did_not_write(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(app.ReportError, match="not JSON"):
        app.load_report(p)
    p.write_text(json.dumps({"caption": "x"}))
    with pytest.raises(app.ReportError, match="'overall' and 'per_type'"):
        app.load_report(p)
    p.write_text(json.dumps({"overall": {}, "per_type": {}, "pairs": [{"caption": "no id"}]}))
    with pytest.raises(app.ReportError, match="'id'"):
        app.load_report(p)


def test_slice_table_lists_types_in_the_canonical_order_with_n_and_ci(report_file):
    rep = app.load_report(report_file)
    df = app.slice_table({"m3diff": rep}, "per_type")
    assert list(df["slice"]) == ["overall", "addition", "color", "ocr", "counting"]  # TYPE_IDS order
    color = df[df["slice"] == "color"].iloc[0]
    assert color["n"] == 2 and color["CIDEr-D"] == "12.0 [5.0, 19.0]"
    assert df[df["slice"] == "ocr"].iloc[0]["CIDEr-D"] == "40.0"  # n=1: no interval


def test_two_runs_give_side_by_side_columns_and_deltas(tmp_path):
    a = app.load_report(make_report(tmp_path, "m3diff", shift=5.0))
    b = app.load_report(make_report(tmp_path, "no_mdp", shift=0.0))
    df = app.slice_table({"m3diff": a, "no_mdp": b}, "per_domain")
    assert {"m3diff: n", "no_mdp: CIDEr-D"} <= set(df.columns)
    delta = app.delta_table({"no_mdp": b, "m3diff": a})
    overall = delta[delta["slice"] == "overall"].iloc[0]
    assert overall["Δ CIDEr-D"] == pytest.approx(5.0)
    assert set(delta["slice"]) >= {"type:color", "domain:render"}
    assert "note" in app.delta_table({"m3diff": a}).columns


def test_pairs_frame_filters_and_sorts(report_file):
    rep = app.load_report(report_file)
    df = app.pairs_frame(rep, "color", "all", "CIDEr-D", ascending=True)
    assert list(df["id"]) == ["p0", "p1"]
    df = app.pairs_frame(rep, "all", "render", "BLEU-4", ascending=True)
    assert list(df["id"]) == ["p3", "p1"]
    df = app.pairs_frame(rep, "all", "all", "CIDEr-D", ascending=False)
    assert list(df["id"]) == ["p3", "p2", "p1", "p0"]
    assert app.pairs_frame(rep, "pose").empty
    assert app.report_choices(rep) == (["addition", "color", "ocr", "counting"], ["photo", "render"])


def test_pair_images_come_from_the_references_the_report_names(report_file, tmp_path):
    rep = app.load_report(report_file)
    files = app.pair_images(rep, app.report_pairs(rep)[2])
    assert files is not None and all(f.endswith(".png") for f in files)
    bare = app.load_report(make_report(tmp_path / "other", with_images=False))
    assert app.pair_images(bare, app.report_pairs(bare)[0]) is None


def test_exports_are_written_by_analysis_report_in_fresh_folders(tmp_path):
    a = app.load_report(make_report(tmp_path, "m3diff", shift=5.0))
    b = app.load_report(make_report(tmp_path, "no_mdp"))
    csv_path = app.export_report({"m3diff": a, "no_mdp": b}, "csv")
    text = open(csv_path, encoding="utf-8").read()
    assert "m3diff,type,color" in text and "no_mdp,type,color" in text
    tex = open(app.export_report({"m3diff": a}, "latex"), encoding="utf-8").read()
    assert r"\begin{tabular}" in tex and "m3diff" in tex
    assert app.export_report({}, "csv") != app.export_report({}, "csv")  # never a shared path
    paper = open(app.export_report({}, "csv"), encoding="utf-8").read()
    assert "M3Diff" in paper


def test_without_reports_the_dashboard_shows_the_paper(tmp_path):
    fig = app.dashboard_figure({}, "CIDEr-D")
    assert "paper" in fig.layout.title.text
    assert {t.name for t in fig.data} >= {"M3Diff (paper)"}
    df = app.paper_table()
    assert df.iloc[0]["real CIDEr-D"] == pytest.approx(31.3)


def test_shipped_example_report_loads_with_its_images():
    rep = app.load_report(app.EXAMPLE_REPORT)
    assert len(app.report_pairs(rep)) == 13
    assert all(app.pair_images(rep, p) for p in app.report_pairs(rep))
