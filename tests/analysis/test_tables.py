"""What the Dashboard and Errors tabs show, as plain functions over report.json files (analysis.report, analysis.tables)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import tables
from analysis.report import ReportError, pair_images, read_report, report_pairs
from tests.analysis.conftest import make_report

EXAMPLE_REPORT = Path(__file__).resolve().parents[2] / "examples" / "report.json"


def test_load_report_refuses_what_m3diff_eval_did_not_write(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        read_report(p)
    p.write_text(json.dumps({"caption": "x"}))
    with pytest.raises(ReportError, match="'overall' and 'per_type'"):
        read_report(p)
    p.write_text(json.dumps({"overall": {}, "per_type": {}, "pairs": [{"caption": "no id"}]}))
    with pytest.raises(ReportError, match="'id'"):
        read_report(p)


def test_slice_table_lists_types_in_the_canonical_order_with_n_and_ci(report_file):
    rep = read_report(report_file)
    df = tables.slice_table({"m3diff": rep}, "per_type")
    assert list(df["slice"]) == ["overall", "addition", "color", "ocr", "counting"]  # TYPE_IDS order
    color = df[df["slice"] == "color"].iloc[0]
    assert color["n"] == 2 and color["CIDEr-D"] == "12.0 [5.0, 19.0]"
    assert df[df["slice"] == "ocr"].iloc[0]["CIDEr-D"] == "40.0"  # n=1: no interval


def test_two_runs_give_side_by_side_columns_and_deltas(tmp_path):
    a = read_report(make_report(tmp_path, "m3diff", shift=5.0))
    b = read_report(make_report(tmp_path, "no_mdp", shift=0.0))
    df = tables.slice_table({"m3diff": a, "no_mdp": b}, "per_domain")
    assert {"m3diff: n", "no_mdp: CIDEr-D"} <= set(df.columns)
    delta = tables.delta_table({"no_mdp": b, "m3diff": a})
    overall = delta[delta["slice"] == "overall"].iloc[0]
    assert overall["Δ CIDEr-D"] == "5.0"  # loaded side by side: no paired interval to show
    assert set(delta["slice"]) >= {"type:color", "domain:render"}
    assert "note" in tables.delta_table({"m3diff": a}).columns


def test_domain_table_goes_on_by_number_of_changes_with_lengths(tmp_path):
    from tests.analysis.conftest import slice_json

    path = make_report(tmp_path, "m3diff")
    rep = json.loads(path.read_text())
    rep["per_changes"] = {"0": slice_json(1, 150.0), "1": slice_json(2, 70.0), "3": slice_json(1, 9.0)}
    rep["per_changes"]["3"]["words"] = {"caption": 41.2, "references": 53.4}
    path.write_text(json.dumps(rep))
    df = tables.slice_table({"m3diff": read_report(path)}, ("per_domain", "per_changes"))
    assert list(df["slice"]) == ["overall", "photo", "render", "no change", "1 change", "3 changes"]
    three = df[df["slice"] == "3 changes"].iloc[0]
    assert three["CIDEr-D"] == "9.0" and three["words"] == "41 / 53"
    assert df[df["slice"] == "photo"].iloc[0]["words"] == "—"  # a report written before lengths were kept
    # an older report without the slices still loads and shows its domains
    old = tables.slice_table({"m3diff": read_report(make_report(tmp_path, "old"))}, ("per_domain", "per_changes"))
    assert list(old["slice"]) == ["overall", "photo", "render"]


def test_pairs_frame_filters_and_sorts(report_file):
    rep = read_report(report_file)
    df = tables.pairs_frame(rep, "color", "all", "CIDEr-D", ascending=True)
    assert list(df["id"]) == ["p0", "p1"]
    df = tables.pairs_frame(rep, "all", "render", "BLEU-4", ascending=True)
    assert list(df["id"]) == ["p3", "p1"]
    df = tables.pairs_frame(rep, "all", "all", "CIDEr-D", ascending=False)
    assert list(df["id"]) == ["p3", "p2", "p1", "p0"]
    assert tables.pairs_frame(rep, "pose").empty
    assert tables.report_choices(rep) == (["addition", "color", "ocr", "counting"], ["photo", "render"])


def test_pair_images_come_from_the_references_the_report_names(report_file, tmp_path):
    rep = read_report(report_file)
    files = pair_images(rep, report_pairs(rep)[2])
    assert files is not None and all(f.endswith(".png") for f in files)
    bare = read_report(make_report(tmp_path / "other", with_images=False))
    assert pair_images(bare, report_pairs(bare)[0]) is None


def test_exports_are_written_by_analysis_report_in_fresh_folders(tmp_path):
    a = read_report(make_report(tmp_path, "m3diff", shift=5.0))
    b = read_report(make_report(tmp_path, "no_mdp"))
    csv_path = tables.export_report({"m3diff": a, "no_mdp": b}, "csv")
    text = open(csv_path, encoding="utf-8").read()
    assert "m3diff,type,color" in text and "no_mdp,type,color" in text
    tex = open(tables.export_report({"m3diff": a}, "latex"), encoding="utf-8").read()
    assert r"\begin{tabular}" in tex and "m3diff" in tex
    assert tables.export_report({}, "csv") != tables.export_report({}, "csv")  # never a shared path
    paper = open(tables.export_report({}, "csv"), encoding="utf-8").read()
    assert "M3Diff" in paper


def test_run_vs_run_keeps_the_paired_intervals_of_runs_scored_together(tmp_path):
    # `m3diff eval` of two runs writes analysis.breakdown.compare's result, intervals included
    rep = read_report(make_report(tmp_path, "m3diff"))
    rep["comparison"] = {"base": "no_mdp", "runs": {"m3diff": {
        "overall:overall": {"n": 4, "n_base": 4, "paired": True, "CIDEr-D": {"delta": 3.25, "ci": [1.0, 5.5]}},
        "source:x": {"n": 4, "n_base": 4, "paired": True, "CIDEr-D": {"delta": 1.0}}}}}
    delta = tables.delta_table({"m3diff": rep})
    assert list(delta["slice"]) == ["overall"] and delta.iloc[0]["Δ CIDEr-D"] == "3.2 [1.0, 5.5]"


def test_the_paper_table_holds_table_3():
    df = tables.paper_table()
    assert df.iloc[0]["real CIDEr-D"] == pytest.approx(31.3)


def test_shipped_example_report_loads_with_its_images():
    rep = read_report(EXAMPLE_REPORT)
    assert len(report_pairs(rep)) == 13
    assert all(pair_images(rep, p) for p in report_pairs(rep))


def test_grounding_and_change_tables_show_what_the_reports_carry():
    from analysis.tables import changes_table, grounding_table

    checks = {"distinct_share": 0.5, "loss_true": 1.0, "random_gap": 0.3, "same_scene_gap": 0.05,
              "no_change_share": 1.0, "passed": False, "flags": ["same-scene swap raises the answer loss by +5.0%"]}
    rep = {"grounding": {"models": {"m3diff": checks}},
           "changes": {"m3diff": {"overall": {"recall": 0.25, "precision": 0.5, "value_recall": 0.125},
                                  "per_type": {"color": {"recall": 0.1, "precision": None}}}}}
    g = grounding_table({"a": rep, "b": rep})  # the same model in two reports is one row
    assert len(g) == 1 and g.loc[0, "same-scene swap"] == "+5.0%" and g.loc[0, "checks"].startswith("flagged")
    c = changes_table({"a": rep})
    assert list(c["slice"]) == ["overall", "color"]
    assert c.loc[0, "recall %"] == "25.0" and c.loc[1, "precision %"] == "—"
    # an older report without the new-value measure shows "—", not 0
    assert c.loc[0, "new value said %"] == "12.5" and c.loc[1, "new value said %"] == "—"
    assert "not in the loaded reports" in grounding_table({"a": {}}).iloc[0, 0]


def test_quality_line_names_overall_best_worst_and_the_checks():
    from analysis.tables import quality_line

    s = lambda v: {"CIDEr-D": v}  # noqa: E731
    rep = {"meta": {"run": "m3diff"}, "overall": {"CIDEr-D": 26.94, "n": 500},
           "per_type": {"color": s(10.0), "pose": s(2.5), "viewpoint": s(29.7), "illumination": s(34.0)},
           "grounding": {"models": {"no_mdp": {"passed": True, "flags": []},
                                    "m3diff": {"passed": False, "flags": ["distinct captions 48% < 90%"]}}}}
    line = quality_line(rep)
    assert line.startswith("measured CIDEr-D 26.9 on 500 test pairs")
    assert "best on illumination (34.0) and viewpoint (29.7), worst on pose (2.5)" in line
    assert line.endswith("not passed (distinct captions 48% < 90%)")  # the report's own run, not the twin
    assert quality_line({"overall": {}}) == ""


def test_latex_export_keeps_every_domain_of_the_data(tmp_path):
    """The generator's 'photo' pairs were dropped from table.tex (the paper has Real/Render only)."""
    from analysis.report import latex_table

    s = lambda c: {"n": 2, "BLEU-4": 1.0, "METEOR": 2.0, "ROUGE-L": 3.0, "CIDEr-D": c}  # noqa: E731
    rep = {"meta": {"run": "m3diff", "references": "x"}, "overall": s(5.0), "per_type": {},
           "per_domain": {"render": s(11.0), "photo": s(22.0)}}
    tex = latex_table(rep)
    assert "{Render}" in tex and "{Photo}" in tex
    assert "m3diff & 1.0 & 2.0 & 3.0 & 11.0 & 1.0 & 2.0 & 3.0 & 22.0" in tex
    assert "reported in the paper" in tex and "& -- & -- & -- & --" in tex  # the paper's rows, photo blank


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from tests.analysis.generated_reports import make_generated_report

    return read_report(make_generated_report(tmp_path_factory.mktemp("gen"), twin="no_mdp"))


