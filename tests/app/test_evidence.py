"""The evidence views: the Errors tab on a report whose images do not ship (regenerated pairs, true
boxes, hit or miss), and the Describe tab's maps on one absolute colour scale with a legend."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import app
from webapp.services import default_report_paths
from analysis.evidence import BOX_COLOURS, map_choices, map_overlays, pair_pictures
from analysis.report import read_report


def _has_colour(image: Image.Image, colour, tol: int = 40) -> int:
    a = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(a - np.array(colour)).sum(-1) < tol).sum())


def test_errors_tab_regenerates_a_pair_and_draws_its_true_boxes_and_hit(generated_file, services):
    loaded = read_report(generated_file)
    report = loaded.report
    loc = report.run.localization.pairs
    # a pair the pixel difference hits and the model's feature difference does not (the fixture's maps
    # are scored, not typed): the view must say both, each for its own map
    pid = next(p for p, s in loc.items() if s["pixel_difference"] == 1.0 and s["feature_difference"] < 1.0)
    traced = []
    pair, hb, ha, legend, read_b, read_a, text = app.error_pair(lambda b, a: traced.append(b) or app._traced(services.captioner, b, a),
                                                loaded, pid)
    assert [b.size for b in traced] == [(64, 64)]  # the loaded model ran on the regenerated pair, as generated
    assert "regenerated" in text and "seed 7" in text
    # its predictions hold no change readings: said in one line, and no drawing of what was read
    from analysis.render import NO_READINGS

    assert read_b is None and read_a is None
    reason = [line for line in text.splitlines() if NO_READINGS in line]
    assert len(reason) == 1 and reason[0].startswith("**Change reader**")
    assert "pixel difference **hit**" in text and "‖P(F′1) − P(F′2)‖ **" in text
    assert "‖P(F′1) − P(F′2)‖ **hit**" not in text
    record = report.pair(pid)
    boxes_b = [r.before for r in record.regions if r.before]
    boxes_a = [r.after for r in record.regions if r.after]
    assert (_has_colour(pair[0], BOX_COLOURS["before"]) > 0) == bool(boxes_b)
    assert (_has_colour(pair[1], BOX_COLOURS["after"]) > 0) == bool(boxes_a)
    assert _has_colour(hb, BOX_COLOURS["before"]) == _has_colour(pair[0], BOX_COLOURS["before"]) or not boxes_b
    # the regenerated images are the generator's, pixel for pixel
    from m3diff.data.synth.generator import SynthConfig, regenerate

    _, before, _ = regenerate(SynthConfig(**report.meta.generator), pid)
    assert np.array_equal(np.asarray(traced[0]), np.asarray(before))
    # shown enlarged (128-px pairs are too small to see a box on), boxes scaled with the image
    assert pair[0].size == hb.size == ha.size == (384, 384)
    which, shown, box = ("before", hb, boxes_b[0]) if boxes_b else ("after", ha, boxes_a[0])
    x0, y0, x1, y1 = (int(6 * v) for v in box)  # 64 → 384 px
    edge = np.asarray(shown)[y0:y1, x0:x0 + 2].astype(int)  # the box's left side, on the map
    assert (np.abs(edge - np.array(BOX_COLOURS[which])).sum(-1) < 40).mean() > 0.8
    assert "colour-legend" in legend and "‖P(F′1) − P(F′2)‖" in legend  # the map every model has
    # and which true changes the caption named, with what it said of the new value
    hits = report.run.changes.pairs[pid]
    assert hits and "**Changes**" in text
    for h in hits:
        assert f"- {h.type} · {h.object}: " in text
    from analysis.render import change_lines

    own = [p for p in report.pairs if p.score.caption == p.score.refs[0] and report.run.changes.pairs[p.id]]
    assert own  # a caption that is the pair's own reference names every change and says each new value
    for p in own:
        lines = change_lines(report, p)
        assert "not named" not in lines and "✗" not in lines and lines.count("\n- ") == len(
            report.run.changes.pairs[p.id]), lines


def test_the_errors_text_says_what_the_caption_said_of_each_change(tmp_path):
    from analysis.changes import ChangeHit
    from analysis.render import change_lines
    from analysis.report import ChangesRun
    from tests.analysis.conftest import make_report

    report = read_report(make_report(tmp_path)).report
    hits = [ChangeHit("ocr", "sign", True, True, False, "DELI", "RUBY", ("PEARL",)),
            ChangeHit("color", "red cube", True, True, True, "red", "green", ("green", "red")),
            ChangeHit("addition", "blue ball", True, False, None),
            ChangeHit("pose", "person in red", False, False, False, "standing", "arms_up", ())]
    report.run.changes = ChangesRun(None, {"p1": hits, "p2": []})
    text = change_lines(report, report.pair("p1"))
    assert "- ocr · sign: named · DELI → RUBY: said PEARL ✗" in text
    assert "- color · red cube: named · red → green: said green, red ✓" in text
    assert "- addition · blue ball: object named, not the change" in text
    assert "- pose · person in red: not named (standing → arms up)" in text
    assert "none to name" in change_lines(report, report.pair("p2"))
    report.run.changes = None
    assert change_lines(report, report.pair("p1")) == ""  # real data: no truth to compare with


def _table_rows(text: str) -> dict[str, list[str]]:
    """The change reader's per-hit table in the Errors text: type -> its other cells."""
    import re

    start = text.index("| type | true change |")
    rows = [line for line in text[start:].splitlines() if line.startswith("| ")][1:]
    return {c[0]: c[1:] for c in ([x.strip() for x in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows)}


def test_the_errors_tab_shows_what_the_change_reader_read_beside_the_truth(read_report_file):
    from analysis.evidence import at_least, pair_pictures
    from m3diff.overlay import TYPE_COLOURS

    path, pid, role = read_report_file
    loaded = read_report(path)
    pair, hb, ha, legend, read_b, read_a, text = app.error_pair(lambda b, a: None, loaded, pid)
    rows = _table_rows(text)
    right, wrong, invented = role["right"].type, role["wrong"].type, role["invented"]
    # columns: true change | what the model read | object right | new value right | box pointed
    assert rows[right][2:] == ["✓", "✓", "✓"]
    assert rows[wrong][2:] == ["✗", "✓", "✗"]  # the object misread, its new value right, its boxes elsewhere
    assert rows[invented][0] == "— \\(did not happen\\)" and rows[invented][2:] == ["–", "–", "–"]
    assert "confidence 60%" in rows[invented][1]
    for t in role["missed"]:
        assert rows[t][1] == "— \\(missed\\)" and rows[t][2:] == ["–", "–", "–"]
    assert set(rows) == {right, wrong, invented, *role["missed"]}
    assert "read 2 of " in text and "1 that did not happen" in text
    # the drawings: each read box in its type's colour, the true boxes dashed over them
    pics = pair_pictures(loaded, pid)
    plain_b, plain_a = at_least(pics.before), at_least(pics.after)
    assert read_b.size == plain_b.size and read_a.size == plain_a.size
    for drawn, plain in ((read_b, plain_b), (read_a, plain_a)):
        for t in (right, wrong, invented):
            assert _has_colour(drawn, TYPE_COLOURS[t]) > _has_colour(plain, TYPE_COLOURS[t]) + 20, t
    k = read_b.width / pics.before.width
    x0, y0, x1, _ = role["right"].box_before
    edge = np.asarray(read_b.convert("RGB")).astype(int)[round(y0 * k), round(x0 * k) + 6:round(x1 * k) - 6]
    near = lambda c: (np.abs(edge - np.array(c)).sum(-1) < 40).sum()  # noqa: E731
    # where the true box and the read box coincide, both show: the dashes, and the read box between them
    assert near(BOX_COLOURS["before"]) > 0 and near(TYPE_COLOURS[right]) > 0
    assert "What the change reader read" in text and "dashed" in text
    # another pair of the same run: not scored by the detection, no drawing
    other = next(p.id for p in loaded.report.pairs if p.id != pid)
    *_, no_b, no_a, other_text = app.error_pair(lambda b, a: None, loaded, other)
    assert no_b is None and no_a is None and "did not score this pair" in other_text


def test_a_hostile_value_in_an_uploaded_reports_detection_stays_text(read_report_file, tmp_path):
    path, pid, role = read_report_file
    data = json.loads(path.read_text())
    hit = next(h for h in data["runs"]["m3diff"]["detection"]["pairs"][pid] if h["type"] == role["invented"])
    hit["detected"]["after"]["kind"] = "<script>alert(1)</script>\n| x | y |"
    up = tmp_path / "upload.json"
    up.write_text(json.dumps(data))
    *_, read_b, _, text = app.error_pair(lambda b, a: None, read_report(up, allowed=()), pid)
    assert "<script" not in text and "&lt;script&gt;" in text
    assert len(_table_rows(text)[role["invented"]]) == 5  # the newline and the pipes made no row or column


def test_the_dashboard_shows_the_change_readers_table(read_report_file, tmp_path):
    from tests.analysis.conftest import make_report
    from webapp.reports import ReportStore

    path, _, role = read_report_file
    loaded = read_report(path)
    store = ReportStore({"reader": loaded})
    table = app.dashboard_view(store, store.initial(), "CIDEr-D")[7]
    s = loaded.report.run.detection.summary
    overall = table.set_index("slice").loc["overall"]
    assert overall["recall %"] == f"{100 * s.overall.recall:.1f}"
    assert overall["precision %"] == f"{100 * s.overall.precision:.1f}"
    assert table.set_index("slice").loc[role["invented"], "true"] == "0"
    plain = ReportStore({"plain": read_report(make_report(tmp_path))})
    assert "not in the loaded reports" in app.dashboard_view(plain, plain.initial(), "CIDEr-D")[7].iloc[0, 0]


def test_a_pair_without_a_change_says_so_and_other_reports_still_cannot_show_their_pairs(generated_file, services):
    loaded = read_report(generated_file)
    nc = next(p for p in loaded.report.pairs if p.no_change)
    *_, text = app.error_pair(lambda b, a: None, loaded, nc.id)
    assert "no changed box" in text and "regenerated" in text
    # settings that did not make these pairs: nothing is shown rather than another pair
    for change in ({"seed": 8}, {"no_change": 0.0}):
        other = json.loads(generated_file.read_text())
        other["meta"]["generator"].update(change)
        path = generated_file.with_name(f"other{len(change)}{next(iter(change))}.json")
        path.write_text(json.dumps(other))
        rep = read_report(path)
        pics = [pair_pictures(rep, p.id) for p in rep.report.pairs]
        assert sum(p is None for p in pics) >= (len(pics) if "seed" in change else 1)
    bad = json.loads(generated_file.read_text())
    bad["meta"]["generator"] = {"seed": 7, "references": 10**9}  # a visitor's report cannot make the server work forever
    path = generated_file.with_name("bad.json")
    path.write_text(json.dumps(bad))
    *_, text = app.error_pair(lambda b, a: None, read_report(path), loaded.report.pairs[2].id)
    assert "references the report names were not found" in text  # it named them: not "does not say where"


def _shown(before, after, maps, feature_difference=None):
    from m3diff.describing import PairTrace

    g = maps.shape[-1]
    trace = PairTrace(layers=(1,), score_mean={1: 0.5}, score={1: np.ones(4)}, delta_norm={1: maps[0]},
                      attn_eq5={1: maps}, attn_eq6={1: maps})
    return app.Shown(before, after, trace, "a caption", feature_difference if feature_difference is not None
                     else np.zeros((g, g)))


def test_describe_maps_share_one_absolute_scale_with_a_legend():
    grey = Image.new("RGB", (48, 48), (128, 128, 128))
    # a flat map looks flat; a weak map is darker than a strong one on the shared scale
    weak_strong = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.8)])
    hb, ha, legend = app.heatmaps(_shown(grey, grey, weak_strong), "L1", "attn_eq5")
    b, a = np.asarray(hb).astype(int), np.asarray(ha).astype(int)
    assert len(np.unique(b.reshape(-1, 3), axis=0)) == 1 and len(np.unique(a.reshape(-1, 3), axis=0)) == 1
    assert b.sum() < a.sum() - 1000
    assert 'data-vmin="0"' in legend and 'data-vmax="0.8"' in legend and "attention weight" in legend
    # two identical images: the feature difference is all zeros, and drawn dark (not stretched)
    zeros = _shown(grey, grey, weak_strong, np.zeros((4, 4)))
    hb, _, legend = app.heatmaps(zeros, "L1", "feature_difference")
    tinted = np.asarray(hb).astype(int)
    assert tinted.max() < 80  # inferno's 0 is black, blended over grey 128
    assert "image tokens the language model reads" in legend
    # a tiny wobble is not blown up to full colour either: it is drawn on its own absolute size
    wobble = _shown(grey, grey, weak_strong, np.full((4, 4), 1.0) + 1e-4 * np.eye(4))
    hb, _, _ = app.heatmaps(wobble, "L1", "feature_difference")
    assert np.ptp(np.asarray(hb).astype(int)[..., 0]) <= 2


