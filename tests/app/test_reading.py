"""The Describe tab's "What the model read": the change reader's facts as a list beside the caption and as
boxes on the pair, in one colour per type; a reader-less model's one-line reason; the /describe JSON;
the same through the model's own process."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import app
from m3diff.change_types import TYPE_IDS
from m3diff.describing import GenerationSettings
from m3diff.facts import ChangeFact, ChangeReading, ObjectFact
from m3diff.overlay import TYPE_COLOURS, draw_changes, drawing_scale, type_colour_hex
from webapp.reading import NO_READER, change_line, new_value
from webapp.visitor import reply_problems

SHORT = GenerationSettings(max_new_tokens=4)


def _cube(color: str, h: str = "left", **kw) -> ObjectFact:
    return ObjectFact("cube", color, "small", h, "front", **kw)


def _reading(size=(100, 80)) -> ChangeReading:
    """Two changes with boxes far apart (before and after), an addition (after only) and a camera change."""
    return ChangeReading((
        ChangeFact("color", _cube("red"), _cube("blue"), box_before=(10, 40, 40, 70), box_after=(10, 40, 40, 70),
                   confidence=0.93),
        ChangeFact("addition", None, ObjectFact("sign", "green", "large", "right", "back", text="OPEN"),
                   box_after=(60, 20, 90, 50), confidence=0.71),
        ChangeFact("viewpoint", detail="side=left distance=closer", confidence=0.6),
    ), size)


def _items(html: str) -> list[tuple[str, str, str]]:
    """(data-type, swatch colour, text) of each line of the list."""
    return re.findall(r'<li data-type="([^"]+)"><span class="read-swatch" style="[^"]*background:(#[0-9a-f]{6})">'
                      r"</span>(.*?)</li>", html)


def test_every_type_has_its_own_colour():
    assert set(TYPE_COLOURS) == set(TYPE_IDS)
    assert len(set(TYPE_COLOURS.values())) == len(TYPE_IDS)


def test_each_read_box_is_drawn_where_its_fact_says_in_its_type_colour():
    grey = (128, 128, 128)
    before, after = Image.new("RGB", (100, 80), grey), Image.new("RGB", (200, 160), grey)
    shown = app.Shown(before, after, changes=_reading())
    view = app.read_changes_view(shown)
    k = drawing_scale(before.size)
    assert view.before.size == (round(100 * k), round(80 * k))  # a small upload is enlarged for its labels
    b = np.asarray(view.before)
    # the colour change: its outline on the box's left edge (middle height), its inside untouched
    assert tuple(b[round(55 * k), round(10 * k) + 1]) == TYPE_COLOURS["color"]
    assert tuple(b[round(55 * k), round(25 * k)]) == grey
    # the addition has no before box: nothing where its after box is; labelled above its box in the after
    assert (b[round(20 * k): round(50 * k), round(60 * k): round(90 * k)] == grey).all()
    # the after image is twice the size: boxes are fractions of their image, so they scale with it
    a = np.asarray(view.after)
    ka = view.after.width / 100
    assert tuple(a[round(35 * ka), round(60 * ka) + 1]) == TYPE_COLOURS["addition"]
    assert tuple(a[round(55 * ka), round(10 * ka) + 1]) == TYPE_COLOURS["color"]
    above = a[: round(20 * ka), round(60 * ka): round(90 * ka)]
    assert (above == TYPE_COLOURS["addition"]).all(-1).sum() > 50  # its type label's fill
    # the camera change has no box, and far from every box the images are untouched
    assert tuple(b[-3, -3]) == grey and tuple(a[-3, -3]) == grey


def test_the_list_says_each_change_in_its_type_colour_and_what_it_became():
    view = app.read_changes_view(app.Shown(Image.new("RGB", (100, 80)), Image.new("RGB", (100, 80)),
                                           changes=_reading()))
    items = _items(view.html)
    assert [t for t, _, _ in items] == ["color", "addition", "viewpoint"]
    assert all(colour == type_colour_hex(t) for t, colour, _ in items)
    color, addition, viewpoint = (text for _, _, text in items)
    assert "small red cube at left front → small blue cube at left front" in color
    assert "new value: blue" in color and "confidence 93%" in color
    assert "(nothing) → large green sign at right back reading OPEN" in addition and "confidence 71%" in addition
    # a camera change beside a semantic one is read but not handed to the language model (facts.said)
    assert "side left, distance closer" in viewpoint and "not given to the language model" in viewpoint
    assert "3 changes" in view.html


@pytest.mark.parametrize("fact, value", [
    (ChangeFact("counting", _cube("red"), _cube("red"), n_before=2, n_after=4), "2 → 4"),
    (ChangeFact("ocr", ObjectFact("sign", "red", text="OPEN"), ObjectFact("sign", "red", text="SALE")), "SALE"),
    (ChangeFact("orientation", ObjectFact("arrow", "red", direction="left"), ObjectFact("arrow", "red", direction="front_left")),
     "front left"),
    (ChangeFact("removal", _cube("red"), _cube("red", h="right")), "right front"),
    (ChangeFact("substitution", _cube("red"), ObjectFact("ball", "red")), "ball"),
    (ChangeFact("illumination", detail="light=darker tint=warmer"), "light darker, tint warmer"),
    (ChangeFact("disappearance", _cube("red")), ""),
])
def test_new_value_says_what_the_change_made_of_the_object(fact, value):
    assert new_value(fact) == value
    assert (f"new value: {value}" in change_line(fact)) == bool(value)


def test_a_read_value_is_shown_as_text_never_as_markup():
    hostile = ChangeReading((ChangeFact("ocr", ObjectFact("sign", "red", text="OPEN"),
                                        ObjectFact("sign", "red", text='<img src=x onerror="alert(1)">')),), (64, 64))
    html = app.read_changes_view(app.Shown(Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64)),
                                           changes=hostile)).html
    assert "&lt;img src=x" in html and not reply_problems(html)


def test_a_lone_camera_change_is_what_the_language_model_is_given():
    alone = ChangeReading((ChangeFact("illumination", detail="light=brighter", confidence=0.8),), (64, 64))
    view = app.read_changes_view(app.Shown(Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64)), changes=alone))
    (_, _, text), = _items(view.html)
    assert "not given" not in text and "1 change " in view.html


def test_nothing_read_is_said_and_nothing_is_drawn():
    plain = Image.new("RGB", (64, 64), (9, 9, 9))
    view = app.read_changes_view(app.Shown(plain, plain, changes=ChangeReading((), (64, 64), 0.5)))
    assert "read no change" in view.html and "50%" in view.html and not _items(view.html)
    assert np.unique(np.asarray(view.before).reshape(-1, 3), axis=0).tolist() == [[9, 9, 9]]


# ---------------------------------------------------------------------------- with a model
def _stream_outputs(services, pair_files):
    """The Describe button's events as the served app runs them: the first yield, and all of them, as
    {elem_id: value} of the wired callback (app.build_app's describe_stream)."""
    demo = app.build_app(services)
    fn = next(d for d in demo.fns.values() if d.api_name == "describe_stream")
    by_id = {b._id: b for b in demo.blocks.values()}
    kind = next(b for b in by_id.values() if getattr(b, "elem_id", None) == "map-kind")
    layer = next(b for b in by_id.values() if getattr(b, "elem_id", None) == "layer")
    outputs = list(fn.fn(*pair_files, layer.value, kind.value, 4, False))
    return demo, [{getattr(c, "elem_id", None) or c._id: v for c, v in out.items()} for out in outputs]


def test_a_reader_model_shows_what_it_read_from_the_first_partial_caption(reader_services, reader_captioner,
                                                                          pair_files):
    demo, outputs = _stream_outputs(reader_services, pair_files)
    first = outputs[0]
    assert {"read-changes", "read-before", "read-after"} <= set(first)  # with the first token, not at the end
    reading = reader_captioner.describe(*pair_files, settings=SHORT).changes
    assert reading.changes, "the tiny random reader reads changes at threshold 0.5"
    items = _items(first["read-changes"])
    assert [t for t, _, _ in items] == [c.type for c in reading.changes]
    for (_, colour, text), fact in zip(items, reading.changes):
        assert colour == type_colour_hex(fact.type) and f"confidence {fact.confidence:.0%}" in text
    # the boxes drawn are the facts': every pixel the drawing changed lies around the facts' boxes (their
    # outline, or a type label just above or below), and something was drawn
    before = Image.open(pair_files[0]).convert("RGB")
    drawn = np.asarray(first["read-before"]).astype(int)
    plain = np.asarray(before.resize(first["read-before"].size, Image.Resampling.LANCZOS)).astype(int)
    changed = np.argwhere((drawn != plain).any(-1))
    k = first["read-before"].width / reading.size[0]
    boxes = np.array([c.box_before for c in reading.changes if c.box_before is not None]) * k
    assert len(changed) > 0 and len(boxes)
    label_h, label_w, rim = 30, 130, 6  # a label is one line of ~13 px type, at most "disappearance" wide
    assert changed[:, 0].min() >= boxes[:, 1].min() - rim - label_h
    assert changed[:, 0].max() <= boxes[:, 3].max() + rim + label_h
    assert changed[:, 1].min() >= boxes[:, 0].min() - rim
    assert changed[:, 1].max() <= max(boxes[:, 2].max(), boxes[:, 0].max() + label_w) + rim
    # the picture row is shown for a reader model, and the model card says it reads changes
    row = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "read-before")
    assert all(getattr(p, "visible", True) for p in _parents(row))
    assert "**Change reader**: yes" in app.model_card(reader_captioner)


