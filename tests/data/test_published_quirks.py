"""Each reader against the quirks of its dataset as the authors published it (docs/data.md, "Quirks"),
and image paths that try to leave the dataset folder. The fixtures are written here, in the published
shapes; no published file is copied."""
from __future__ import annotations

import json
import os

import pytest

from m3diff.cli import main
from m3diff.data.layout import DatasetError
from m3diff.data.readers import read_dataset
from tests.data import helpers


# ------------------------------------------------------------------ Spot-the-Diff: empty sentences
def _spot_with_empty_sentences(root):
    """annotations/test.json as published: one record per annotator, an img_id repeated, and annotators
    whose only sentence is "" (the published test.json holds {"img_id": "9420", "sentences": [""]})."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    test = [{"img_id": "256", "sentences": ["person with umbrella is gone", "car up at top is now missing"]},
            {"img_id": "9420", "sentences": [""]},
            {"img_id": "294", "sentences": ["there is a red car that is not in the left image"]},
            {"img_id": "256", "sentences": [""]},
            {"img_id": "256", "sentences": ["the person with the red coat moved"]},
            {"img_id": "9420", "sentences": ["", " "]}]
    (ann / "test.json").write_text(json.dumps(test))
    for i in ("256", "294", "9420"):
        helpers.png(root / f"resized_images/{i}.png")
        helpers.png(root / f"resized_images/{i}_2.png")


def test_spot_the_diff_keeps_a_pair_whose_sentences_are_all_empty_with_one_empty_reference(tmp_path):
    """The authors' own evaluation files (DDLA's ground truth, FINER-MLLM's COCO references, CARD's splits)
    keep such pairs with a "" reference: the published test set is 1,270 pairs and 2,107 references."""
    _spot_with_empty_sentences(tmp_path)
    ds = read_dataset(tmp_path, format="spot_the_diff", split="test")
    by_id = {p.id: p for p in ds.pairs}
    assert sorted(by_id) == ["256", "294", "9420"]
    assert by_id["9420"].captions == ("",) and by_id["9420"].extra["annotators"] == []
    # every record of an img_id merged, the empty sentence dropped
    assert by_id["256"].captions == ("person with umbrella is gone", "car up at top is now missing",
                                     "the person with the red coat moved")
    assert by_id["256"].extra["annotators"] == [["person with umbrella is gone", "car up at top is now missing"],
                                                ["the person with the red coat moved"]]
    assert ds.empty_reference_pairs == ["9420"]
    assert any("9420" in n for n in ds.notes())


def test_data_stats_on_spot_the_diff_counts_the_pairs_with_only_empty_references(tmp_path, capsys):
    _spot_with_empty_sentences(tmp_path)
    assert main(["data", "stats", str(tmp_path), "--format", "spot-the-diff", "--split", "test", "--json"]) == 0
    out, err = capsys.readouterr()
    st = json.loads(out)
    assert st["pairs"] == 3 and st["captions"] == 5 and st["empty_reference_pairs"] == 1
    assert "9420" in err and "warning" in err
    assert main(["data", "stats", str(tmp_path), "--format", "spot-the-diff", "--split", "test"]) == 0
    assert "only empty references  1" in capsys.readouterr().out


def test_the_training_mixture_leaves_empty_references_out(tmp_path):
    from m3diff.data.mixture import MixSource, build_mixture

    _spot_with_empty_sentences(tmp_path)
    ds = read_dataset(tmp_path, format="spot_the_diff", split="test")
    samples = build_mixture([(MixSource(tmp_path, "spot_the_diff", 1.0), ds)], every_caption=True)
    assert {s["id"].split("#")[0] for s in samples} == {"spot_the_diff/256", "spot_the_diff/294"}
    assert all(s["answer"].strip() for s in samples)


# ------------------------------------------------------------------ image paths that leave the folder
def _omnidiff_with_path(root, before):
    root.mkdir(parents=True, exist_ok=True)
    helpers.write_omnidiff(root, n_per_split=(0, 0, 1))
    recs = json.loads((root / "test.json").read_text())
    recs[0]["before"] = before
    (root / "test.json").write_text(json.dumps(recs))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "passwd"])
def test_image_paths_outside_the_dataset_folder_are_refused_unless_allowed(tmp_path, kind):
    root = tmp_path / "data" / "set"
    outside = tmp_path / "elsewhere" / "x.png"
    helpers.png(outside)
    before = {"absolute": str(outside), "dotdot": "../../elsewhere/x.png", "symlink": "images/link.png",
              "passwd": "../../../../../../../../etc/passwd"}[kind]
    _omnidiff_with_path(root, before)
    if kind == "symlink":
        os.symlink(outside, root / "images" / "link.png")
    with pytest.raises(DatasetError, match="leads outside the dataset folder.*--allow-outside-root") as exc:
        read_dataset(root, split="test")
    assert "test.json" in str(exc.value) and "'p0'" in str(exc.value)
    # refused before looking at the file: the message is the same whether or not the file exists
    assert "does not exist" not in str(exc.value)
    if kind == "passwd":
        return
    ds = read_dataset(root, split="test", allow_outside=True)
    assert ds.pairs[0].before is not None and len(ds.outside_images) == 1
    assert "outside the dataset folder" in ds.notes()[0]


def test_cli_refuses_outside_paths_in_one_line_and_says_once_when_allowed(tmp_path, capsys):
    root = tmp_path / "set"
    helpers.png(tmp_path / "x.png")
    _omnidiff_with_path(root, "../x.png")
    assert main(["data", "stats", str(root), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leads outside the dataset folder" in err
    assert main(["data", "stats", str(root), "--split", "test", "--allow-outside-root"]) == 0
    err = capsys.readouterr().err
    assert err.count("outside the dataset folder") == 1


def test_inside_paths_through_dotdot_are_fine(tmp_path):
    root = tmp_path / "set"
    _omnidiff_with_path(root, "images/../images/p0_a.png")
    assert read_dataset(root, split="test").pairs[0].before.is_file()


# ------------------------------------------------------------------ IEdit
def test_iedit_as_published_repeated_pairs_mixed_extensions_and_an_empty_request(tmp_path):
    """The published test.json: one record per uid; the same (img0, img1) under two uids, .jpg/.png/.gif
    files, requests with trailing spaces and open quotes."""
    tmp_path.mkdir(exist_ok=True)
    te = [{"img0": "Reddit.com_5qc6xh_5qc6xh.jpg", "img1": "Reddit.com_5qc6xh_dcy3qw5.jpg",
           "sents": ["add middle finger emoji to nose", "Insert the hand onto the nose",
                     "add a middle finger on boy's nose, increase the image contrast"], "uid": "Reddit_1409"},
          {"img0": "Reddit.com_5qc6xh_5qc6xh.jpg", "img1": "Reddit.com_5qc6xh_dcy3qw5.jpg",
           "sents": ["Put a hand with a middle finger here on his nose", "Insert the hand onto the nose",
                     "add a middle finger on boy's nose "], "uid": "Reddit_1444"},
          {"img0": "Reddit.com_46op9g_46op9g.gif", "img1": "Reddit.com_46op9g_SOURCE_1_16.gif",
           "sents": ["rotate the coin", "Add text \"Pool Party", "brighten "], "uid": "Reddit_1340"},
          {"img0": "Reddit.com_5eooy0_5eooy0.jpg", "img1": "Reddit.com_5eooy0_dae04k7.png",
           "sents": ["", " "], "uid": "Reddit_1085"}]
    (tmp_path / "test.json").write_text(json.dumps(te, indent=4))
    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "valid.json").write_text("[]")
    for rec in te:
        for key in ("img0", "img1"):
            helpers.png(tmp_path / "images" / rec[key])
    ds = read_dataset(tmp_path, split="test")
    assert [p.id for p in ds.pairs] == ["Reddit_1409", "Reddit_1444", "Reddit_1340", "Reddit_1085"]
    assert ds.pairs[0].before == ds.pairs[1].before
    assert ds.pairs[1].captions[-1] == "add a middle finger on boy's nose"
    assert ds.pairs[3].captions == ("",) and ds.empty_reference_pairs == ["Reddit_1085"]


# ------------------------------------------------------------------ CLEVR-Change: the authors' ids
def test_clevr_change_pairs_carry_the_authors_coco_ids(tmp_path):
    helpers.write_clevr_change(tmp_path)
    ds = read_dataset(tmp_path, split="test")
    aliases = {p.id: p.extra["aliases"] for p in ds.pairs}
    assert aliases["sc_000003"] == ["000003.png"] and aliases["nsc_000003"] == ["000003.png_n"]


def test_predictions_in_the_authors_clevr_change_naming_are_scored_as_ours(tmp_path):
    """RobustChangeCaptioning's test.py writes sc_results.json / nsc_results.json as COCO results whose
    image ids are '%06d.png' and '%06d.png_n'."""
    from analysis.inputs import align, load_references, parse_predictions

    helpers.write_clevr_change(tmp_path)
    pairs = load_references(tmp_path, split="test")
    sc = [{"caption": f"the cube {n} changed color", "image_id": f"{n:06d}.png"} for n in (3, 4)]
    nsc = [{"caption": "nothing changed", "image_id": f"{n:06d}.png_n"} for n in (3, 4)]
    al = align(parse_predictions(sc + nsc), pairs)
    assert al.ids == ["sc_000003", "nsc_000003", "sc_000004", "nsc_000004"]
    assert al.hyps[1] == "nothing changed"
    # the semantic results alone: the distractor pairs are named as missing, as any mismatch is
    with pytest.raises(ValueError, match="reference id.*without a prediction.*nsc_000003"):
        align(parse_predictions(sc), pairs)


# ------------------------------------------------------------------ Birds-to-Words: iNaturalist URLs
def test_birds_to_words_local_copies_follow_the_url_path_not_the_shared_file_name(tmp_path):
    """iNaturalist image URLs all end in medium.jpg (sometimes with ?timestamp): the file name alone
    would give every pair the same picture."""
    rows = [helpers.BIRDS_HEADER]
    urls = {}
    for k, photo in enumerate(("647514", "5595152", "3890846", "61482854")):
        urls[k] = f"https://static.inaturalist.org/photos/{photo}/medium.jpg" + ("?1545888541" if k == 2 else "")
    rows.append(f"https://www.inaturalist.org/photos/647514\t{urls[0]}\tsp1\tbase\t"
                f"https://www.inaturalist.org/photos/5595152\t{urls[1]}\tsp2\tvisual\ttest\t1\tAnimal 1 is brown.")
    rows.append(f"https://www.inaturalist.org/photos/3890846\t{urls[2]}\tsp3\tbase\t"
                f"https://www.inaturalist.org/photos/61482854\t{urls[3]}\tsp4\tsameGenus\ttest\t1\tAnimal 2 is blue.")
    (tmp_path / "birds-to-words-v1.0.tsv").write_text("\n".join(rows) + "\n")
    for photo, colour in (("647514", 10), ("5595152", 60), ("3890846", 120), ("61482854", 200)):
        helpers.png(tmp_path / "images" / "photos" / photo / "medium.jpg", colour=(colour,) * 3)
    ds = read_dataset(tmp_path, split="test")
    images = [p.before for p in ds.pairs] + [p.after for p in ds.pairs]
    assert len(set(images)) == 4
    assert ds.pairs[1].before == tmp_path / "images" / "photos" / "3890846" / "medium.jpg"


# ------------------------------------------------------------------ CARD's multi-change Spot-the-Diff
def _card(root):
    """CARD's files: change_multi_captions.json, a dict from a pair's image name to one caption (some
    empty: 48 in the published file), and splits.json with each split's pair ids."""
    root.mkdir(parents=True, exist_ok=True)
    caps = {"256.png": "the person with umbrella is gone . the car up at top is now missing",
            "294.png": "there is a red car that is not in the left image", "9420.png": "",
            "31.png": "the white van has moved"}
    (root / "change_multi_captions.json").write_text(json.dumps(caps))
    (root / "splits.json").write_text(json.dumps({"train": [31], "val": [], "test": [256, 294, 9420]}))
    return caps


