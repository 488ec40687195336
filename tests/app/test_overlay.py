"""m3diff.overlay: maps coloured over the images they were computed from, common sizes."""
import numpy as np
from PIL import Image

from m3diff.overlay import common_size, normalise, overlay


def test_hot_patch_lands_where_it_was_seen_padding_included():
    # An 80x40 image is padded to an 80x80 square (20 rows above and below): grid row 1 of 4 holds the
    # image's top half, row 0 only padding.
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    grid = np.zeros((4, 4))
    grid[1, 3] = 1.0  # the image's top-right corner
    out = np.asarray(overlay(image, grid, alpha=1.0)).astype(int)
    assert out.shape == (40, 80, 3)
    assert out[5, 75].sum() > out[35, 5].sum() + 100
    padding_only = np.zeros((4, 4))
    padding_only[0, 3] = 1.0  # a patch the image never covered colours nothing
    dark = np.asarray(overlay(image, padding_only, alpha=1.0)).astype(int)
    assert dark[5, 75].sum() < out[5, 75].sum() - 100


def test_constant_map_is_not_nan():
    assert np.all(normalise(np.ones((3, 3))) == 0)


def test_common_size_follows_the_before_image_and_caps_it():
    b, a = common_size(Image.new("RGB", (2000, 1000)), Image.new("RGB", (30, 30)), max_side=500)
    assert b.size == a.size == (500, 250)
