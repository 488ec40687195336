"""The change reader and its facts: the generator's true changes as facts, the text the language model
copies them from, the reader's targets and training, and a model that carries a reader."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from m3diff.change_types import DISTRACTORS, TYPE_IDS
from m3diff.data.synth.generator import SynthConfig, generate
from m3diff.facts import DETAILS, ChangeFact, ObjectFact, facts_of_record, facts_prompt, said
from m3diff.pipeline import TINY_READER, DiffCaptioner, GenerationSettings
from m3diff.processing import DEFAULT_PROMPT, facts_instruction
from m3diff.reader import SHAPE_HEADS, ChangeReader, ReaderConfig, WordReader
from training.data import Collator, Sample
from training.reader import ReaderTraining, attach_reader, collate, read_split, reader_loss, record_targets, train_reader


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(seed=5, pairs=96, size=64), root, workers=1, progress=False)
    return root


def _records(root, split="train"):
    return json.loads((root / f"{split}.json").read_text())


def test_every_generated_record_states_its_true_changes(synth):
    for r in _records(synth) + _records(synth, "test"):
        facts = facts_of_record(r)
        assert facts is not None
        assert {f.type for f in facts} == set(r["change_types"])
        for f in facts:
            if f.type in DISTRACTORS:
                assert f.before is None and f.after is None and f.detail in DETAILS
                # a zoom into the photo's centre is the one camera change with nothing more to say
                assert f.detail or (f.type == "viewpoint" and r["domain"] == "photo")
                continue
            seen = f.before or f.after
            assert seen.kind and seen.color and seen.h and seen.v
            for box in (f.box_before, f.box_after):
                if box is not None:
                    assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 64
            if f.type == "ocr":
                assert f.before.text and f.after.text and f.before.text != f.after.text
            if f.type == "counting":
                assert f.n_before != f.n_after and f.n_before >= 1


def test_facts_survive_json_and_the_prompt_says_what_a_caption_would():
    colour = ChangeFact("color", ObjectFact("cube", "red", "large", "left", "front"),
                        ObjectFact("cube", "blue", "large", "left", "front"), box_before=(1, 2, 10, 12),
                        box_after=(1, 2, 10, 12), confidence=0.9)
    sign = ChangeFact("ocr", ObjectFact("sign", "gray", "large", "middle", "back", text="BAKERY"),
                      ObjectFact("sign", "gray", "large", "middle", "back", text="LEFT"))
    camera = ChangeFact("viewpoint", detail="side=right distance=closer")
    for f in (colour, sign, camera):
        assert ChangeFact.from_json(json.loads(json.dumps(f.to_json()))) == f
    text = facts_prompt([camera, colour, sign])
    # the camera is left out when anything else changed, as in the references
    assert "viewpoint" not in text and "red cube" in text and "blue cube" in text and "BAKERY" in text and "LEFT" in text
    assert said([camera]) == [camera] and "side right distance closer" in facts_prompt([camera])
    assert facts_prompt([]) == "Changes read: none."
    assert facts_instruction(None, [colour]).startswith(DEFAULT_PROMPT + "\n")
    with pytest.raises(ValueError):
        ChangeFact("teleport")


def test_targets_put_each_change_in_its_types_slot_and_map(synth):
    for r in _records(synth)[:40]:
        t = record_targets(r, 64, 64)
        present = {TYPE_IDS[i] for i in torch.nonzero(t["present"]).flatten().tolist()}
        assert present == set(r["change_types"])
        for f in facts_of_record(r):
            slot = TYPE_IDS.index(f.type)
            if f.type in DISTRACTORS:
                assert t["maps"][:, slot].min() == 1
            else:
                # the map is set exactly at the cells the true box covers, in the image it is in
                assert (t["maps"][:, slot, 0].sum() > 0) == (f.box_before is not None)
                assert (t["maps"][:, slot, 1].sum() > 0) == (f.box_after is not None)
        absent = [i for i, ty in enumerate(TYPE_IDS) if ty not in present]
        assert t["maps"][:, absent].sum() == 0


def test_word_reader_crops_the_box_it_is_given():
    reader = WordReader(ReaderConfig())
    image = -torch.ones(1, 3, 128, 128)
    image[:, :, 40:60, 20:100] = 1.0  # a bright band where the "sign" is
    inside = reader.crop(image, torch.tensor([[22 / 127, 42 / 127, 98 / 127, 58 / 127]]))
    outside = reader.crop(image, torch.tensor([[0.0, 0.6, 0.5, 0.9]]))
    assert inside.shape == (1, 3, 24, 64)
    assert inside.min() > 0.99 and outside.max() < -0.99


def test_reader_learns_its_pairs(synth, tmp_path):
    """A few dozen steps on 16 pairs (the tiny reader at 32 px): the losses fall well below where they start."""
    records = read_split(synth, "train")[:16]
    torch.manual_seed(0)
    reader = ChangeReader(TINY_READER)
    opt = torch.optim.AdamW(reader.parameters(), lr=3e-3)
    batch = collate(synth, records, TINY_READER.image_size)
    first = None
    for step in range(100):  # as train_reader does: every other step the objects are read where the true maps say
        out = reader(batch["before"], batch["after"], true_maps=batch["maps"] if step % 2 == 0 else None)
        loss, parts = reader_loss(reader, batch, out)
        first = first or parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["present"] < 0.6 * first["present"]
    assert parts["maps"] < 0.6 * first["maps"]
    reader.eval()
    said_present = reader(batch["before"], batch["after"])["present"].sigmoid() > 0.5
    # each slot's "is my change there" of the training pairs, read back (all absent would be ~82%)
    assert (said_present == batch["present"].bool()).float().mean() > 0.9


def test_reader_training_resumes_and_attaches(synth, tmp_path):
    out = tmp_path / "reader"
    settings = ReaderTraining(steps=4, batch=4, checkpoint_every=2)
    cfg = TINY_READER
    train_reader(synth, out, settings, cfg, stop_at=2, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    train_reader(synth, out, settings, cfg, resume=True, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    model_dir = tmp_path / "model"
    DiffCaptioner.untrained().save_pretrained(model_dir)
    attach_reader(model_dir, out, tmp_path / "with-reader")
    captioner = DiffCaptioner.from_pretrained(tmp_path / "with-reader")
    assert captioner.reads_changes and ReaderConfig.from_dict(captioner.model.config.change_reader) == TINY_READER
    r = _records(synth, "test")[0]
    d = captioner.describe(synth / r["before"], synth / r["after"], with_trace=False)
    assert d.changes is not None and d.changes.size == (64, 64)
    assert "changes" in d.to_json()


def test_describe_hands_the_read_changes_to_the_language_model(monkeypatch):
    captioner = DiffCaptioner.untrained(change_reader=True)
    rng = np.random.default_rng(0)
    before = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    after = before.copy()
    after[5:15, 5:15] = 255
    seen = {}
    encode = captioner.processor.encode_pairs

    def spy(pairs, answers=None, instruction=None):
        seen.setdefault("instructions", []).append(instruction)
        return encode(pairs, answers, instruction)

    monkeypatch.setattr(captioner.processor, "encode_pairs", spy)
    d = captioner.describe(before, after, with_trace=False, settings=GenerationSettings(8, each_change=False))
    reading = captioner.read_changes([(before, after)])[0]
    assert [c.type for c in d.changes.changes] == [c.type for c in reading.changes]
    assert d.changes.size == (50, 40)
    given = seen["instructions"][1]  # the second encoding carries the facts
    assert given == [facts_instruction(None, d.changes.changes)]
    # by default one prompt per change a caption says (or the one "none" prompt)
    captioner.describe(before, after, with_trace=False, settings=GenerationSettings(8))
    each = [facts_instruction(None, [c]) for c in said(reading.changes)] or [facts_instruction(None, [])]
    assert seen["instructions"][-1] == each
    plain = DiffCaptioner.untrained()
    assert not plain.reads_changes and plain.describe(before, after, with_trace=False).changes is None


def test_the_tiny_reader_config_round_trips_through_save(tmp_path):
    captioner = DiffCaptioner.untrained(change_reader=True)
    captioner.save_pretrained(tmp_path)
    loaded = DiffCaptioner.from_pretrained(tmp_path)
    assert ReaderConfig.from_dict(loaded.model.config.change_reader) == TINY_READER
    for (k, a), b in zip(captioner.model.change_reader.state_dict().items(), loaded.model.change_reader.state_dict().values()):
        assert torch.equal(a, b), k


def test_collator_gives_the_true_facts_only_to_caption_samples(synth):
    r = _records(synth)[0]
    from m3diff.pipeline import DiffCaptioner as _D

    processor = _D.untrained().processor
    caption = Sample(r["id"], str(synth / r["before"]), str(synth / r["after"]), r["captions"][0], changes=tuple(r["changes"]))
    scene = Sample(r["id"] + "#scene0", caption.before, caption.after, "a scene", instruction="Describe the first image.",
                   changes=caption.changes)
    collate_ = Collator(processor, facts=True)
    assert collate_.instruction_of(caption) == facts_instruction(None, facts_of_record(r))
    assert collate_.instruction_of(scene) == "Describe the first image."
    assert Collator(processor).instruction_of(caption) is None


def test_reader_cli_refuses_a_folder_without_generated_records(tmp_path):
    out = subprocess.run([sys.executable, "-m", "m3diff.cli", "reader", "train", "--data", str(tmp_path), "--out",
                          str(tmp_path / "r")], capture_output=True, text=True)
    assert out.returncode == 2 and "m3diff synth" in out.stderr and "Traceback" not in out.stderr


def test_threshold_curve_scores_the_changes_a_caption_says_with_their_object():
    from training.reader import threshold_curve

    cube, ball = ObjectFact("cube", "red"), ObjectFact("ball", "blue")

    def fact(t, p=1.0, obj=None):
        return ChangeFact(t, before=obj, after=obj, confidence=p)

    truths = [[fact("color", obj=cube), fact("viewpoint")], [fact("illumination")], [fact("size", obj=cube)]]
    readings = [
        [fact("color", 0.9, cube), fact("viewpoint", 0.95)],  # colour right; the camera left out of the caption
        [fact("illumination", 0.3)],  # only the light, faintly
        [fact("size", 0.2, ball), fact("color", 0.8, cube)],  # the size change on the wrong object, a false colour
    ]
    low, mid, high = threshold_curve(truths, readings, (0.1, 0.25, 0.85))
    assert (low.recall, low.precision) == (2 / 3, 2 / 4)  # said: color | illumination | size (wrong object), color
    assert (mid.recall, mid.precision) == (2 / 3, 2 / 3)  # the wrong size drops out
    # at 0.85 only colour is read in pair 0; pair 2's false colour drops, pair 1 reads nothing
    assert (high.recall, high.precision) == (1 / 3, 1.0)
    assert mid.f1 == pytest.approx(2 / 3)


def test_calibrate_writes_the_best_threshold_into_a_copy(synth, tmp_path):
    from training.reader import calibrate_threshold

    model = tmp_path / "model"
    DiffCaptioner.untrained(change_reader=True).save_pretrained(model)
    cal = calibrate_threshold(model, synth, "train", pairs=12, out=tmp_path / "calibrated", batch=8, progress=False)
    assert cal.pairs == 12 and len(cal.curve) == 19
    assert cal.threshold == max(cal.curve, key=lambda p: (round(p.f1, 6), p.threshold)).threshold
    loaded = DiffCaptioner.from_pretrained(tmp_path / "calibrated")
    assert loaded.model.change_reader.cfg.threshold == cal.threshold
    assert json.loads((model / "config.json").read_text())["change_reader"].get("threshold", 0.5) == 0.5  # untouched
    r = _records(synth, "test")[0]
    reading = loaded.read_changes([(synth / r["before"], synth / r["after"])])[0]
    assert reading.threshold == cal.threshold
    assert all(c.confidence >= cal.threshold for c in reading.changes)
    written = json.loads((tmp_path / "calibrated" / "reader_calibration.json").read_text())
    assert written["threshold"] == cal.threshold and len(written["curve"]) == 19


def test_square_boxes_keep_the_centre_and_the_proportions():
    from m3diff.reader import square_boxes

    tall = torch.tensor([[0.4, 0.2, 0.5, 0.6]])  # 0.1 wide, 0.4 high
    sq = square_boxes(tall, margin=1.25)[0]
    assert torch.allclose((sq[:2] + sq[2:]) / 2, torch.tensor([0.45, 0.4]))
    assert torch.allclose(sq[2:] - sq[:2], torch.tensor([0.5, 0.5]))


def test_shape_targets_list_every_object_with_its_kind_heading_and_pose(synth):
    from m3diff.facts import HEADINGS, KINDS, POSES
    from training.reader import IGNORE, shape_targets

    records = _records(synth)
    rows = [(r, t) for r in records for t in shape_targets(r, 64, 64)]
    drawn = sum(len(r["objects"][s]) for r in records for s in ("before", "after"))
    assert len(rows) == drawn
    arrows = [t for _, t in rows if KINDS[t[2]] == "arrow"]
    figures = [t for _, t in rows if KINDS[t[2]] == "figure"]
    assert arrows and all(t[3] != IGNORE and t[4] == IGNORE for t in arrows)
    assert figures and all(t[4] != IGNORE and t[3] == IGNORE for t in figures)
    r, (k, box, kind, heading, pose) = next((r, t) for r, t in rows if t[3] != IGNORE)
    side = ("before", "after")[k]
    obj = next(o for o in r["objects"][side] if [c / 64 for c in o["box"]] == box)
    assert (KINDS[kind], HEADINGS[heading]) == (obj["kind"], obj["direction"])
    assert all(0 <= c <= 1 for _, t in rows for c in t[1])


def test_shape_reader_learns_the_kinds_of_its_crops(synth):
    """80 steps on the objects of 8 pairs (the pairs' own 64 px, 16-px crops): kinds read back."""
    import dataclasses

    from m3diff.reader import ShapeReader
    from training.reader import shape_batch

    records = read_split(synth, "train")[:8]
    images, boxes, targets = shape_batch(collate(synth, records, 64), records)
    torch.manual_seed(0)
    shapes = ShapeReader(dataclasses.replace(TINY_READER, image_size=64, shape_crop=16))
    opt = torch.optim.AdamW(shapes.parameters(), lr=3e-3)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(shapes(images, boxes)["kind"], targets[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    shapes.eval()
    right = (shapes(images, boxes)["kind"].argmax(-1) == targets[:, 0]).float().mean()
    assert len(targets) > 40 and right > 0.9
    assert torch.bincount(targets[:, 0]).max() < 0.5 * len(targets)  # the commonest kind alone is far below


def test_shapes_train_alone_and_the_reader_names_their_kind(synth, tmp_path):
    import dataclasses

    from training.reader import load_reader, save_reader, train_shapes

    model = tmp_path / "reader"  # the generated pairs' own 64 px: at the tiny model's 32 an object is ~4 px
    model.mkdir()
    save_reader(ChangeReader(dataclasses.replace(TINY_READER, image_size=64)), model)
    out = train_shapes(synth, model, tmp_path / "shapes", steps=10, batch=4, crop=16, checkpoint_every=5,
                       progress=False)
    assert len((out / "shapes-log.jsonl").read_text().splitlines()) == 1
    assert torch.load(out / "shapes-checkpoint.pt", weights_only=False)["step"] == 10
    reader = load_reader(out)
    assert reader.cfg.shape_crop == 16 and reader.shapes is not None
    untouched = load_reader(model).state_dict()  # only the shape reader trained
    assert all(torch.equal(v, untouched[k]) for k, v in reader.state_dict().items() if not k.startswith("shapes."))
    # going on from it at the slots' predicted boxes, the word reader too: those two move, nothing else
    more = load_reader(train_shapes(synth, out, tmp_path / "more", steps=3, batch=8, predicted=True, words=True,
                                    progress=False)).state_dict()
    before = reader.state_dict()
    moved = {k.split(".")[0] for k, v in more.items() if not torch.equal(v, before[k])}
    assert moved == {"shapes", "words"}

    # read() multiplies the shape reader's probabilities with the slot's: a sure shape reader decides,
    # an unsure (uniform) one leaves the slot's own kind
    from m3diff.facts import KINDS
    from training.reader import load_pair

    class Fixed(torch.nn.Module):
        def __init__(self, sure):
            super().__init__()
            self.sure = sure

        def forward(self, images, boxes):
            logits = {name: torch.zeros(images.shape[0], n) for name, n in SHAPE_HEADS.items()}
            logits["kind"][:, 3] = 100.0 if self.sure else 0.0
            return logits

    r = _records(synth, "test")[0]
    b, a, size = load_pair(synth, r, reader.cfg.image_size)

    def kinds(shapes):
        reader.shapes = shapes
        facts = reader.read(b[None], a[None], [size], threshold=0.0)[0]
        return [o.kind for f in facts for o in (f.before, f.after) if o is not None]

    assert kinds(Fixed(True)) and set(kinds(Fixed(True))) == {KINDS[3]}
    assert kinds(Fixed(False)) == kinds(None)


def test_load_reader_takes_the_reader_out_of_a_model_folder(tmp_path):
    from training.reader import load_reader

    captioner = DiffCaptioner.untrained(change_reader=True)
    captioner.save_pretrained(tmp_path / "model")
    reader = load_reader(tmp_path / "model")
    assert reader.cfg == TINY_READER
    own = captioner.model.change_reader.state_dict()
    assert all(torch.equal(v, own[k].float()) for k, v in reader.state_dict().items())
    DiffCaptioner.untrained().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="no change reader"):
        load_reader(tmp_path / "plain")


def _fixed_reading(changes, size=(64, 64)):
    from m3diff.facts import ChangeReading

    return ChangeReading(tuple(changes), size, 0.3)


def test_each_change_is_asked_alone_and_the_answers_join_in_order(monkeypatch):
    """Two pairs: one with two object changes and a camera move (which a caption leaves out), one with
    nothing read. Each said change gets its own prompt; each pair's caption is its prompts' answers in
    the reader's order; the stream ends on the same caption; the reading shown is the whole one."""
    captioner = DiffCaptioner.untrained(change_reader=True)
    red, blue = ObjectFact("cube", "red", "small", "left", "front"), ObjectFact("ball", "blue", "large", "right", "back")
    first = [ChangeFact("color", red, ObjectFact("cube", "green", "small", "left", "front")),
             ChangeFact("viewpoint", detail="side=left"), ChangeFact("disappearance", blue)]
    readings = {0: _fixed_reading(first), 1: _fixed_reading([])}
    monkeypatch.setattr(captioner, "_read", lambda images, batch, threshold=None: [readings[i] for i in range(len(images))])
    tok = captioner.processor.tokenizer
    prompts = []

    def answer(inputs, settings, streamer=None):
        ids = inputs["input_ids"]
        rows = [tok(f" part{len(prompts) + k} .", add_special_tokens=False)["input_ids"] for k in range(ids.shape[0])]
        prompts.extend(tok.decode(r) for r in ids)
        width = max(map(len, rows))
        pad = tok.convert_tokens_to_ids("<|im_end|>")
        out = torch.cat([ids, torch.tensor([r + [pad] * (width - len(r)) for r in rows])], 1)
        if streamer is not None:
            streamer.put(ids)
            streamer.put(out[0, ids.shape[1]:])
            streamer.end()
        return out

    monkeypatch.setattr(captioner, "_generate", answer)
    rng = np.random.default_rng(1)
    pairs = [tuple(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)) for _ in range(2)]
    got = captioner.describe_batch(pairs, with_trace=False)
    assert [d.caption for d in got] == ["part0 . part1 .", "part2 ."]
    assert "color: small red cube" in prompts[0] and "disappearance" not in prompts[0]
    assert "disappearance: large blue ball" in prompts[1] and "color" not in prompts[1]
    assert not any("viewpoint" in p for p in prompts) and "Changes read: none." in prompts[2]
    assert got[0].changes.changes == tuple(first)
    prompts.clear()
    streamed = list(captioner.describe_stream(*pairs[0], with_trace=False))
    assert streamed[-1].done and streamed[-1].caption == "part0 . part1 ."
    partial = [d.caption for d in streamed[:-1]]
    assert all("part0 . part1 .".startswith(c) for c in partial) and "part0 ." in partial and partial[-1] == "part0 . part1 ."
    prompts.clear()
    joint = captioner.describe_batch(pairs[:1], with_trace=False, settings=GenerationSettings(each_change=False))
    assert joint[0].caption == "part0 ." and len(prompts) == 1 and "disappearance" in prompts[0]


def test_centred_boxes_move_each_box_to_its_maps_peak_and_keep_its_size():
    from m3diff.reader import centred_boxes

    grid = 8
    maps = torch.zeros(1, grid * grid, len(TYPE_IDS), 2)
    maps[0, 2 * grid + 5, 0, 0] = 0.9  # type 0, before: one cell (row 2, column 5)
    maps[0, 6 * grid + 1, 0, 1] = 0.8  # type 0, after: two cells side by side, the second weaker
    maps[0, 6 * grid + 2, 0, 1] = 0.4
    maps[0, 0, 0, 1] = 0.7  # far from the after map's peak: not part of its object
    boxes = torch.tensor([0.0, 0.0, 0.2, 0.1]).expand(1, len(TYPE_IDS), 2, 4).clone()
    moved = centred_boxes(maps, boxes, grid)
    assert torch.allclose(moved[0, 0, 0], torch.tensor([5.5 / 8 - 0.1, 2.5 / 8 - 0.05, 5.5 / 8 + 0.1, 2.5 / 8 + 0.05]))
    cx = (1.5 * 0.8 + 2.5 * 0.4) / 1.2 / 8
    assert torch.allclose(moved[0, 0, 1], torch.tensor([cx - 0.1, 6.5 / 8 - 0.05, cx + 0.1, 6.5 / 8 + 0.05]))
    size = moved[..., 2:] - moved[..., :2]
    assert torch.allclose(size, boxes[..., 2:] - boxes[..., :2])


def test_reader_training_goes_on_from_a_trained_reader_and_keeps_its_shape_reader(synth, tmp_path):
    import dataclasses

    from training.reader import load_reader, save_reader

    start = tmp_path / "start"
    start.mkdir()
    save_reader(ChangeReader(dataclasses.replace(TINY_READER, shape_crop=16, threshold=0.3)), start)
    out = train_reader(synth, tmp_path / "more", ReaderTraining(steps=3, batch=4), start=start, progress=False)
    before, after = load_reader(start), load_reader(out)
    assert after.cfg == before.cfg  # the trained reader's config, its threshold and crop included
    old = before.state_dict()
    moved = {k.split(".")[0] for k, v in after.state_dict().items() if not torch.equal(v, old[k])}
    assert "shapes" not in moved and {"stem", "present", "maps", "words"} <= moved
