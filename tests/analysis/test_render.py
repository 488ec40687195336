"""report.json read as a typed object (analysis.report) and every view of it (analysis.render): what the
Dashboard, the Errors tab, the CLI and the model card show, as plain functions over saved reports."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from analysis import render
from analysis.breakdown import Comparison, Delta, SliceDelta
from analysis.report import Report, ReportError, ReportLimits, read_report
from tests.analysis.conftest import make_report, slice_result

EXAMPLE_REPORT = Path(__file__).resolve().parents[2] / "examples" / "report.json"


def reports(**paths) -> dict:
    return {name: read_report(p).report for name, p in paths.items()}


# ----------------------------------------------------------------------------------- reading: data, checked
def test_a_saved_report_reads_back_to_the_same_report(tmp_path):
    first = read_report(make_report(tmp_path, "m3diff")).report
    again = Report.loads(first.dumps())
    assert again.to_json() == first.to_json()
    assert again.run.scores.per_type["color"].ci["CIDEr-D"] == (5.0, 19.0)


# keys only report.json has (a dataset record's "id" or "captions", a predictions file's "sanity" are
# other formats' keys, owned by their readers; so is "changes" since generated records and a change
# reader's readings hold their changes under it)
REPORT_KEYS = {"runs", "meta", "comparison", "grounding", "localization", "detection", "protocol",
               "conventions", "per_type", "per_domain", "per_changes", "per_source", "overall", "dropped",
               "metrics_available", "unavailable", "no_change_pairs", "per_pair", "refs", "schema"}
PRODUCT = ("app.py", "m3diff", "analysis", "training", "webapp", "spaces", "scripts", "examples")


def raw_key_reads(path: Path) -> set[str]:
    """String keys this module reads from a mapping: x["k"], x.get("k"), "k" in x."""
    import ast

    keys = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop") \
                and node.args and isinstance(node.args[0], ast.Constant):
            keys.add(node.args[0].value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            keys.add(node.left.value)
    return keys


def test_only_analysis_report_reads_report_json_by_its_keys():
    root = EXAMPLE_REPORT.parents[1]
    files = [root / "app.py"] + [f for d in PRODUCT[1:] for f in sorted((root / d).rglob("*.py"))]
    owner = root / "analysis" / "report.py"
    found = {f.relative_to(root).as_posix(): keys for f in files if f != owner
             if (keys := raw_key_reads(f) & REPORT_KEYS)}
    assert not found
    assert raw_key_reads(owner) & REPORT_KEYS >= {"runs", "meta", "per_type", "localization"}  # the walk sees reads


def test_no_report_written_holds_a_private_key(tmp_path):
    def keys(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield k
                yield from keys(v)
        elif isinstance(o, list):
            for v in o:
                yield from keys(v)

    loaded = read_report(EXAMPLE_REPORT)
    assert loaded.images  # the wrapper holds the resolved files ...
    written = json.loads(loaded.report.dumps())
    assert not [k for k in keys(written) if k.startswith("_")]  # ... the JSON never does
    assert set(written) >= {"schema", "meta", "runs", "pairs"}


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["runs"]["m3diff"]["per_type"]["color"].update({"CIDEr-D": "12"}), "runs.m3diff.per_type.color.CIDEr-D"),
    (lambda r: r["pairs"][2].update({"caption": 3}), "pairs[2].caption"),
    (lambda r: r["pairs"].append("not a pair"), "pairs[4]: expected an object"),
    (lambda r: r["runs"]["m3diff"]["overall"].update({"n": 2.5}), "runs.m3diff.overall.n: expected a whole number"),
    (lambda r: r["pairs"][0].update({"refs": {"a": 1}}), "pairs[0].refs: expected a list"),
    (lambda r: r["pairs"][0].update({"caption": "x" * 40_000}), "pairs[0].caption: a string of more than"),
    (lambda r: r["runs"]["m3diff"].update({"overall": [1, 2]}), "runs.m3diff.overall: expected an object"),
    (lambda r: r.update({"schema": "m3diff.eval/1"}), "schema 'm3diff.eval/1'"),
    (lambda r: r["runs"]["m3diff"]["overall"].update({"BLEU-4": float("nan")}), "runs.m3diff.overall.BLEU-4"),
])
def test_a_report_with_a_wrongly_typed_field_is_refused_with_its_path(tmp_path, edit, field):
    path = make_report(tmp_path, "m3diff")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, allow_nan=True))
    with pytest.raises(ReportError) as err:
        read_report(path)
    message = str(err.value)
    assert field in message and "\n" not in message and "Traceback" not in message


def test_reports_nested_too_deep_or_larger_than_allowed_are_refused(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ReportError, match="nested too deeply"):
        read_report(deep)
    path = make_report(tmp_path, "m3diff")
    with pytest.raises(ReportError, match="pairs: more than 2 items"):
        read_report(path, limits=ReportLimits(max_pairs=2))
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        read_report(p)


def test_pair_images_come_from_the_references_the_report_names(report_file, tmp_path):
    loaded = read_report(report_file)
    files = loaded.pair_files("p2")
    assert files is not None and all(f.endswith(".png") for f in files)
    bare = read_report(make_report(tmp_path / "other", with_images=False))
    assert bare.pair_files("p0") is None


# ----------------------------------------------------------------------------------- the Dashboard's tables
def test_slice_table_lists_types_in_the_canonical_order_with_n_and_ci(report_file):
    df = render.slice_table(reports(m3diff=report_file), "per_type")
    assert list(df["slice"]) == ["overall", "addition", "color", "ocr", "counting"]  # TYPE_IDS order
    color = df[df["slice"] == "color"].iloc[0]
    assert color["n"] == 2 and color["CIDEr-D"] == "12.0 [5.0, 19.0]"
    assert df[df["slice"] == "ocr"].iloc[0]["CIDEr-D"] == "40.0"  # n=1: no interval


def test_two_runs_give_side_by_side_columns_and_deltas(tmp_path):
    both = reports(m3diff=make_report(tmp_path, "m3diff", shift=5.0), no_mdp=make_report(tmp_path, "no_mdp"))
    df = render.slice_table(both, "per_domain")
    assert {"m3diff: n", "no_mdp: CIDEr-D"} <= set(df.columns)
    delta = render.delta_table({"no_mdp": both["no_mdp"], "m3diff": both["m3diff"]})
    overall = delta[delta["slice"] == "overall"].iloc[0]
    assert overall["Δ CIDEr-D"] == "5.0"  # loaded side by side: no paired interval to show
    assert set(delta["slice"]) >= {"type:color", "domain:render"}
    assert "note" in render.delta_table({"m3diff": both["m3diff"]}).columns


def test_domain_table_goes_on_by_number_of_changes_with_lengths(tmp_path):
    per_changes = {"0": slice_result(1, 150.0, kind="changes"), "1": slice_result(2, 70.0, kind="changes"),
                   "3": slice_result(1, 9.0, kind="changes", words={"caption": 41.2, "references": 53.4})}
    path = make_report(tmp_path, "m3diff", per_changes=per_changes)
    df = render.slice_table(reports(m3diff=path), ("per_domain", "per_changes"))
    assert list(df["slice"]) == ["overall", "photo", "render", "no change", "1 change", "3 changes"]
    three = df[df["slice"] == "3 changes"].iloc[0]
    assert three["CIDEr-D"] == "9.0" and three["words"] == "41 / 53"
    assert df[df["slice"] == "photo"].iloc[0]["words"] == "—"


def test_pairs_frame_filters_and_sorts(report_file):
    rep = read_report(report_file).report
    assert list(render.pairs_frame(rep, "color", "all", "CIDEr-D", ascending=True)["id"]) == ["p0", "p1"]
    assert list(render.pairs_frame(rep, "all", "render", "BLEU-4", ascending=True)["id"]) == ["p3", "p1"]
    assert list(render.pairs_frame(rep, "all", "all", "CIDEr-D", ascending=False)["id"]) == ["p3", "p2", "p1", "p0"]
    assert render.pairs_frame(rep, "pose").empty
    assert list(render.pairs_frame(rep, ascending=False, limit=2)["id"]) == ["p3", "p2"]  # the first of the sort
    assert render.report_choices(rep) == (["addition", "color", "ocr", "counting"], ["photo", "render"])


def test_exports_are_written_in_fresh_folders(tmp_path):
    both = reports(m3diff=make_report(tmp_path, "m3diff", shift=5.0), no_mdp=make_report(tmp_path, "no_mdp"))
    text = open(render.export(both, "csv"), encoding="utf-8").read()
    assert "m3diff,type,color" in text and "no_mdp,type,color" in text
    tex = open(render.export({"m3diff": both["m3diff"]}, "latex"), encoding="utf-8").read()
    assert r"\begin{tabular}" in tex and "m3diff" in tex
    assert render.export({}, "csv") != render.export({}, "csv")  # never a shared path
    assert "M3Diff" in open(render.export({}, "csv"), encoding="utf-8").read()


def test_run_vs_run_keeps_the_paired_intervals_of_runs_scored_together(tmp_path):
    rep = read_report(make_report(tmp_path, "m3diff")).report
    rep = replace(rep, comparison=Comparison("no_mdp", {"m3diff": {
        "overall:overall": SliceDelta(4, 4, True, {"CIDEr-D": Delta(3.25, (1.0, 5.5))}),
        "source:x": SliceDelta(4, 4, True, {"CIDEr-D": Delta(1.0)})}}))
    rep = Report.loads(rep.dumps())  # through the file format
    delta = render.delta_table({"m3diff": rep})
    assert list(delta["slice"]) == ["overall"] and delta.iloc[0]["Δ CIDEr-D"] == "3.2 [1.0, 5.5]"


def test_the_paper_table_holds_table_3():
    assert render.paper_table().iloc[0]["real CIDEr-D"] == pytest.approx(31.3)


def test_shipped_example_report_loads_with_its_images():
    loaded = read_report(EXAMPLE_REPORT)
    assert len(loaded.report.pairs) == 13
    assert all(loaded.pair_files(p.id) for p in loaded.report.pairs)


def test_quality_line_names_overall_best_worst_and_the_checks(tmp_path):
    from analysis.grounding import GroundingChecks
    from analysis.report import GroundingSection

    rep = read_report(make_report(tmp_path, "m3diff")).report
    bd = rep.run.scores
    bd.per_type = {"color": slice_result(2, 10.0), "pose": slice_result(1, 2.5), "viewpoint": slice_result(1, 29.7),
                   "illumination": slice_result(1, 34.0)}
    check = lambda name, distinct: GroundingChecks(name, 10, distinct, 1.0, 1.5, 1.5, 1.0, 10, 5, 1.0)  # noqa: E731
    rep.grounding = GroundingSection("d", "test", 10, {"no_mdp": check("no_mdp", 0.95), "m3diff": check("m3diff", 0.48)})
    line = render.quality_line(rep)
    assert line.startswith("measured CIDEr-D 20.0 on 4 test pairs")
    assert "best on illumination (34.0) and viewpoint (29.7), worst on pose (2.5)" in line
    assert line.endswith("not passed (distinct captions 48% < 90%)")  # the report's own run, not the twin


def test_latex_keeps_every_domain_of_the_data_and_carries_the_protocol(tmp_path):
    """The generator's 'photo' pairs were dropped from table.tex once (the paper has Real/Render only)."""
    from analysis.protocol import Protocol

    rep = read_report(make_report(tmp_path, "m3diff")).report
    rep.run.protocol = Protocol.of([("a",)] * 4, meteor=True, spice=False)
    tex = render.latex_table(rep)
    assert "{Render}" in tex and "{Photo}" in tex
    assert "m3diff & 6.2 & 10.0 & 30.0 & 25.0 & 3.8 & 10.0 & 30.0 & 15.0" in tex
    assert "reported in the paper" in tex and "& -- & -- & -- & --" in tex  # the paper's rows, photo blank
    assert "\\caption{pycocoevalcap" in tex and "4 pairs" in tex


