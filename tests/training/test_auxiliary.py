"""Grounded training's targets sit where the pixels changed, on the grid the model sees."""
from __future__ import annotations

import numpy as np
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


