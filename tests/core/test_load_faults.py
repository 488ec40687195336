"""A damaged model folder or a URL as an image: one line that says what is wrong, never a traceback
or a message about something else (the hub, a missing file)."""
from __future__ import annotations

import json

import pytest

from m3diff.cli import main
from tests.conftest import pair_images


@pytest.fixture
def saved(tmp_path, make_model, processor):
    from m3diff.pipeline import DiffCaptioner

    path = tmp_path / "model"
    DiffCaptioner(make_model(), processor).save_pretrained(path)
    before, after = pair_images()
    before.save(tmp_path / "a.png")
    after.save(tmp_path / "b.png")
    return path


def _describe(tmp_path, model, *extra):
    return main(["describe", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(model), *extra])


def _last_line(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]  # above it, at most transformers' loading progress bar


def _truncate(m):
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, message", [
    (_truncate, "weights could not be read"),
    (lambda m: (m / "config.json").write_text("{}"), "config.json names no model_type"),
    (lambda m: (m / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda m: (m / "config.json").write_text("<html>not json"), "config.json is not valid JSON"),
])
def test_a_damaged_model_folder_is_named_in_one_line(saved, tmp_path, capsys, damage, message):
    damage(saved)
    assert _describe(tmp_path, saved) == 2
    last = _last_line(capsys.readouterr().err)
    assert last.startswith("m3diff describe: error:") and message in last and str(saved) in last
    assert "hub did not answer" not in last


def test_the_undamaged_model_describes(saved, tmp_path, capsys):
    assert _describe(tmp_path, saved, "--json", "--max-new-tokens", "4") == 0
    assert "caption" in json.loads(capsys.readouterr().out)


def test_max_new_tokens_zero_is_refused(saved, tmp_path, capsys):
    assert _describe(tmp_path, saved, "--max-new-tokens", "0") == 2
    assert "--max-new-tokens must be at least 1" in _last_line(capsys.readouterr().err)


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://example.com/x/b.jpg"])
def test_a_url_is_not_fetched_and_says_so(url):
    from pathlib import Path

    from m3diff.images import ImageError, load_image

    for src in (url, Path(url)):  # pathlib turns "https://" into "https:/"
        with pytest.raises(ImageError, match="is a URL: m3diff does not fetch images"):
            load_image(src, name="before image")


def test_a_model_with_non_finite_weights_is_not_saved(tmp_path, make_model, processor):
    import torch

    from m3diff.pipeline import DiffCaptioner

    model = make_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="not saved: 1 weight tensors hold NaN or inf"):
        DiffCaptioner(model, processor).save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()
