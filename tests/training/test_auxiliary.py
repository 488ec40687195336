"""Grounded training's targets sit where the pixels changed, on the grid the model sees."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.auxiliary import ModelGrid, collate_targets, pair_targets


def test_changed_patch_targets_hold_the_pixel_differences_peak(tmp_path):
    from m3diff.data.synth.generator import SynthConfig, generate
    from training.data import load_samples

    generate(SynthConfig(seed=2, pairs=120, size=64), tmp_path, workers=1, progress=False)
    grid = ModelGrid(64, 8)
    checked = 0
    for s in load_samples([str(tmp_path)], False, 0):
        if not s.regions or any(t in s.change_types for t in ("viewpoint", "illumination")):
            continue
        t = pair_targets(s, grid, 64, 64)
        a = np.asarray(Image.open(s.before), np.float32)
        b = np.asarray(Image.open(s.after), np.float32)
        diff = np.abs(a - b).mean(-1).reshape(8, 8, 8, 8).mean((1, 3))
        assert (t["changed_0"] + t["changed_1"]).reshape(-1)[int(diff.argmax())] > 0, s.id
        checked += 1
    assert checked > 20


def test_a_box_on_a_wide_image_lands_below_the_padding():
    grid = ModelGrid(384, 14)  # 27 × 27 patches on the padded 384 × 384 square
    m = grid.cover((0, 0, 384, 10), 384, 259)  # a strip along the image's top edge
    rows = torch.nonzero(m)[:, 0]
    assert rows.min() >= 4  # (384 − 259) / 2 = 62.5 px of padding ≈ 4.4 patches above the image


def test_samples_without_ground_truth_are_ignored_by_every_loss():
    real = collate_targets([None, {"kind_0": torch.zeros(2, 2, dtype=torch.long), "types": torch.zeros(3)}])
    assert (real["kind_0"][0] == -100).all() and torch.isnan(real["types"][0]).all()


@pytest.fixture(scope="module")
def generated_samples(tmp_path_factory):
    from m3diff.data.synth.generator import SynthConfig, generate
    from training.data import load_samples

    root = tmp_path_factory.mktemp("attrs")
    generate(SynthConfig(seed=5, pairs=300, size=64), root, workers=1, progress=False)
    return load_samples([str(root)], False, 0)


def test_attribute_targets_are_the_words_headings_poses_and_counts_the_caption_states(generated_samples):
    from m3diff.data.synth.captions import DIRECTION_WORDS, NUMBERS, POSE_WORDS
    from training.auxiliary import ATTRIBUTES, changed_attributes

    names = {a: {i: v for v, i in ATTRIBUTES[a].items()} for a in ATTRIBUTES}
    seen = set()
    for s in generated_samples:
        t = changed_attributes(s)
        if s.change_types == ("ocr",):
            before, after = names["word"][t["word_0"]], names["word"][t["word_1"]]
            assert before != after and before in s.answer and after in s.answer, s.id
            seen.add("ocr")
        elif s.change_types == ("orientation",):
            before, after = names["direction"][t["direction_0"]], names["direction"][t["direction_1"]]
            assert before != after and any(w in s.answer for w in DIRECTION_WORDS[after]), s.id
            seen.add("orientation")
        elif s.change_types == ("pose",):
            before, after = names["pose"][t["pose_0"]], names["pose"][t["pose_1"]]
            assert before != after and any(w in s.answer for w in POSE_WORDS[after]), s.id
            seen.add("pose")
        elif s.change_types == ("counting",):
            assert t["count_0"] != t["count_1"] and NUMBERS[t["count_1"]] in s.answer.lower(), s.id
            seen.add("counting")
        elif not s.change_types:  # a no-change pair: every attribute head ignores it
            assert set(t.values()) == {-100}
    assert seen == {"ocr", "orientation", "pose", "counting"}


def test_scene_descriptions_say_the_signs_word_and_count_a_group():
    from training.data import scene_description

    objects = [
        {"kind": "cube", "color": "red", "size": "small", "box": [0, 0, 10, 10]},
        {"kind": "sign", "color": "white", "size": "large", "box": [40, 40, 70, 60], "text": "SALT"},
        {"kind": "arrow", "color": "blue", "size": "small", "box": [100, 0, 120, 10], "direction": "left"},
        {"kind": "figure", "color": "green", "size": "large", "box": [10, 100, 20, 125], "pose": "waving"},
        *({"kind": "ball", "color": "pink", "size": "large", "box": [x, 100, x + 8, 108]} for x in (90, 100, 110)),
    ]
    text = scene_description(objects, 128, 128)
    assert text == ("A small red cube at the top left, a small blue arrow pointing to the left at the top right, "
                    "a white sign reading SALT in the middle, a person in green waving with one hand at the bottom "
                    "left and three large pink balls at the bottom right.")
    # without details (the shipped model's recipe): every object on its own, no words, headings or poses
    plain = scene_description(objects, 128, 128, details=False)
    assert "reading" not in plain and "pointing" not in plain and "waving" not in plain
    assert plain.count("a large pink ball") == 3 and "three" not in plain


def test_attribute_heads_exist_and_train_only_when_the_recipe_asks(generated_samples):
    from training.auxiliary import ATTRIBUTES, GroundingHeads

    grid = ModelGrid(64, 16)
    targets = collate_targets([pair_targets(s, grid, 64, 64) for s in generated_samples[:32]])
    x1, x2 = torch.randn(32, 16, 8), torch.randn(32, 16, 8)
    for attributes in (False, True):
        torch.manual_seed(0)
        heads = GroundingHeads(8, attributes)
        losses = heads(x1, x2, targets)
        assert (set(ATTRIBUTES) <= set(losses)) is attributes
        assert (heads.attributes is not None) is attributes
        if attributes:
            sum(losses[name] for name in ATTRIBUTES).backward()
            assert heads.attributes.weight.grad.abs().sum() > 0
        else:  # no unused head: the other heads' initial weights are those of a recipe without the option
            plain = {k: v.clone() for k, v in heads.state_dict().items()}
    torch.manual_seed(0)
    assert all(torch.equal(plain[k], v) for k, v in GroundingHeads(8, True).state_dict().items() if k in plain)


@pytest.mark.parametrize("pool", ["mean", "change"])
def test_attribute_heads_read_the_mean_or_the_predicted_change_map(generated_samples, pool):
    from training.auxiliary import ATTRIBUTES, GroundingHeads

    targets = collate_targets([pair_targets(s, ModelGrid(64, 16), 64, 64) for s in generated_samples[:32]])
    torch.manual_seed(0)
    heads = GroundingHeads(8, True, pool)
    x1, x2 = torch.randn(32, 16, 8, requires_grad=True), torch.randn(32, 16, 8)
    sum(heads(x1, x2, targets)[name] for name in ATTRIBUTES).backward()
    with torch.no_grad():  # the pair head's change map, as the heads compute it
        h = heads.pair(torch.cat([x1, x2, x1 - x2], -1))
        w = torch.softmax(heads.patch_out(h)[..., :2].amax(-1), dim=1)  # [B, N]
    weight = torch.full_like(w, 1 / 16) if pool == "mean" else w
    grad = x1.grad  # the attribute losses reach each patch through the pooled feature: grad ∝ its weight
    per_weight = grad / weight.unsqueeze(-1)
    assert grad.abs().sum() > 0
    assert torch.allclose(per_weight, per_weight[:, :1].expand_as(per_weight), atol=1e-6, rtol=1e-4)
    assert (w.std(1) > 0).all()  # a change map that is not flat, so the two pools differ


def test_sign_word_targets_sit_on_the_signs_own_patches_and_name_its_word(generated_samples):
    from m3diff.data.synth.scene import SIGN_WORDS

    grid = ModelGrid(64, 16)
    signs = ocr = 0
    for s in generated_samples:
        t = pair_targets(s, grid, 64, 64)
        for k, image in enumerate(("before", "after")):
            labels = t[f"word_patch_{k}"]
            words = [o["text"] for o in s.objects[image] if o["kind"] == "sign"]
            asked = labels[labels != -100]
            # every asked patch names one of this image's signs, and an image without a sign asks nothing
            assert {SIGN_WORDS[int(i)] for i in asked} <= set(words), s.id
            if not words:
                assert asked.numel() == 0, s.id
            for o in s.objects[image]:
                if o["kind"] == "sign" and asked.numel():
                    signs += 1
                    cover = grid.cover(o["box"], 64, 64)
                    assert (labels[cover & (labels != -100)] == SIGN_WORDS.index(o["text"])).all(), s.id
        if s.change_types == ("ocr",):  # a changed sign: the two images ask for the two words the caption says
            before = {SIGN_WORDS[int(i)] for i in t["word_patch_0"][t["word_patch_0"] != -100]}
            after = {SIGN_WORDS[int(i)] for i in t["word_patch_1"][t["word_patch_1"] != -100]}
            if before and after:
                assert before != after and all(w in s.answer for w in before | after), s.id
                ocr += 1
    assert signs > 20 and ocr > 3


def test_the_sign_word_head_exists_only_when_asked_and_reads_only_the_signs_patches(generated_samples):
    from training.auxiliary import GroundingHeads

    targets = collate_targets([pair_targets(s, ModelGrid(64, 16), 64, 64) for s in generated_samples[:48]])
    x1, x2 = torch.randn(48, 16, 8, requires_grad=True), torch.randn(48, 16, 8)
    torch.manual_seed(0)
    plain = GroundingHeads(8)
    assert "sign_word" not in plain(x1, x2, targets) and plain.words is None
    torch.manual_seed(0)
    heads = GroundingHeads(8, sign_words=True)
    # no new head changes the others' initial weights: the ablation starts from the same point
    assert all(torch.equal(v, heads.state_dict()[k]) for k, v in plain.state_dict().items())
    heads(x1, x2, targets)["sign_word"].backward()
    asked = (targets["word_patch_0"] != -100).reshape(48, 16)
    assert asked.any()
    touched = x1.grad.abs().sum(-1) > 0
    assert torch.equal(touched, asked)  # the word is asked of the sign's patches, nowhere else
    assert heads.words.weight.grad.abs().sum() > 0


def test_a_batch_without_a_sign_adds_a_zero_sign_word_loss():
    from training.auxiliary import FACTS, GroundingHeads

    targets = {f"{n}_{k}": torch.zeros(2, 2, 2, dtype=torch.long) for n in ("kind", "color", "size", "ptype") for k in (0, 1)}
    targets |= {f"changed_{k}": torch.zeros(2, 2, 2) for k in (0, 1)}
    targets |= {f"word_patch_{k}": torch.full((2, 2, 2), -100) for k in (0, 1)}
    targets |= {"types": torch.zeros(2, 12), "facts_0": torch.zeros(2, FACTS), "facts_1": torch.zeros(2, FACTS)}
    losses = GroundingHeads(8, sign_words=True)(torch.randn(2, 4, 8), torch.randn(2, 4, 8), targets)
    assert losses["sign_word"].item() == 0 and all(torch.isfinite(v) for v in losses.values())


def test_scene_descriptions_can_name_the_signs_word_alone():
    from training.data import scene_description

    objects = [{"kind": "sign", "color": "white", "size": "large", "box": [40, 40, 70, 60], "text": "SALT"},
               {"kind": "arrow", "color": "blue", "size": "small", "box": [100, 0, 120, 10], "direction": "left"}]
    text = scene_description(objects, 128, 128, details=False, sign_words=True)
    assert "a white sign reading SALT" in text and "pointing" not in text
    assert "SALT" not in scene_description(objects, 128, 128, details=False)


def test_the_zoom_is_asked_about_the_object_its_window_holds(generated_samples):
    """``object_in_window`` names the changed object inside the window first, else the one nearest its
    centre, else none — checked against the generator's own records, box by box."""
    from training.auxiliary import COLOR_IDS, KIND_IDS, ZOOM_FIELDS, object_in_window, zoom_objects

    grid = ModelGrid(64, 16)
    checked = {"changed": 0, "empty": 0}
    for s in generated_samples[:120]:
        rows = zoom_objects(s, "after", grid, 64, 64)
        objects = s.objects["after"]
        assert int((~torch.isnan(rows[:, 0])).sum()) == min(len(objects), rows.shape[0])
        changed = [o for o, r in zip(objects, rows) if r[4] == 1]
        if changed:  # a window centred on a changed object names it
            o = changed[0]
            cx, cy = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
            window = torch.tensor([[cx - 4, cy - 4, cx + 4, cy + 4]])
            got = object_in_window(rows[None], window)[0]
            assert got[ZOOM_FIELDS.index("kind")] == KIND_IDS[o["kind"]]
            assert got[ZOOM_FIELDS.index("color")] == COLOR_IDS[o["color"]]
            checked["changed"] += 1
        far = torch.tensor([[200, 200, 232, 232]])  # off the image: nothing there
        got = object_in_window(rows[None], far)[0]
        assert got[0] == 0 and got[1] == 0 and (got[2:] == -100).all()
        checked["empty"] += 1
    assert checked["changed"] > 20


