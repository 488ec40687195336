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
from m3diff.pipeline import TINY_READER, DiffCaptioner
from m3diff.processing import DEFAULT_PROMPT, facts_instruction
from m3diff.reader import ChangeReader, ReaderConfig, WordReader
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
    d = captioner.describe(before, after, with_trace=False)
    reading = captioner.read_changes([(before, after)])[0]
    assert [c.type for c in d.changes.changes] == [c.type for c in reading.changes]
    assert d.changes.size == (50, 40)
    given = seen["instructions"][1]  # the second encoding carries the facts
    assert given == [facts_instruction(None, d.changes.changes)]
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