def test_feature_difference_is_offered_when_the_description_has_it(services, pair_files, monkeypatch):
    assert "feature_difference" not in [k for _, k in map_choices(False)]
    assert [k for _, k in map_choices(True)][-1] == "feature_difference"
    real = services.captioner.describe_stream

    def with_fd(*args, **kwargs):  # a Description that carries the map (the pipeline's newer field)
        for d in real(*args, **kwargs):
            d.feature_difference = np.arange(16, dtype=np.float32).reshape(4, 4)
            yield d

    monkeypatch.setattr(services.captioner, "describe_stream", with_fd)
    *_, (_, _, shown) = app.describe_events(services, *pair_files, max_new_tokens=2)
    assert shown.feature_difference is not None
    hb, ha, legend = app.heatmaps(shown, None, "feature_difference")
    assert hb.size == shown.before.size and 'data-vmax="15"' in legend


def test_maps_land_on_the_right_place_of_a_non_square_image():
    # 96×64 is padded to a 96×96 square (16 rows above and below); grid cell (2, 3) of 4×4 covers square
    # rows 48–72 and columns 72–96, i.e. image rows 32–56 at the right edge
    image = Image.new("RGB", (96, 64), (0, 0, 0))
    grid = np.zeros((4, 4))
    grid[2, 3] = 1.0
    hb, _, _ = map_overlays(image, image, grid, grid, alpha=1.0)
    out = np.asarray(hb).astype(int).sum(-1)
    assert out.shape == (64, 96)
    assert out[44, 90] > 500 and out[5, 90] < 100 and out[44, 10] < 100
    rows = np.nonzero(out[:, 90] > 300)[0]
    assert 28 <= rows.min() and rows.max() <= 60


