"""Each published layout, written small, reads back with the right pair and reference counts;
bad input gives one clear error that names the file and the record."""
from __future__ import annotations

import json

import pytest

from m3diff.data.layout import DatasetError, read_split, write_split
from m3diff.data.readers import FORMATS, detect_format, read_dataset
from tests.data import helpers


def test_omnidiff_layout_round_trip(tmp_path):
    helpers.write_omnidiff(tmp_path)
    ds = read_dataset(tmp_path)
    assert ds.format == "omnidiff"
    assert [p.split for p in ds.pairs] == ["train"] * 3 + ["val", "test"]
    assert all(len(p.captions) == 2 and p.before.is_file() for p in ds.pairs)
    assert ds.pairs[0].change_types == ("viewpoint", "color")  # canonical order, not file order
    write_split(tmp_path / "copy.json", ds.pairs[:3], root=tmp_path)
    again = read_split(tmp_path / "copy.json", root=tmp_path)
    assert [(p.id, p.captions, p.before) for p in again] == [(p.id, p.captions, p.before) for p in ds.pairs[:3]]
    assert len(read_dataset(tmp_path, split="val").pairs) == 1


def test_spot_the_diff_merges_annotators_and_every_sentence_is_a_reference(tmp_path):
    helpers.write_spot_the_diff(tmp_path)
    ds = read_dataset(tmp_path, split="test")
    assert ds.format == "spot_the_diff"
    by_id = {p.id: p for p in ds.pairs}
    assert set(by_id) == {"256", "300"}
    assert by_id["256"].captions == ("the car is gone", "a person walked in", "there is no car")
    assert by_id["256"].extra["annotators"] == [["the car is gone", "a person walked in"], ["there is no car"]]
    assert by_id["300"].after.name == "300_2.png"
    assert len(read_dataset(tmp_path).pairs) == 4


def test_iedit_reads_valid_as_val(tmp_path):
    helpers.write_iedit(tmp_path)
    ds = read_dataset(tmp_path)
    assert ds.format == "iedit"
    assert [(p.id, len(p.captions), p.split) for p in ds.pairs] == [
        ("Reddit_1", 1, "train"), ("Reddit_2", 1, "train"), ("Reddit_3", 3, "test")]
    assert read_dataset(tmp_path, split="val").pairs == []


def test_clevr_change_semantic_and_distractor_pairs_with_types(tmp_path):
    helpers.write_clevr_change(tmp_path)
    ds = read_dataset(tmp_path, split="test")
    assert ds.format == "clevr_change"
    by_id = {p.id: p for p in ds.pairs}
    assert set(by_id) == {"sc_000003", "nsc_000003", "sc_000004", "nsc_000004"}
    assert by_id["sc_000003"].change_types == ("color",)
    assert by_id["sc_000004"].change_types == ("removal",)  # "move" maps to removal
    assert by_id["nsc_000003"].change_types == ("viewpoint", "illumination")
    assert len(by_id["sc_000003"].captions) == 3 and len(by_id["nsc_000004"].captions) == 2
    assert by_id["sc_000003"].scene == by_id["nsc_000003"].scene
    assert len(read_dataset(tmp_path).pairs) == 10


def test_clevr_dc_actions_from_id_blocks(tmp_path):
    helpers.write_clevr_dc(tmp_path)
    ds = read_dataset(tmp_path)
    assert ds.format == "clevr_dc"
    types = {p.id: p.change_types for p in ds.pairs}
    assert types["1"] == ("viewpoint", "color")
    assert types["16002"] == ("viewpoint", "addition")
    assert types["40003"] == ("viewpoint",)  # the sixth block: "nothing"
    assert {p.split for p in ds.pairs} == {"train", "val", "test"}


def test_birds_to_words_groups_descriptions_per_image_pair(tmp_path):
    path = helpers.write_birds(tmp_path)
    ds = read_dataset(tmp_path, images="optional")
    assert ds.format == "birds_to_words"
    assert sorted(len(p.captions) for p in ds.pairs) == [1, 2]
    assert len(ds.missing_images) == 4  # URLs without local copies: reported, not fatal
    assert read_dataset(path, split="test", images="optional").pairs[0].extra["species"] == ["sparrow", "wren"]
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path)


def test_detection_and_unknown_format(tmp_path):
    for name, writer in (("spot_the_diff", helpers.write_spot_the_diff), ("iedit", helpers.write_iedit),
                         ("clevr_change", helpers.write_clevr_change), ("clevr_dc", helpers.write_clevr_dc),
                         ("omnidiff", helpers.write_omnidiff)):
        root = tmp_path / name
        writer(root)
        assert detect_format(root) == name
        assert read_dataset(root, format=name).format == name
    with pytest.raises(ValueError, match="unknown dataset format 'coco'.*omnidiff"):
        read_dataset(tmp_path / "iedit", format="coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        read_dataset(tmp_path / "empty")
    assert set(FORMATS) == {"omnidiff", "spot_the_diff", "iedit", "clevr_change", "clevr_dc", "birds_to_words", "card"}


def test_bad_json_names_the_file_and_position(tmp_path):
    helpers.write_omnidiff(tmp_path)
    (tmp_path / "val.json").write_text('[{"id": "x",]')
    with pytest.raises(DatasetError) as e:
        read_dataset(tmp_path)
    assert "val.json" in str(e.value) and "not valid JSON (line 1" in str(e.value)


def test_duplicate_ids_are_one_clear_error(tmp_path):
    helpers.write_omnidiff(tmp_path)
    recs = json.loads((tmp_path / "train.json").read_text())
    recs[2]["id"] = recs[0]["id"]
    (tmp_path / "train.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match=r"train.json, record #2 \(id 'p0'\): duplicate id, first used by record #0"):
        read_dataset(tmp_path)


def test_duplicate_ids_across_splits(tmp_path):
    helpers.write_omnidiff(tmp_path)
    recs = json.loads((tmp_path / "test.json").read_text())
    recs[0]["id"] = "p0"
    (tmp_path / "test.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match="duplicate id, also in train.json"):
        read_dataset(tmp_path)


@pytest.mark.parametrize("field,value,message", [
    ("captions", [], "'captions' must be a non-empty list"),
    ("change_types", ["colour"], r"unknown change type\(s\) \['colour'\]"),
    ("id", 7, "'id' must be a non-empty string"),
])
def test_invalid_records_name_record_and_fault(tmp_path, field, value, message):
    helpers.write_omnidiff(tmp_path)
    recs = json.loads((tmp_path / "train.json").read_text())
    recs[1][field] = value
    (tmp_path / "train.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match=message) as e:
        read_dataset(tmp_path)
    assert "train.json, record #1" in str(e.value)


def test_missing_key_and_missing_file(tmp_path):
    helpers.write_omnidiff(tmp_path)
    recs = json.loads((tmp_path / "train.json").read_text())
    del recs[0]["scene"]
    (tmp_path / "train.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match="missing key"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DatasetError, match=r"annotations/test.json: no such file"):
        read_dataset(tmp_path, format="spot_the_diff", split="test")


def test_missing_images_fatal_unless_annotations_only(tmp_path):
    helpers.write_omnidiff(tmp_path, images=False)
    with pytest.raises(DatasetError, match=r"record #0 \(id 'p0'\): image .*p0_a.png does not exist"):
        read_dataset(tmp_path)
    ds = read_dataset(tmp_path, images="optional")
    assert len(ds.pairs) == 5 and len(ds.missing_images) == 10
    assert ds.pairs[0].before is None