def test_the_window_prefers_a_changed_sign_and_asks_its_word():
    from training.auxiliary import ATTRIBUTES, ZOOM_FIELDS, object_in_window

    nan = float("nan")
    word = ATTRIBUTES["word"]["RUBY"] if "RUBY" in ATTRIBUTES["word"] else 0
    objects = torch.tensor([[[10, 10, 20, 20, 0, 3, 2, -100, -100, -100],     # unchanged, nearest the centre
                             [22, 22, 40, 30, 1, 5, 1, word, -100, -100],     # a changed sign
                             [nan] * 10]])
    got = object_in_window(objects, torch.tensor([[0, 0, 32, 32]]))[0]
    assert got[ZOOM_FIELDS.index("kind")] == 5 and got[ZOOM_FIELDS.index("word")] == word
    objects[0, 1, 4] = 0  # nothing changed: the nearest object to the window's centre
    assert object_in_window(objects, torch.tensor([[0, 0, 32, 32]]))[0][0] == 3


def test_zoom_heads_train_the_zoom_only_when_the_model_has_one(generated_samples, tiny_tokenizer):
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.processing import PairProcessor
    from training.auxiliary import ZOOM_FIELDS, GroundedCaptioner

    grid = ModelGrid(32, 8)
    samples = generated_samples[:4]
    targets = collate_targets([pair_targets(s, grid, 64, 64, zoom=True) for s in samples])
    for zoom in (0, 16):
        torch.manual_seed(0)
        config = preset("tiny", vocab_size=len(tiny_tokenizer), zoom_crop=zoom, zoom_width=32)
        model = GroundedCaptioner(M3DiffForConditionalGeneration(config), config.vision_config.hidden_size).train()
        processor = PairProcessor.for_config(config, tiny_tokenizer)
        batch = processor.encode_pairs([(Image.open(s.before), Image.open(s.after)) for s in samples],
                                       answers=[s.answer for s in samples])
        _, losses = model(targets=targets, **batch)
        names = {f"zoom_{f}" for f in ZOOM_FIELDS}
        assert (names <= set(losses)) is bool(zoom)
        if zoom:
            sum(losses[n] for n in names).backward()
            assert model.model.model.zoom.net[0][0].weight.grad.abs().sum() > 0
            assert all(torch.isfinite(losses[n]) for n in names)


