"""Small files in each published layout (PAPER.md §9), written the way their authors ship them."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def png(path: Path, colour=(128, 128, 128), size=8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def write_omnidiff(root: Path, n_per_split=(3, 1, 1), images=True) -> None:
    k = 0
    for split, n in zip(("train", "val", "test"), n_per_split):
        recs = []
        for _ in range(n):
            rid = f"p{k}"
            recs.append({"id": rid, "before": f"images/{rid}_a.png", "after": f"images/{rid}_b.png",
                         "captions": [f"the red cube {k} moved to the left.", "a red cube moved. it is on the left now."],
                         "change_types": ["removal"] if k % 2 else ["color", "viewpoint"],
                         "domain": "real", "scene": f"scene{k}"})
            if images:
                png(root / f"images/{rid}_a.png")
                png(root / f"images/{rid}_b.png")
            k += 1
        (root / f"{split}.json").write_text(json.dumps(recs))


def write_spot_the_diff(root: Path) -> None:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    # img_id 256 has two annotators (merged); 300 has one with two sentences.
    test = [{"img_id": "256", "sentences": ["the car is gone", "a person walked in"]},
            {"img_id": "300", "sentences": ["the truck moved", "the bike is gone"]},
            {"img_id": "256", "sentences": ["there is no car"]}]
    (ann / "test.json").write_text(json.dumps(test))
    (ann / "train.json").write_text(json.dumps([{"img_id": "1", "sentences": ["a van appeared"]}]))
    (ann / "val.json").write_text(json.dumps([{"img_id": "2", "sentences": ["a man left"]}]))
    for i in ("256", "300", "1", "2"):
        png(root / f"resized_images/{i}.png")
        png(root / f"resized_images/{i}_2.png")


def write_iedit(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tr = [{"img0": "a0.jpg", "img1": "a1.jpg", "sents": ["make it brighter"], "uid": "Reddit_1"},
          {"img0": "b0.jpg", "img1": "b1.jpg", "sents": ["remove the dog"], "uid": "Reddit_2"}]
    te = [{"img0": "c0.jpg", "img1": "c1.jpg", "sents": ["crop it", "zoom in", "crop the picture"], "uid": "Reddit_3"}]
    (root / "train.json").write_text(json.dumps(tr))
    (root / "valid.json").write_text(json.dumps([]))
    (root / "test.json").write_text(json.dumps(te))
    for n in ("a0", "a1", "b0", "b1", "c0", "c1"):
        png(root / "images" / f"{n}.jpg")


def write_clevr_change(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ids = {"train": [0, 1], "val": [2], "test": [3, 4]}
    (root / "splits.json").write_text(json.dumps(ids))
    change, no_change = {}, {}
    for i in range(5):
        key = f"CLEVR_default_{i:06d}.png"
        change[key] = [f"the cube {i} changed color", f"a cube {i} became red", f"the color of cube {i} changed"]
        no_change[key] = ["no change was made", "nothing changed"]
        png(root / "images" / key)
        png(root / "sc_images" / f"CLEVR_semantic_{i:06d}.png")
        png(root / "nsc_images" / f"CLEVR_nonsemantic_{i:06d}.png")
    (root / "change_captions.json").write_text(json.dumps(change))
    (root / "no_change_captions.json").write_text(json.dumps(no_change))
    (root / "type_mapping.json").write_text(json.dumps({"color": ["000003.png"], "move": ["000004.png"],
                                                        "material": [], "add": [], "drop": []}))


def write_clevr_dc(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ids = {"train": [1, 8001], "val": [16002], "test": [40003]}
    (root / "split.json").write_text(json.dumps(ids))
    caps = {str(i): [f"change {i} a", f"change {i} b"] for i in (1, 8001, 16002, 40003)}
    (root / "captions.json").write_text(json.dumps(caps))
    for i in caps:
        png(root / "bef" / f"{i}.png")
        png(root / "aft" / f"{i}.png")


BIRDS_HEADER = ("img1ObservationURL\timg1ImgURL\timg1Species\timg1Selection\timg2ObservationURL\timg2ImgURL\t"
                "img2Species\timg2Selection\tsplit\tannN\tdescription")


def write_birds(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [BIRDS_HEADER]
    for ann, desc in ((0, "animal1 has a longer beak than animal2."), (1, "animal2 is browner.")):
        rows.append(f"http://o/1\thttp://i/a.jpg\tsparrow\t1\thttp://o/2\thttp://i/b.jpg\twren\t1\ttest\t{ann}\t{desc}")
    rows.append("http://o/3\thttp://i/c.jpg\tcrow\t1\thttp://o/4\thttp://i/d.jpg\tjay\t1\ttrain\t0\tanimal1 is black.")
    path = root / "birds-to-words-v1.0.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path
