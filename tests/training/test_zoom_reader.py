"""The change zoom's reader trained alone (`m3diff train-reader`) and given to a model (`model.zoom_from`):
it learns, its windows hold what changed, and a model that gets it describes as before until it trains."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "recipes" / "tiny-cpu.yaml"
SMALL = ["--set", "crop=16", "--set", "width=32", "--set", "sign_windows=8", "--set", "object_windows=8",
         "--set", "change_pairs=4", "--set", "jitter=2", "--set", "warmup_steps=5", "--set", "lr=3e-3", "--set", "log_every=5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from m3diff.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--pairs", "60", "--seed", "7", "--size", "64", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_model(data, tmp_path_factory) -> Path:
    """A tiny model trained one step: a processor for the reader and a checkpoint to start from."""
    from training.train import train

    run = tmp_path_factory.mktemp("tiny")
    train(load_recipe(TINY, ["max_steps=1", "checkpoint_every=0", "data.val_pairs=0"]), [str(data)], run, quiet=True)
    return run / "model"


@pytest.fixture(scope="module")
def reader(data, tiny_model, tmp_path_factory) -> Path:
    from m3diff.cli import main

    out = tmp_path_factory.mktemp("reader")
    assert main(["train-reader", "--data", str(data), "--out", str(out), "--processor", str(tiny_model),
                 "--eval-data", str(data), "--steps", "80", "--quiet", *SMALL]) == 0
    return out


def test_the_reader_learns_and_saves_what_a_model_needs(reader):
    from training.zoom_reader import load_reader

    summary = json.loads((reader / "reader.json").read_text())
    assert summary["steps_done"] == 80 and summary["stage"]["crop"] == 16
    losses = [float(r.split(",")[2]) for r in (reader / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 16
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses  # the five heads' summed loss falls
    accuracy = summary["test_accuracy"]
    assert set(accuracy) == {"kind", "color", "word", "direction", "pose"}
    assert accuracy["color"]["asked"] > 0 and 0 <= accuracy["color"]["accuracy"] <= 1
    loaded = load_reader(reader)
    assert (loaded.crop, loaded.width) == (16, 32)
    assert not any(k.startswith("out.") for k in loaded.zoom)  # the projection is the model's, not the reader's
    assert "out.weight" in loaded.heads


def test_the_window_at_a_pairs_change_holds_its_changed_object(data, tiny_model):
    from m3diff.processing import PairProcessor
    from m3diff.zoom import ChangeZoom
    from training.auxiliary import ZOOM_FIELDS, ModelGrid
    from training.zoom_reader import change_windows, load_images

    processor = PairProcessor.from_pretrained(str(tiny_model))
    side = processor.image_processor.size["height"]
    images = load_images(str(data), "train", processor, ModelGrid(side, side // 4), 40, progress=False)
    assert images.pixels.shape == (80, 3, side, side) and images.objects.shape[:2] == (80, 24)
    zoom = ChangeZoom(1, crop=16, width=32)
    crops, targets = change_windows(zoom, images, torch.arange(len(images)), jitter=0)
    assert crops.shape == (80, 3, 16, 16)
    # a window that holds an object whose centre a semantic change touched names it (kind > 0) in the
    # image where it is, and the swapped pair's windows hold different things: the targets follow the pair
    changed = images.objects[..., 4] == 1
    kind = targets[:, ZOOM_FIELDS.index("kind")]
    assert (kind[changed.any(1)] > 0).float().mean() > 0.5
    swapped = torch.roll(torch.arange(len(images)), 1)
    _, other = change_windows(zoom, images, swapped, jitter=0)
    assert not torch.equal(other, targets)


def test_a_model_given_the_reader_describes_as_before_until_it_trains(data, tiny_model, reader, tmp_path):
    from safetensors.torch import load_file

    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.processing import PairProcessor
    from training.train import build_model, train
    from training.zoom_reader import load_reader

    recipe = load_recipe(TINY, ["max_steps=2", "checkpoint_every=0", "data.val_pairs=0", f"model.init_from={tiny_model}",
                                f"model.tokenizer={tiny_model}", f"model.zoom_from={reader}", "grounding={}"])
    processor = PairProcessor.from_pretrained(str(tiny_model))
    model = build_model(recipe, processor.tokenizer).eval()
    plain = M3DiffForConditionalGeneration.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    got = load_reader(reader)
    zoom = model.model.zoom
    assert zoom is not None and zoom.crop == 16 and model.config.zoom_width == 32
    assert all(torch.equal(zoom.state_dict()[k], v) for k, v in got.zoom.items())
    pair = sorted((data / "images").glob("*_before.png"))[0]
    batch = processor.encode_pairs([(pair, str(pair).replace("_before", "_after"))])
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, plain(**batch).logits, atol=1e-5)

    result = train(recipe, [str(data)], tmp_path / "run", quiet=True)
    assert result.step == 2
    saved = M3DiffForConditionalGeneration.from_pretrained(str(tmp_path / "run" / "model"))
    assert saved.config.zoom_crop == 16 and saved.model.zoom is not None
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert any(k.endswith("zoom.out.weight") for k in weights)
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert "zoom_word" in log  # the heads the reader brought train on


def test_recipes_that_cannot_use_a_reader_fail_before_any_work(reader, tmp_path):
    with pytest.raises(RecipeError, match="holds no reader.safetensors"):
        load_recipe(TINY, [f"model.zoom_from={tmp_path}", "grounding={}"])
    with pytest.raises(RecipeError, match="set grounding too"):
        load_recipe(TINY, [f"model.zoom_from={reader}"])
    with pytest.raises(RecipeError, match="leave model.config.zoom"):
        load_recipe(TINY, [f"model.zoom_from={reader}", "grounding={}", "model.config.zoom_crop=32"])


def test_train_reader_says_what_is_wrong_through_the_command_line(data, tmp_path, capsys):
    from m3diff.cli import main

    assert main(["train-reader", "--data", str(data), "--out", str(tmp_path / "a"), "--set", "lrr=1"]) != 0
    assert "lrr" in capsys.readouterr().err
    assert main(["train-reader", "--data", str(data), "--out", str(tmp_path / "b"), "--set", "crop=20"]) != 0
    assert "multiple of 8" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    assert main(["train-reader", "--data", str(empty), "--out", str(tmp_path / "c"), "--steps", "1"]) != 0
    assert capsys.readouterr().err.strip()


def test_the_fine_tune_recipe_starts_from_the_shipped_models_from_any_directory(tmp_path, monkeypatch):
    from m3diff.describing import EMBEDDED_DIR, EMBEDDED_TWIN_DIR

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("embedded-zoom")
    assert Path(recipe.model.init_from) == EMBEDDED_DIR == Path(recipe.model.tokenizer)
    twin = load_recipe("embedded-zoom", ["model.init_from=embedded-twin", "model.tokenizer=embedded-twin"])
    assert Path(twin.model.init_from) == EMBEDDED_TWIN_DIR
    assert recipe.model.zoom_from is None and recipe.grounding.zoom_objects == 16  # without a reader: the control