def test_visitor_text_is_escaped_in_markdown_views(tmp_path):
    """A caption or id holding HTML or a Markdown link shows as those characters (no image, no link)."""
    rep = read_report(make_report(tmp_path, "m3diff")).report
    rec = rep.pairs[0]
    rec.score.caption = '<img src="http://x/beacon.png"> [click](http://x) <i>it</i>'
    text = render.pair_markdown(rec)
    assert "<img" not in text and "<i>" not in text and "](http" not in text
    assert "&lt;img" in text and "\\[click\\]" in text


# ----------------------------------------------------------------------------------- localization and changes
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from tests.analysis.generated_reports import make_generated_report

    return read_report(make_generated_report(tmp_path_factory.mktemp("gen"), twin="no_mdp")).report


def test_localization_table_sets_each_map_beside_the_pixel_difference_and_chance(generated):
    from m3diff.change_types import TYPE_IDS

    loc = generated.run.localization.summary
    df = render.localization_table({"m3diff": generated}, "pointing", "change type")
    assert list(df.columns) == ["slice", "n pairs", "m3diff: ‖P(F′1) − P(F′2)‖", "m3diff: ‖ΔF‖ L4", "m3diff: eq. 5 L4",
                                "no_mdp: ‖P(F′1) − P(F′2)‖", "pixel difference", "uniform (chance)"]
    overall = df.iloc[0]
    assert overall["slice"] == "overall" and overall["n pairs"] == loc.overall["pixel_difference"].n_pairs
    assert overall["pixel difference"] == f"{100 * loc.overall['pixel_difference'].pointing:.1f}"
    # what the generated pairs should show: the pixel difference points at nearly every change, a
    # uniform map at chance, and the twin's noise map (no MDP) far below the pixel difference
    assert float(overall["pixel difference"]) > 75 > 20 > float(overall["uniform (chance)"])
    assert float(overall["no_mdp: ‖P(F′1) − P(F′2)‖"]) < float(overall["pixel difference"]) - 30
    types = list(df["slice"][1:])
    assert types == [t for t in TYPE_IDS if t in types] and set(types) == set(loc.per_type)
    settings = render.localization_table({"m3diff": generated}, "energy", "setting")
    assert list(settings["slice"]) == ["overall", *[s for s in ("single", "multi", "distractor") if s in loc.per_setting]]
    assert settings.iloc[0]["uniform (chance)"] == f"{100 * loc.overall['uniform'].area:.1f}"  # the boxes' area share