def test_the_zoom_reads_objects_from_windows_centred_on_them(generated_samples, tiny_tokenizer):
    """``zoom_objects``: extra windows, one per object (signs, arrows, figures first), each asked that
    object's classes; the losses reach the reader and a batch without such objects adds zeros."""
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.processing import PairProcessor
    from training.auxiliary import ZOOM_FIELDS, GroundedCaptioner

    grid = ModelGrid(32, 8)
    samples = [s for s in generated_samples if any(o["kind"] == "sign" for o in s.objects["before"])][:4]
    targets = collate_targets([pair_targets(s, grid, 64, 64, zoom=True) for s in samples])
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=len(tiny_tokenizer), zoom_crop=16, zoom_width=32)
    model = GroundedCaptioner(M3DiffForConditionalGeneration(config), config.vision_config.hidden_size,
                              zoom_objects=6).train()
    batch = PairProcessor.for_config(config, tiny_tokenizer).encode_pairs(
        [(Image.open(s.before), Image.open(s.after)) for s in samples], answers=[s.answer for s in samples])
    _, losses = model(targets=targets, **batch)
    names = {f"zoom_obj_{f}" for f in ZOOM_FIELDS}
    assert names <= set(losses)
    assert losses["zoom_obj_word"] > 0  # the signs were picked first
    losses["zoom_obj_word"].backward()
    assert model.model.model.zoom.net[0][0].weight.grad.abs().sum() > 0