def test_localization_table_sets_each_map_beside_the_pixel_difference_and_chance(generated):
    loc = generated["localization"]["m3diff"]["summary"]
    df = tables.localization_table({"m3diff": generated}, "pointing", "change type")
    assert list(df.columns) == ["slice", "n pairs", "m3diff: ‖P(F′1) − P(F′2)‖", "m3diff: ‖ΔF‖ L4", "m3diff: eq. 5 L4",
                                "no_mdp: ‖P(F′1) − P(F′2)‖", "pixel difference", "uniform (chance)"]
    overall = df.iloc[0]
    assert overall["slice"] == "overall" and overall["n pairs"] == loc["overall"]["pixel_difference"]["n_pairs"]
    assert overall["pixel difference"] == f"{100 * loc['overall']['pixel_difference']['pointing']:.1f}"
    # what the generated pairs should show: the pixel difference points at nearly every change, a
    # uniform map at chance, and the twin's noise map (no MDP) far below the pixel difference
    assert float(overall["pixel difference"]) > 75 > 20 > float(overall["uniform (chance)"])
    assert float(overall["no_mdp: ‖P(F′1) − P(F′2)‖"]) < float(overall["pixel difference"]) - 30
    from m3diff.change_types import TYPE_IDS

    types = list(df["slice"][1:])
    assert types == [t for t in TYPE_IDS if t in types] and set(types) == set(loc["per_type"])
    settings = tables.localization_table({"m3diff": generated}, "energy", "setting")
    assert list(settings["slice"]) == ["overall", *[s for s in ("single", "multi", "distractor") if s in loc["per_setting"]]]
    # energy of a uniform map is the boxes' area share
    assert settings.iloc[0]["uniform (chance)"] == f"{100 * loc['overall']['uniform']['area']:.1f}"