def _parents(block):
    while block is not None:
        yield block
        block = getattr(block, "parent", None)


def test_a_model_without_a_reader_says_why_in_one_line(services, pair_files):
    demo, outputs = _stream_outputs(services, pair_files)
    first = outputs[0]
    assert NO_READER in first["read-changes"] and first["read-changes"].count("<p") == 1
    assert first["read-before"] is None and first["read-after"] is None
    assert outputs[-1]  # the stream went on to the end
    # laid out so before any describe: the line, and no empty picture boxes
    panel = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "read-changes")
    assert NO_READER in panel.value
    picture = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "read-before")
    assert not all(getattr(p, "visible", True) for p in _parents(picture))
    assert app.describe_api(services, *pair_files, 4)[2] is None
    assert "**Change reader**: none" in app.model_card(services.captioner)


def test_describe_api_carries_what_the_reader_read(reader_services, reader_captioner, pair_files):
    caption, scores, changes = app.describe_api(reader_services, *pair_files, 4)
    want = reader_captioner.describe(*pair_files, settings=SHORT)
    assert caption == want.caption and changes == want.changes.to_json()
    assert changes["size"] == [64, 48] and changes["threshold"] == 0.5
    back = [ChangeFact.from_json(c) for c in changes["changes"]]
    assert [c.type for c in back] == [c.type for c in want.changes.changes]
    assert all(c.box_before is None or len(c.box_before) == 4 for c in back)