def test_zoom_objects_needs_a_zoom():
    from training.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="zoom_crop"):
        load_recipe("embedded", ["grounding.zoom_objects=16"])
    assert load_recipe("embedded", ["grounding.zoom_objects=16", "model.config.zoom_crop=64"]).grounding.zoom_objects == 16


def test_the_zoom_is_clipped_apart_from_the_rest_of_the_model(tiny_tokenizer):
    """A large gradient elsewhere must not shrink the zoom's step (and a model without a zoom clips as one)."""
    from accelerate import Accelerator

    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from training.train import clip_gradients

    for zoom in (16, 0):
        model = M3DiffForConditionalGeneration(preset("tiny", vocab_size=len(tiny_tokenizer), zoom_crop=zoom,
                                                      zoom_width=32))
        for name, p in model.named_parameters():
            p.grad = torch.full_like(p, 0.001 if ".zoom." in f".{name}" else 10.0)
        zoom_before = [p.grad.clone() for n, p in model.named_parameters() if ".zoom." in f".{n}"]
        rest_norm, zoom_norm = clip_gradients(Accelerator(cpu=True), model, 1.0)
        assert rest_norm > 100
        if zoom:
            assert zoom_norm is not None and zoom_norm < 1.0
            after = [p.grad for n, p in model.named_parameters() if ".zoom." in f".{n}"]
            assert all(torch.equal(a, b) for a, b in zip(after, zoom_before))  # under its own limit: untouched
        else:
            assert zoom_norm is None
        rest = torch.sqrt(sum(p.grad.pow(2).sum() for n, p in model.named_parameters() if ".zoom." not in f".{n}"))
        assert float(rest) == pytest.approx(1.0, rel=1e-3)  # the rest clipped to the limit, with or without a zoom
