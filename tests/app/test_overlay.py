"""m3diff.overlay: maps over images, pair maps from a trace, common sizes."""
import numpy as np
import pytest
from PIL import Image

from m3diff.overlay import common_size, normalise, overlay, overlay_pair, pair_maps


def test_hot_patch_lands_where_it_was_seen():
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    grid = np.zeros((4, 4))
    grid[0, 3] = 1.0  # top-right patch
    out = np.asarray(overlay(image, grid, alpha=1.0)).astype(int)
    assert out.shape == (40, 80, 3)
    assert out[5, 75].sum() > out[35, 5].sum() + 100


def test_constant_map_is_not_nan():
    assert np.all(normalise(np.ones((3, 3))) == 0)


def test_pair_maps_split_attention_and_share_delta_norm():
    trace = {"attn_eq5": {2: np.stack([np.zeros((3, 3)), np.ones((3, 3))])}, "delta_norm": {2: np.eye(3)}}
    b, a = pair_maps(trace, 2, "attn_eq5")
    assert b.sum() == 0 and a.sum() == 9
    b, a = pair_maps(trace, 2, "delta_norm")
    assert (b == a).all()
    with pytest.raises(ValueError, match="unknown map kind"):
        pair_maps(trace, 2, "nope")


def test_pair_overlay_uses_one_colour_scale():
    trace = {"attn_eq6": {1: np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.9)])}}
    img = Image.new("RGB", (16, 16), (128, 128, 128))
    b, a = overlay_pair(img, img, trace, 1, "attn_eq6", alpha=1.0)
    assert np.asarray(b).sum() < np.asarray(a).sum()  # the weaker map stays darker (inferno)


def test_common_size_follows_the_before_image_and_caps_it():
    b, a = common_size(Image.new("RGB", (2000, 1000)), Image.new("RGB", (30, 30)), max_side=500)
    assert b.size == a.size == (500, 250)
