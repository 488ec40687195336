import numpy as np
import torch

from analysis.attribution import AttributionConfig, attribute, trace_maps


class LooksAtRegion(torch.nn.Module):
    """A toy change detector: the squared difference of the two images inside one box."""

    def __init__(self, box=(slice(14, 28), slice(28, 42))):
        super().__init__()
        self.box = box

    def forward(self, x):  # [B, 2, 3, H, W] -> [B]
        d = x[:, 1] - x[:, 0]
        return (d[:, :, self.box[0], self.box[1]] ** 2).sum(dim=(1, 2, 3))


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 2, 3, 56, 56, generator=g)
    x[:, 1] = x[:, 0]
    x[:, 1, :, 14:28, 28:42] += 0.5  # the change
    return x


def test_maps_have_image_shapes_and_find_the_changed_region():
    x = _pair()
    for method in ("saliency", "integrated_gradients"):
        a = attribute(LooksAtRegion(), x, AttributionConfig(method=method, n_steps=8))
        assert a.pixels.shape == (1, 2, 56, 56) and a.patches.shape == (1, 2, 4, 4)
        for img in (0, 1):
            inside = a.patches[0, img, 1, 2]
            outside = np.delete(a.patches[0, img].ravel(), 1 * 4 + 2)
            assert inside > 0 and np.all(outside < inside), method


def test_maps_respond_to_the_input():
    x = _pair()
    a = attribute(LooksAtRegion(), x)
    x2 = x.clone()
    x2[:, 1, :, 14:28, 28:42] = x2[:, 0, :, 14:28, 28:42]  # undo the change
    b = attribute(LooksAtRegion(), x2)
    assert b.pixels.sum() < 1e-6 < a.pixels.sum()


def test_trace_maps_fold_tokens_to_grids():
    tr = {"delta_norm": {"2": np.arange(16.0)}, "attn_eq6": {"2": np.ones((2, 16))}}
    m = trace_maps(tr)
    assert m["delta_norm"].shape == (4, 4) and m["attn_eq6_before"].shape == (4, 4)