def test_the_shipped_reports_carry_their_evidence_and_their_pairs_are_redrawn_as_scored(tmp_path, monkeypatch):
    """The Dashboard panel and the Errors tab read these sections; the shipped reports' images do not
    ship, so every pair must regenerate to the very pair that was scored (types and boxes)."""
    monkeypatch.chdir(tmp_path)  # as on a fresh clone: the evaluation's data folder is not here
    from analysis.evidence import generator_settings
    from analysis.report import Region
    from m3diff.data.synth.generator import regenerate

    paths = default_report_paths()
    assert paths
    for path in paths:
        loaded = read_report(path)
        rep = loaded.report
        loc = rep.run.localization
        assert loc is not None and loc.pairs and "feature_difference" in loc.summary.maps, path
        assert rep.run.sanity is not None and rep.run.sanity.steps, path
        assert len(rep.run.changes.pairs) == rep.run.scores.overall.n, path  # the Errors tab's change lines
        assert rep.run.protocol is not None, path
        scored = [p for p in rep.pairs if p.id in loc.pairs][:3]
        for record in scored:
            pictures = pair_pictures(loaded, record.id)
            assert pictures is not None and "regenerated" in pictures.source
            truth, _, _ = regenerate(generator_settings(loaded), record.id)
            box = lambda b: None if b is None else tuple(float(v) for v in b)  # noqa: E731
            assert [Region(r["type"], box(r["before"]), box(r["after"])) for r in truth["regions"]] == record.regions
            assert truth["captions"] == record.score.refs
            assert pictures.before.size == (int(rep.meta.generator["size"]),) * 2