def test_localization_panel_says_how_to_get_one_when_the_reports_have_none(report_file):
    rep = reports(m3diff=report_file)
    for df in (render.localization_table(rep), render.localization_table({})):
        assert "m3diff predict --maps" in df.iloc[0, 0] and "m3diff eval" in df.iloc[0, 0]
    assert "m3diff predict --maps" in render.localization_notes(rep)


def test_localization_notes_give_the_sanity_verdicts_and_no_change_peakedness(generated):
    notes = render.localization_notes({"m3diff": generated}).splitlines()
    assert [line.split("**")[1] for line in notes] == ["Sanity check, m3diff", "No change, m3diff",
                                                        "Sanity check, no\\_mdp", "No change, no\\_mdp"]
    # the fixture's feature-difference map survives the weight reset (it is computed from pixels)
    assert "not evidence" in notes[0] and "‖P(F′1) − P(F′2)‖ (with model.mdp re-initialised)" in notes[0]
    passes = notes[0].split("passes: ", 1)[1].split(";", 1)[0].split(", ")
    assert "‖ΔF‖ L4" in passes and "‖P(F′1) − P(F′2)‖" not in passes
    nc = {c.map: c for c in generated.run.localization.no_change}["feature_difference"]
    assert (f"peak/mean {nc.changed.peak_to_mean:.2f} on {nc.n_changed} changed vs "
            f"{nc.unchanged.peak_to_mean:.2f} on {nc.n_unchanged} unchanged") in notes[1]
    assert nc.n_unchanged >= 3  # the fixture holds no-change pairs