def test_localization_panel_says_how_to_get_one_when_the_reports_have_none(report_file):
    rep = read_report(report_file)
    for df in (tables.localization_table({"m3diff": rep}), tables.localization_table({})):
        assert "m3diff predict --maps" in df.iloc[0, 0] and "m3diff eval" in df.iloc[0, 0]
    assert "m3diff predict --maps" in tables.localization_notes({"m3diff": rep})


def test_localization_notes_give_the_sanity_verdicts_and_no_change_peakedness(generated):
    notes = tables.localization_notes({"m3diff": generated}).splitlines()
    assert [line.split("**")[1] for line in notes] == ["Sanity check, m3diff", "No change, m3diff",
                                                        "Sanity check, no_mdp", "No change, no_mdp"]
    # the fixture's feature-difference map survives the weight reset (it is computed from pixels)
    assert "not evidence" in notes[0] and "‖P(F′1) − P(F′2)‖ (with model.mdp re-initialised)" in notes[0]
    passes = notes[0].split("passes: ", 1)[1].split(";", 1)[0].split(", ")
    assert "‖ΔF‖ L4" in passes and "‖P(F′1) − P(F′2)‖" not in passes
    nc = {c["map"]: c for c in generated["localization"]["m3diff"]["no_change"]}["feature_difference"]
    assert (f"peak/mean {nc['changed']['peak_to_mean']:.2f} on {nc['n_changed']} changed vs "
            f"{nc['unchanged']['peak_to_mean']:.2f} on {nc['n_unchanged']} unchanged") in notes[1]
    assert nc["n_unchanged"] >= 3  # the fixture holds no-change pairs


def test_the_protocol_card_and_a_warning_when_two_reports_were_not_scored_alike(tmp_path):
    """Every report states how it was scored; the Dashboard shows each card and says when two differ."""
    from analysis.protocol import Protocol
    from analysis.tables import protocol_note, protocol_table

    card = Protocol.of([("a b",), ("c", "d"), ("",)], meteor=True, spice=False)
    assert card.references_per_pair == (1, 1.333, 2) and card.empty_references == 1 == card.empty_reference_pairs
    assert Protocol.from_json(card.to_json()) == card
    a = {"protocol": card.to_json()}
    b = {"protocol": Protocol.of([("a b",), ("c",)], meteor=False, spice=False, id_matching="image extension",
                                 left_out={"reference_without_prediction": ["x"]}).to_json()}
    table = protocol_table({"a": a, "b": b})
    assert list(table.columns) == ["", "a", "b"] and "CIDEr-D" in " ".join(table["a"])
    note = protocol_note({"a": a, "b": b})
    assert "not scored the same way" in note
    for what in ("METEOR: on vs off", "ids matched: exact vs image extension", "1 reference without prediction"):
        assert what in note
    assert protocol_note({"a": a, "a2": dict(a)}) == ""
    assert "no protocol card" in protocol_note({"a": a, "old": {}})
