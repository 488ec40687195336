"""The generator: deterministic, split by scene, every type in every split, and every change
really in the pixels."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.readers import read_dataset
from m3diff.data.stats import compute_stats, words
from m3diff.data.synth.generator import SynthConfig, Worker, generate, split_position


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    counts = generate(SynthConfig(seed=3, pairs=130, size=64), root, workers=1, progress=False)
    return root, counts


def test_same_seed_same_bytes_for_any_worker_count(small_set, tmp_path):
    root, _ = small_set
    generate(SynthConfig(seed=3, pairs=130, size=64), tmp_path / "b", workers=2, progress=False)
    assert _digest(root) == _digest(tmp_path / "b")
    generate(SynthConfig(seed=4, pairs=20, size=64), tmp_path / "c", workers=1, progress=False)
    first = json.loads((tmp_path / "c" / "train.json").read_text())[0]
    assert first["captions"] != json.loads((root / "train.json").read_text())[0]["captions"]


def test_splits_8_1_1_share_no_scene_and_hold_every_type(small_set):
    root, counts = small_set
    assert counts == {"train": 104, "val": 13, "test": 13}
    ds = read_dataset(root)
    scenes = {s: {p.scene for p in ds.pairs if p.split == s} for s in ("train", "val", "test")}
    assert not scenes["train"] & scenes["val"] and not scenes["train"] & scenes["test"]
    assert not scenes["val"] & scenes["test"]
    for s in ("train", "val", "test"):
        present = {t for p in ds.pairs if p.split == s for t in p.change_types}
        assert present == set(TYPE_IDS), (s, set(TYPE_IDS) - present)
        assert {p.domain for p in ds.pairs if p.split == s} == {"render", "photo"}


def test_records_images_and_captions(small_set):
    root, _ = small_set
    ds = read_dataset(root)  # validates every record and that every image exists
    unchanged = 0
    for p in ds.pairs:
        assert len(p.captions) >= 3 and len(set(p.captions)) >= 2, p.captions
        assert Image.open(p.before).size == (64, 64)
        # every object of both images is recorded with its box (grounded training reads them)
        for image in ("before", "after"):
            assert all(0 <= o["box"][0] < o["box"][2] <= 64 for o in p.extra["objects"][image])
        if p.extra.get("no_change"):  # an exact no-change pair: no type, no region
            unchanged += 1
            assert p.change_types == () and p.extra["regions"] == []
            continue
        assert 1 <= len(p.change_types) <= 4
        assert [r["type"] for r in p.extra["regions"]] and set(p.change_types) == {r["type"] for r in p.extra["regions"]}
    assert unchanged >= 1  # 6% of 130 pairs, drawn from each pair's own stream
    multi = [len(words(c)) for p in ds.pairs for c in p.captions
             if len([t for t in p.change_types if t not in DISTRACTORS]) > 1]
    assert 40 <= sum(multi) / len(multi) <= 70


def _single(worker: Worker, ctype: str, domain: str, limit: int = 3000):
    for index in range(limit):
        split, k = split_position(index)
        if TYPE_IDS[k % 12] != ctype or ("render", "photo")[(k // 12) % 2] != domain:
            continue
        _, rec, before, after = worker.make(index)
        if rec["change_types"] == [ctype]:
            return rec, np.asarray(before, np.int16), np.asarray(after, np.int16)
    raise AssertionError(f"no single {ctype} pair")


@pytest.fixture(scope="module")
def worker():
    return Worker(SynthConfig(seed=11, pairs=1, size=96), None)


@pytest.mark.parametrize("domain", ["render", "photo"])
@pytest.mark.parametrize("ctype", [t for t in TYPE_IDS if t not in DISTRACTORS])
def test_semantic_change_is_inside_its_region_and_only_there(worker, ctype, domain):
    rec, b, a = _single(worker, ctype, domain)
    (region,) = rec["regions"]
    boxes = [region[k] for k in ("before", "after") if region[k]]
    assert boxes
    diff = np.abs(b - a).max(-1)
    inside = np.zeros(diff.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    assert diff[~inside].max(initial=0) == 0, f"{ctype}: pixels changed outside the changed region"
    assert (diff[inside] > 30).sum() >= 6, f"{ctype}: the region does not visibly change"


@pytest.mark.parametrize("domain", ["render", "photo"])
def test_viewpoint_moves_the_whole_image(worker, domain):
    rec, b, a = _single(worker, "viewpoint", domain)
    assert (np.abs(b - a).max(-1) > 12).mean() > 0.2
    assert abs(b.mean() - a.mean()) < 25  # the same scene, not a relit one
    assert any(w in rec["captions"][0].lower() for w in ("camera", "view", "angle", "zoom", "crop", "framing"))


@pytest.mark.parametrize("domain", ["render", "photo"])
def test_illumination_changes_brightness_everywhere(worker, domain):
    rec, b, a = _single(worker, "illumination", domain)
    assert abs(b.mean() - a.mean()) > 12
    assert (np.abs(b - a).max(-1) > 0).mean() > 0.8
    darker = "darker" in " ".join(rec["captions"])
    assert darker == (a.mean() < b.mean())


def test_captions_name_what_changed(worker):
    rec, _, _ = _single(worker, "ocr", "render")
    objs = rec["captions"][0]
    assert sum(w.isupper() and len(w) > 1 for w in objs.replace(".", " ").split()) >= 2  # old and new text
    rec, _, _ = _single(worker, "counting", "photo")
    assert any(n in rec["captions"][0] for n in ("two", "three", "four", "five"))


def test_size_is_validated():
    with pytest.raises(ValueError, match="between 64 and 512"):
        SynthConfig(size=32)


def test_stats_of_a_generated_set(small_set):
    root, _ = small_set
    st = compute_stats(read_dataset(root).pairs)
    assert st.pairs == 130 and st.captions == 390
    assert set(st.per_type) == set(TYPE_IDS)
    assert 1.5 < st.sentences_per_caption < 4


def test_every_change_type_has_one_applier_and_an_unknown_type_fails_loudly():
    import numpy as np

    from m3diff.change_types import DISTRACTORS, TYPE_IDS
    from m3diff.data.synth.changes import DISTRACTOR_APPLIERS, SEMANTIC_APPLIERS, apply_changes

    assert set(SEMANTIC_APPLIERS) | set(DISTRACTOR_APPLIERS) == set(TYPE_IDS)
    assert set(DISTRACTOR_APPLIERS) == DISTRACTORS and not set(SEMANTIC_APPLIERS) & DISTRACTORS
    with pytest.raises(ValueError, match="no applier for change type"):
        apply_changes(None, ["colour"], np.random.default_rng(0))


def test_regenerate_reproduces_the_generated_files_byte_for_byte(small_set, tmp_path):
    import io

    from m3diff.data.synth.generator import regenerate

    root, _ = small_set
    cfg = SynthConfig.from_dict(json.loads((root / "synth_config.json").read_text()))
    assert cfg == SynthConfig(seed=3, pairs=130, size=64)
    records = {r["id"]: r for split in ("train", "val", "test") for r in json.loads((root / f"{split}.json").read_text())}
    worker = Worker(cfg, None)
    no_change = next(pid for pid, r in records.items() if r.get("no_change"))
    for pid in ["s3-000000", "s3-000009", "s3-000058", "s3-000129", no_change]:
        record, before, after = regenerate(cfg, pid, worker)
        assert json.loads(json.dumps(record)) == records[pid]
        for image, which in ((before, "before"), (after, "after")):
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=1)  # as generate() writes it
            assert buf.getvalue() == (root / records[pid][which]).read_bytes(), (pid, which)
    assert regenerate(cfg, "s3-000009")[0] == regenerate(cfg, "s3-000009", worker)[0]  # a worker only caches


@pytest.mark.parametrize("pid, message", [("s4-000001", "seed 4"), ("s3-000130", "past the 130 pairs"),
                                           ("p0001", "not a generated pair id")])
def test_regenerate_refuses_ids_these_settings_did_not_make(pid, message):
    from m3diff.data.synth.generator import regenerate

    with pytest.raises(ValueError, match=message):
        regenerate(SynthConfig(seed=3, pairs=130, size=64), pid)


@pytest.mark.parametrize("settings, message", [({"seed": 1, "colour": 2}, "unknown generator settings: colour"),
                                               ({"size": "big"}, "size must be a number"),
                                               ({"pairs": 2.5}, "whole"), ({"references": 10**6}, "more than 50"),
                                               ({"size": 10_000}, "between 64 and 512")])
def test_generator_settings_from_a_report_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig.from_dict(settings)


def test_pair_facts_group_exactly_the_pairs_references_cannot_tell_apart(tmp_path):
    """The distinct-captions ceiling rests on these keys: no-change pairs share one, global changes
    repeat (a few ways the light or camera can change), semantic changes are nearly all unique."""
    from collections import defaultdict

    from m3diff.data.synth.generator import pair_facts

    cfg = SynthConfig(seed=5, pairs=360, size=64, no_change=0.3)
    generate(cfg, tmp_path, workers=1, progress=False)
    records = [r for s in ("train", "val", "test") for r in json.loads((tmp_path / f"{s}.json").read_text())]
    facts = dict(zip([r["id"] for r in records], pair_facts(cfg, [r["id"] for r in records])))
    unchanged = [r for r in records if not r["change_types"]]
    changed = [r for r in records if r["change_types"]]
    assert unchanged and all(facts[r["id"]] == () for r in unchanged)
    assert all(facts[r["id"]] for r in changed)

    def said(r):  # the types the references talk about: semantic ones, else the distractors
        return frozenset(set(r["change_types"]) - set(DISTRACTORS)) or frozenset(r["change_types"])

    groups = defaultdict(list)
    for r in changed:
        groups[facts[r["id"]]].append(r)
    shared = [g for g in groups.values() if len(g) > 1]
    assert shared, "two pairs with the same global change should share their facts"
    for g in shared:
        assert len({said(r) for r in g}) == 1 and len({r["domain"] for r in g}) == 1
    semantic = [r for r in changed if set(r["change_types"]) - set(DISTRACTORS)]
    assert len({facts[r["id"]] for r in semantic}) >= 0.95 * len(semantic)