@pytest.mark.slow
def test_what_the_model_read_crosses_from_the_models_own_process(reader_captioner, pair_files, tmp_path):
    """The app's default: the model in a process of its own. The reading comes back whole (a ChangeReading,
    not its JSON), the panel is laid out for it, and /describe's JSON carries it."""
    from m3diff.remote import RemoteCaptioner

    reader_captioner.save_pretrained(tmp_path / "model")
    remote = RemoteCaptioner.start(tmp_path / "model", device="cpu")
    try:
        assert remote.reads_changes and remote.info.reads_changes
        services = app.Services(remote, None, {}, "", app.AppConfig(max_new_tokens=4))
        local = reader_captioner.describe(*pair_files, settings=SHORT).changes
        (_, _, shown), *_ = app.describe_events(services, *pair_files, 4)
        assert isinstance(shown.changes, ChangeReading) and shown.changes.size == local.size
        assert [c.type for c in shown.changes.changes] == [c.type for c in local.changes]
        for got, want in zip(shown.changes.changes, local.changes):
            assert got.box_before == pytest.approx(want.box_before, abs=0.5) if want.box_before else got.box_before is None
        view = app.read_changes_view(shown)
        assert len(_items(view.html)) == len(local.changes) and view.before is not None
        _, _, changes = app.describe_api(services, *pair_files, 4)
        assert [c["type"] for c in changes["changes"]] == [c.type for c in local.changes]
    finally:
        remote.close()