def test_card_multi_change_captions_read_as_a_dataset_with_their_splits(tmp_path, capsys):
    _card(tmp_path)
    ds = read_dataset(tmp_path, split="test", images="optional")
    assert ds.format == "card"
    assert [p.id for p in ds.pairs] == ["256", "294", "9420"]
    assert ds.pairs[2].captions == ("",) and ds.empty_reference_pairs == ["9420"]
    assert [p.id for p in read_dataset(tmp_path, split="train", images="optional").pairs] == ["31"]
    assert main(["data", "stats", str(tmp_path), "--split", "test", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["format"] == "card" and st["pairs"] == 3 and st["empty_reference_pairs"] == 1


def test_card_captions_as_references_of_eval(tmp_path, capsys):
    pytest.importorskip("pycocoevalcap")
    _card(tmp_path)
    preds = tmp_path / "pred.json"
    preds.write_text(json.dumps([{"image_id": i, "caption": "the car is gone"} for i in ("256", "294", "9420")]))
    code = main(["eval", "--pred", str(preds), "--refs", str(tmp_path / "change_multi_captions.json"),
                 "--split", "test", "--json", "--bootstrap", "0", "--no-meteor"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["overall"]["n"] == 3


def test_card_split_without_its_splits_file_names_the_file(tmp_path):
    _card(tmp_path)
    (tmp_path / "splits.json").unlink()
    with pytest.raises(DatasetError, match="splits.json.*split 'test' needs"):
        read_dataset(tmp_path, split="test", images="optional")
    assert len(read_dataset(tmp_path, images="optional").pairs) == 4  # no split asked: every pair
