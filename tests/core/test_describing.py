"""m3diff.describing: the typed trace, and the one mapping from the model's square input back to an image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from m3diff.describing import PairTrace
from m3diff.geometry import grid_to_image

# A 384x259 pair (wider than tall: the processor pads 62 rows above the image) whose only change is a
# box at the top. Stretching the square map over the image, ignoring the padding, would put the change
# ~35 rows lower, mostly below the box.
SIZE = (384, 259)
BOX = (240, 4, 336, 52)  # left, top, right, bottom (exclusive)


def changed_pair(seed: int = 0) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(seed)
    before = np.clip(rng.normal(128, 20, (SIZE[1], SIZE[0], 3)), 0, 255).astype(np.uint8)
    after = before.copy()
    left, top, right, bottom = BOX
    after[top:bottom, left:right] = (230, 30, 30)
    return Image.fromarray(before), Image.fromarray(after)


def in_box(y: float, x: float) -> bool:
    left, top, right, bottom = BOX
    return left <= x < right and top <= y < bottom


def peak(m: np.ndarray) -> tuple[int, int]:
    return np.unravel_index(int(np.argmax(m)), m.shape)


def centroid(m: np.ndarray) -> tuple[float, float]:
    w = m - m.min()
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())


def test_grid_to_image_undoes_the_square_padding_exactly():
    # A 60x40 (w x h) image is padded to a centred 60x60 square (10 rows above) and resized to S x S.
    s = 30
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ramp = xx + 100 * yy  # linear, so bilinear sampling reproduces it exactly away from the border
    m = grid_to_image(ramp, (60, 40))
    assert m.shape == (40, 60)
    i, j = 20, 30  # the image's pixel centre (20.5, 30.5) sits at (30.5, 30.5) in the 60x60 square
    want_y, want_x = (10 + i + 0.5) * s / 60 - 0.5, (j + 0.5) * s / 60 - 0.5
    assert m[i, j] == pytest.approx(want_x + 100 * want_y, abs=1e-3)
    assert m[0].mean() > ramp[4].mean()  # the padding rows are cut off
    assert grid_to_image(ramp, (600, 400), max_side=120).shape == (80, 120)


def test_grid_to_image_refuses_what_is_not_a_map():
    with pytest.raises(ValueError, match="2-D"):
        grid_to_image(np.zeros((2, 4, 4)), (8, 8))
    with pytest.raises(ValueError, match="positive"):
        grid_to_image(np.zeros((4, 4)), (0, 8))


def test_the_processors_view_of_a_change_maps_back_onto_the_changed_box():
    # What the vision tower sees: the embedded model's processor pads and resizes the pair; the
    # difference of its pixel_values is a map on the model's square input.
    from m3diff.describing import EMBEDDED_DIR
    from m3diff.processing import PairProcessor

    before, after = changed_pair()
    pv = PairProcessor.from_pretrained(EMBEDDED_DIR).encode_pairs([(before, after)])["pixel_values"]
    diff = (pv[1, 0] - pv[0, 0]).abs().sum(0).float().numpy()  # [S, S]
    mapped = grid_to_image(diff, before.size)
    assert in_box(*peak(mapped)) and in_box(*centroid(mapped))
    stretched = np.asarray(Image.fromarray(diff).resize(SIZE, Image.Resampling.BILINEAR))
    assert not in_box(*centroid(stretched))  # the mapping that ignores the padding misses the box


def test_the_embedded_models_maps_land_on_the_change():
    from m3diff.pipeline import DiffCaptioner

    captioner = DiffCaptioner.from_pretrained("embedded")
    before, after = changed_pair()
    changed, same = (captioner.describe(before, b, settings=_short()) for b in (after, before))
    assert isinstance(changed.trace, PairTrace)
    # The model's best map (it points at 74% of single changes on generated test pairs): where the image
    # tokens the LLM reads differ. It is exactly zero for an identical pair, and after undoing the square
    # padding its peak must fall in the box (stretching the map over the image would put it lower).
    assert not same.feature_difference.any()
    assert in_box(*peak(grid_to_image(changed.feature_difference, SIZE)))


def test_a_pair_trace_splits_attention_and_shares_the_difference_norm():
    g = np.stack([np.zeros((3, 3)), np.ones((3, 3))])
    trace = PairTrace(layers=(2,), score_mean={2: 0.5}, score={2: np.ones(4)}, delta_norm={2: np.eye(3)},
                      attn_eq5={2: g}, attn_eq6={2: g})
    b, a = trace.maps(2, "attn_eq5")
    assert b.sum() == 0 and a.sum() == 9
    b, a = trace.maps(2, "delta_norm")
    assert (b == a).all()
    with pytest.raises(ValueError, match="unknown map kind"):
        trace.maps(2, "nope")
    with pytest.raises(ValueError, match="MDP layers: \\[2\\]"):
        trace.maps(5, "delta_norm")
    assert set(trace.to_json()) == {"delta_norm", "attn_eq5", "attn_eq6"}


def _short():
    from m3diff.describing import GenerationSettings

    return GenerationSettings(max_new_tokens=4)
