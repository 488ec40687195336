"""Make a pair: one generated pair with the change types a person chose (m3diff.data.synth.chosen)."""
import io

import numpy as np
import pytest

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.chosen import NO_CHANGE, ImpossiblePair, PairRequest, make_pair

SEMANTIC = [t for t in TYPE_IDS if t not in DISTRACTORS]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_same_request_gives_the_same_pair_byte_for_byte():
    request = PairRequest(("color", "ocr", "illumination"), "photo", seed=123, size=96)
    a, b = make_pair(request), make_pair(request)
    assert _png(a.before) == _png(b.before) and _png(a.after) == _png(b.after)
    assert a.record == b.record
    other = make_pair(PairRequest(("color", "ocr", "illumination"), "photo", seed=124, size=96))
    assert _png(other.before) != _png(a.before)


@pytest.mark.parametrize("domain", ["render", "photo"])
@pytest.mark.parametrize("type_", TYPE_IDS)
def test_a_made_pair_has_exactly_the_chosen_type_at_the_chosen_size(domain, type_):
    made = make_pair(PairRequest((type_,), domain, seed=5, size=64))
    assert made.record["change_types"] == [type_]
    assert made.before.size == made.after.size == (64, 64)
    assert len(made.references) == 3 and all(made.references)


@pytest.mark.parametrize("domain", ["render", "photo"])
@pytest.mark.parametrize("type_", SEMANTIC)
def test_true_boxes_land_on_the_changed_objects(domain, type_):
    """Every pixel that changed lies inside the change's boxes, and every box holds changed pixels."""
    made = make_pair(PairRequest((type_,), domain, seed=2))
    changed = np.abs(np.asarray(made.after, np.int16) - np.asarray(made.before, np.int16)).max(-1) > 40
    assert changed.sum() > 20
    inside = np.zeros_like(changed)
    for _, *boxes in made.boxes:
        for box in filter(None, boxes):
            x0, y0, x1, y1 = box
            region = np.zeros_like(changed)
            region[max(0, y0 - 2):y1 + 3, max(0, x0 - 2):x1 + 3] = True
            assert changed[region].any(), f"{type_}: nothing changed inside the true box {box}"
            inside |= region
    assert not changed[~inside].any(), f"{type_}: {int(changed[~inside].sum())} changed pixels outside every box"


def test_no_change_gives_the_same_scene_with_no_change_references():
    made = make_pair(PairRequest((NO_CHANGE,), "render", seed=9))
    assert made.record["change_types"] == [] and made.boxes == []
    diff = np.abs(np.asarray(made.after, np.int16) - np.asarray(made.before, np.int16))
    assert diff.max() < 40  # identical, re-encoded or faint noise: no object changed


@pytest.mark.parametrize("request_kwargs, says", [
    (dict(types=("color", "size", "ocr", "pose", "counting")), "at most 4"),
    (dict(types=("colour",)), "choose from"),
    (dict(types=(NO_CHANGE, "color")), "alone"),
    (dict(types=("color",), domain="sketch"), "render or photo"),
    (dict(types=("color",), size=32), "64 to 512"),
])
def test_impossible_settings_say_why_and_what_to_choose_in_one_line(request_kwargs, says):
    with pytest.raises(ImpossiblePair, match=says) as info:
        PairRequest(**request_kwargs)
    assert "\n" not in str(info.value)