def test_change_tables_show_recall_precision_and_the_new_value(generated):
    c = render.changes_table({"a": generated})
    s = generated.run.changes.summary
    assert c.loc[0, "slice"] == "overall" and c.loc[0, "recall %"] == f"{100 * s.overall.recall:.1f}"
    assert set(c["slice"][1:]) <= set(s.per_type)
    card = render.change_naming_md({"M3Diff": generated}).splitlines()
    assert card[0].startswith("| slice | M3Diff: recall %") and card[2].startswith("| overall |")
    assert "not in the loaded reports" in render.changes_table({}).iloc[0, 0]


def test_the_protocol_card_and_a_warning_when_two_reports_were_not_scored_alike(tmp_path):
    """Every report states how it was scored; the Dashboard shows each card and says when two differ."""
    from analysis.protocol import Protocol

    card = Protocol.of([("a b",), ("c", "d"), ("",)], meteor=True, spice=False)
    assert card.references_per_pair == (1, 1.333, 2) and card.empty_references == 1 == card.empty_reference_pairs
    assert Protocol.from_json(card.to_json()) == card
    a = read_report(make_report(tmp_path / "a", "a")).report
    b = read_report(make_report(tmp_path / "b", "b")).report
    old = read_report(make_report(tmp_path / "c", "old")).report
    a.run.protocol = card
    b.run.protocol = Protocol.of([("a b",), ("c",)], meteor=False, spice=False, id_matching="image extension",
                                 left_out={"reference_without_prediction": ["x"]})
    table = render.protocol_table({"a": a, "b": b})
    assert list(table.columns) == ["", "a", "b"] and "CIDEr-D" in " ".join(table["a"])
    note = render.protocol_note({"a": a, "b": b})
    assert "not scored the same way" in note
    for what in ("METEOR: on vs off", "ids matched: exact vs image extension", "1 reference without prediction"):
        assert what in note
    assert render.protocol_note({"a": a, "a2": a}) == ""
    assert "no protocol card" in render.protocol_note({"a": a, "old": old})
