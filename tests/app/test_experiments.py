"""The Describe tab's "Make a pair" and "Probe this pair" and the Dashboard's knockout panel: callbacks as
plain functions, and the named endpoints through the served app (gradio_client)."""
from __future__ import annotations

from types import SimpleNamespace

import json
import gradio as gr
import pytest

import app
from analysis.probe import KnockoutDelta, KnockoutStudy, probe_plan
from analysis.render import best_localizing_map
from analysis.report import read_report
from m3diff.data.synth.chosen import NO_CHANGE
from m3diff.describing import EMBEDDED_DIR
from webapp.experiments import KNOCKOUT_HOWTO, knockout_view


def test_make_a_pair_shows_boxes_references_caption_and_scores(services):
    before, after, refs, caption, line, table, seed, link, plain_b, plain_a = app.make_pair_event(
        services, ["color", "ocr"], "photo", "77", 8)
    assert plain_b.size == plain_a.size == (64, 64)  # the tiny model's 16 px, raised to the generator's least
    assert before.size == plain_b.size and list(before.getdata()) != list(plain_b.getdata())  # boxes drawn
    assert refs.count("\n") >= 2 and isinstance(caption, str) and "CIDEr-D" in line
    assert sorted(table["change"]) == ["color", "ocr"]
    assert seed == "77" and "seed=77" in link and "types=color%2Cocr" in link
    again = app.make_pair_event(services, ["color", "ocr"], "photo", "77", 8)
    assert list(again[8].getdata()) == list(plain_b.getdata())  # the same seed, the same pair


def test_a_blank_seed_draws_a_new_one_and_shows_it(services):
    *_, seed, link, _, _ = app.make_pair_event(services, [NO_CHANGE], "render", "", 8)
    assert seed.isdigit() and f"seed={seed}" in link


@pytest.mark.parametrize("types, says", [(["color", "size", "ocr", "pose", "counting"], "at most 4"),
                                         ([NO_CHANGE, "color"], "alone")])
def test_impossible_settings_get_one_line_saying_what_to_choose(services, types, says):
    with pytest.raises(gr.Error, match=says):
        app.make_pair_event(services, types, "render", "1", 8)


def test_probe_this_pair_has_every_row_and_the_twin(services, pair_files):
    table, note = app.probe_event(services, *pair_files, 8, progress=lambda *a, **k: None)
    expected = probe_plan(services.captioner.info.mdp_layers, with_twin=True)
    assert list(table["row"]) == expected
    assert "rows in" in note and str(len(expected)) in app.probe_note(services)


def test_a_shared_link_fills_the_panel(services):
    request = SimpleNamespace(query_params={"types": "ocr,counting", "domain": "photo", "seed": "9"})
    assert app.link_settings(request) == (["ocr", "counting"], "photo", "9")
    assert app.link_settings(SimpleNamespace(query_params={})) == (gr.update(), gr.update(), gr.update())


def test_the_default_map_is_the_best_localizing_one_of_the_models_report():
    loaded = read_report(EMBEDDED_DIR / "reports" / "m3diff.json")
    single = loaded.report.run.localization.summary.per_setting["single"]
    kind, layer = best_localizing_map(loaded.report.run.localization)
    chosen = single[kind if layer is None else f"{kind}@{layer}"].pointing
    assert chosen == max(s.pointing for m, s in single.items()
                         if m == "feature_difference" or m.split("@")[0] in ("attn_eq5", "attn_eq6", "delta_norm"))
    assert kind != "attn_eq5"  # the weakest map is no longer what a visitor sees first


def test_the_real_photo_example_is_labelled_outside_the_embedded_models_training(services):
    embedded = SimpleNamespace(captioner=SimpleNamespace(info=SimpleNamespace(source="embedded")))
    real = next(e for e in app.load_examples() if e.domain not in ("render", "photo"))
    assert app.REAL_PHOTO_LABEL in app.example_label(embedded, real)
    generated = next(e for e in app.load_examples() if e.domain == "render")
    assert app.REAL_PHOTO_LABEL not in app.example_label(embedded, generated)


def test_the_knockout_panel_shows_a_study_or_says_how_to_make_one():
    table, note = knockout_view(None)
    assert note == KNOCKOUT_HOWTO and table.empty
    d = KnockoutDelta(-3.0, -5.0, -1.0, 40)
    study = KnockoutStudy("m", 40, (2, 4), 44.0, 19.0, {2: {"all": d, "color": d}, 4: {"all": d}},
                          {2: {"all": d}, 4: {"all": d}}, 100)
    table, note = knockout_view(study, "CIDEr-D")
    assert list(table["slice"]) == ["all", "color"] and "L4 off: ΔCIDEr-D" in table.columns
    assert table.loc[0, "L2 off: ΔCIDEr-D"] == "-3.0 [-5.0, -1.0]" and "40 pairs" in note


@pytest.mark.slow
def test_make_a_pair_and_probe_through_gradio_client(server, pair_files):  # noqa: F811
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    out = client.predict(["size"], "render", "5", 8, api_name="/make_pair")
    before, after, refs, caption, line, table, seed, link = out[:8]
    assert seed == "5" and "CIDEr-D" in line and table["data"][0][0] == "size"
    rows, note = client.predict(handle_file(pair_files[0]), handle_file(pair_files[1]), 8, api_name="/probe_pair")
    assert [r[0] for r in rows["data"]][:4] == ["original", "swapped", "before twice", "after re-encoded"]
    with pytest.raises(Exception, match="at most 4"):
        client.predict(["color", "size", "ocr", "pose", "counting"], "render", "1", 8, api_name="/make_pair")


def test_the_shipped_knockout_study_is_what_the_panel_shows_first():
    from webapp.experiments import KNOCKOUT_STUDY, load_knockout

    if not KNOCKOUT_STUDY.is_file():
        pytest.skip("no shipped knockout study")
    study = load_knockout(None)
    table, note = knockout_view(study, "change recall")
    assert study.layers and set(study.cider) == set(study.layers) and f"{study.n_pairs} pairs" in note
    assert [f"L{layer} off: Δchange recall" for layer in study.layers] == [c for c in table.columns if "off" in c]


def test_a_visitors_knockout_study_is_shown_as_text_and_a_hostile_one_is_one_line(tmp_path):
    """The study file is a visitor's upload: its model name is text, and a file nested past Python's
    recursion limit is refused like any malformed study, not an exception."""
    from webapp.experiments import KNOCKOUT_STUDY, ExperimentError, load_knockout

    if not KNOCKOUT_STUDY.is_file():
        pytest.skip("no shipped knockout study")
    doc = json.loads(KNOCKOUT_STUDY.read_text())
    doc["model"] = "<img src=http://example.invalid/beacon> [x](http://example.invalid)"
    path = tmp_path / "study.json"
    path.write_text(json.dumps(doc))
    _, note = knockout_view(load_knockout(str(path)))
    assert "<img" not in note and "](http" not in note and "&lt;img" in note

    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ExperimentError, match="unreadable") as err:
        load_knockout(str(path))
    assert str(tmp_path) not in str(err.value)
