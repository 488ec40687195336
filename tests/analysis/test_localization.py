"""Localization of evidence maps: each score on hand-made maps and boxes with known answers, the box →
patch mapping on a non-square image, the pixel-difference baseline on generated pairs, and the
sanity check (a map that ignores the weights is flagged, one that uses them is not)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.localization import (
    baseline_maps, compare_no_change, localize, maps_from_trace, peakedness, region_truth, sanity_check, score_map,
    shared_scale, spearman, summarize, weighted_auroc,
)
from m3diff.geometry import PatchGeometry, box_to_patches, padded_square, pixel_patches

G = 8


def square(size=64):
    return PatchGeometry(size, size, G)


def test_peak_inside_the_box_hits_and_outside_misses():
    geom = square()  # 8-px patches
    box = [(16, 16, 32, 32)]  # patches rows/cols 2..3
    m = np.zeros((G, G))
    m[2, 3] = 1.0
    s = score_map(m, box, geom)
    assert s.pointing == 1.0 and s.pointing_overlap == 1.0 and s.energy == 1.0 and s.auroc > 0.5
    m = np.zeros((G, G))
    m[6, 6] = 1.0
    s = score_map(m, box, geom)
    assert s.pointing == 0.0 and s.pointing_overlap == 0.0 and s.energy == 0.0 and s.auroc < 0.5


def test_rules_differ_on_a_patch_the_box_only_grazes():
    geom = square()
    box = [(20, 20, 30, 30)]
    m = np.zeros((G, G))
    m[2, 2] = 1.0  # patch 16..24, centre 20: on the box's edge, which is inside (x0 inclusive)
    assert score_map(m, box, geom).pointing == 1.0
    box = [(21, 21, 30, 30)]  # now the centre 20 is outside, 3 px of the patch still overlap
    s = score_map(m, box, geom)
    assert s.pointing == 0.0 and s.pointing_overlap == 1.0


def test_uniform_map_scores_the_area_share_and_chance():
    geom = square()
    box = [(0, 0, 16, 32)]  # 512 of 4096 pixels
    s = score_map(np.ones((G, G)), box, geom)
    assert s.energy == pytest.approx(512 / 4096) == s.area
    assert s.auroc == pytest.approx(0.5)
    assert s.pointing == pytest.approx(8 / 64)  # a tie over all patches: the share of patch centres in the box


def test_zero_map_is_scored_as_uniform_and_negative_mass_is_ignored():
    geom = square()
    box = [(0, 0, 32, 32)]
    assert score_map(np.zeros((G, G)), box, geom).energy == pytest.approx(0.25)
    m = -np.ones((G, G))
    m[0, 0] = 2.0
    assert score_map(m, box, geom).energy == 1.0


def test_auroc_of_a_perfect_map_is_one_and_of_its_inverse_zero():
    geom = square()
    box = [(8, 8, 40, 24)]  # patch aligned: rows 1..2, cols 1..4
    m = np.zeros((G, G))
    m[1:3, 1:5] = 1.0
    assert score_map(m, box, geom).auroc == 1.0
    assert score_map(-m, box, geom).auroc == 0.0
    assert weighted_auroc(np.array([0.0, 1.0]), np.array([0, 3]), np.array([5, 0])) == 1.0
    assert weighted_auroc(np.array([1.0]), np.array([1]), np.array([0])) is None


def test_no_box_no_score_and_bad_maps_refused():
    assert score_map(np.ones((G, G)), [], square()) is None
    with pytest.raises(ValueError):
        score_map(np.ones((4, 4)), [(0, 0, 8, 8)], square())
    with pytest.raises(ValueError):
        score_map(np.full((G, G), np.nan), [(0, 0, 8, 8)], square())


def test_box_on_a_384x259_image_maps_to_the_right_patches_after_unpadding():
    # the motorcycle example: padded to 384×384 with (384−259)//2 = 62 rows above; 27×27 patches of 384/27 px
    assert padded_square(384, 259) == (384, 0, 62)
    g, k = 27, 384 / 27
    box = (100, 30, 150, 70)
    r0, c0, r1, c1 = box_to_patches(box, 384, 259, g)
    assert (r0, r1) == (int((30 + 62 + 0.5) // k), int((69 + 62 + 0.5) // k) + 1) == (6, 10)
    assert (c0, c1) == (int((100 + 0.5) // k), int((149 + 0.5) // k) + 1) == (7, 11)
    geom = PatchGeometry(384, 259, g)
    content = geom.content()
    assert content[:4].sum() == 0 and content[-4:].sum() == 0 and content.sum() == 384 * 259
    m = np.zeros((g, g))
    m[7, 8] = 1.0
    assert score_map(m, [box], geom).pointing == 1.0
    # stretching the 259 rows over 27 patches (no un-padding) would put the box on rows 3..7 and
    # count a peak on row 4 as a hit; row 4 shows image rows 0..8, above the box
    naive = np.zeros((g, g))
    naive[4, 8] = 1.0
    s = score_map(naive, [box], geom)
    assert int(30 * g / 259) <= 4 < int(np.ceil(70 * g / 259)) and s.pointing == 0.0 and s.pointing_overlap == 0.0
    cols, rows = pixel_patches(384, 259, g)
    assert rows.min() == 4 and rows.max() == 22 and cols.min() == 0 and cols.max() == 26


def test_tall_image_pads_left_and_right():
    assert padded_square(100, 200) == (200, 50, 0)
    assert box_to_patches((0, 0, 100, 200), 100, 200, 4) == (0, 1, 4, 3)
    assert box_to_patches((500, 500, 600, 600), 100, 200, 4) == (0, 0, 0, 0)


def test_summary_counts_images_with_boxes_like_robust_change_captioning():
    rec_add = {"id": "a", "change_types": ["addition"], "domain": "render",
               "regions": [{"type": "addition", "before": None, "after": [0, 0, 16, 16]}]}
    rec_move = {"id": "m", "change_types": ["removal", "viewpoint"], "domain": "photo",
                "regions": [{"type": "removal", "before": [0, 0, 16, 16], "after": [48, 48, 64, 64]},
                            {"type": "viewpoint", "before": None, "after": None}]}
    hit = np.zeros((2, G, G))
    hit[:, 0, 0] = 1.0  # both images point at the top-left corner: before of m hits, after of m misses
    rows = localize(region_truth(rec_add, (64, 64)), {"m": hit}) + localize(region_truth(rec_move, (64, 64)), {"m": hit})
    s = summarize(rows)
    assert s.overall["m"].n_images == 3 and s.overall["m"].pointing == pytest.approx(2 / 3)
    assert s.per_setting["single"]["m"].pointing == 1.0
    assert s.per_setting["distractor"]["m"].pointing == 0.5
    assert set(s.per_type) == {"addition", "removal"} and set(s.per_domain) == {"render", "photo"}
    json.dumps(s.to_dict())
    nothing = {"id": "n", "change_types": [], "regions": [], "no_change": "identical"}
    t = region_truth(nothing, (64, 64))
    assert t.setting == "no_change" and localize(t, {"m": hit}) == []


def test_maps_from_a_trace():
    trace = {"layers": [2, 4], "delta_norm": {2: np.ones((G, G)), 4: np.zeros((G, G))},
             "attn_eq5": {2: np.ones((2, G, G)), 4: np.ones((2, G, G))}, "score": {2: np.ones(3)}}
    maps = maps_from_trace(trace)
    assert set(maps) == {"delta_norm", "attn_eq5"} and maps["delta_norm"][2].shape == (2, G, G)
    with pytest.raises(ValueError):
        maps_from_trace({"attn_eq6": {2: np.ones((3, G, G))}})


def test_layers_are_named_in_the_trace_layout():
    rec = {"id": "a", "change_types": ["color"], "regions": [{"type": "color", "before": [0, 0, 8, 8], "after": [0, 0, 8, 8]}]}
    maps = {"attn_eq5": {2: np.ones((2, G, G)), 4: np.ones((2, G, G))}, "pixel_difference": np.ones((2, G, G))}
    assert [r.map for r in localize(region_truth(rec, (64, 64)), maps)] == ["attn_eq5@2", "attn_eq5@4", "pixel_difference"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from m3diff.data.synth.generator import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(seed=5, pairs=300, size=64), root, workers=1, progress=False)
    return root, [r for s in ("train", "val", "test") for r in json.loads((root / f"{s}.json").read_text())]


def test_pixel_difference_points_at_single_changes(generated):
    """Measured at 64 px on an 8×8 grid (seed 5, 83 single-change pairs, 137 images with a box):
    94.2% (centre rule) / 97.1% (overlap); 92.2% / 95.1% at 128 px (seed 7, 144 pairs). The misses
    are mostly moved objects: |before − after| is the same map for both images, so its one peak lies
    at the old or at the new place and the other image misses; the rest (centre rule only) are peaks
    on a patch the box covers partly. No pixel differs outside the regions: shadows are inside them. The uniform map scores the boxes' area share."""
    from PIL import Image

    root, recs = generated
    rows = []
    for r in recs:
        b, a = Image.open(root / r["before"]), Image.open(root / r["after"])
        rows += localize(region_truth(r, b.size, a.size), baseline_maps(b, a, G))
    s = summarize(rows)
    pd, uni = s.per_setting["single"]["pixel_difference"], s.per_setting["single"]["uniform"]
    assert pd.n_pairs >= 60
    assert pd.pointing >= 0.88 and pd.pointing_overlap >= 0.92
    assert uni.pointing < 0.2 and uni.energy == pytest.approx(uni.area) and uni.auroc == pytest.approx(0.5)
    assert pd.energy > 4 * uni.energy and pd.auroc > 0.85
    moved = [x for x in rows if x.map == "pixel_difference" and x.setting == "single" and "removal" in x.types]
    not_moved = [x for x in rows if x.map == "pixel_difference" and x.setting == "single" and "removal" not in x.types]
    miss = lambda xs: sum(1 - i.pointing_overlap for x in xs for i in x.images) / max(1, sum(len(x.images) for x in xs))
    assert miss(not_moved) <= 0.05 < miss(moved)
    # a camera or light change makes every pixel differ: the baseline falls behind
    assert s.per_setting["distractor"]["pixel_difference"].pointing < pd.pointing


def test_no_change_pairs_give_flat_pixel_differences_on_one_colour_scale(generated):
    from PIL import Image

    root, recs = generated
    changed = [r for r in recs if any(g["before"] or g["after"] for g in r["regions"])][:20]
    same = [r for r in recs if r.get("no_change")]
    assert same, "the generator makes no-change pairs"
    maps = lambda rs: [baseline_maps(Image.open(root / r["before"]), Image.open(root / r["after"]), G) for r in rs]
    cmp = {c.map: c for c in compare_no_change(maps(changed), maps(same))}
    pd = cmp["pixel_difference"]
    assert pd.changed.level > 5 * pd.unchanged.level
    assert cmp["uniform"].separability == pytest.approx(0.5) and cmp["uniform"].unchanged.entropy == pytest.approx(1.0)
    # on one absolute scale the unchanged pair's map stays dark; min–max per map would not
    m_same, m_changed = maps(same[:1])[0]["pixel_difference"], maps(changed[:1])[0]["pixel_difference"]
    scale = shared_scale([m_same, m_changed])
    assert scale.vmin == 0 and scale.apply(m_same).max() < 0.5 and scale.apply(m_changed).max() == 1.0


def test_peakedness_and_scales():
    flat, peak = np.ones((2, 4, 4)), np.zeros((2, 4, 4))
    peak[0, 1, 1] = 1
    assert peakedness(flat).entropy == pytest.approx(1.0) and peakedness(flat).peak_to_mean == 1.0
    assert peakedness(peak).entropy == pytest.approx(0.0) and peakedness(peak).peak_to_mean == 32
    assert shared_scale([flat * 5]).apply(flat * 5).min() == 1.0  # flat stays one colour
    s = shared_scale([np.array([-2.0, 1.0])])
    assert (s.vmin, s.vmax) == (-2.0, 2.0)
    assert shared_scale([np.zeros(3)]).apply(np.zeros(3)).max() == 0.0
    assert spearman(np.arange(5), np.arange(5) ** 2) == pytest.approx(1.0)
    assert spearman(np.ones(4), np.ones(4)) == 1.0 and spearman(np.ones(4), np.arange(4)) == 0.0


# -- sanity check on a toy model with the paths of the real one ----------------------------------------
def _toy_model():
    import torch
    from torch import nn

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = nn.Linear(G * G, G * G)
            self.mdp = nn.Linear(G * G, G * G)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    torch.manual_seed(0)
    return Toy()


def _pairs(n=4):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(2, G * G)).astype(np.float32) for _ in range(n)]


def test_sanity_check_flags_a_map_that_ignores_the_weights():
    import torch

    model = _toy_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def learned(m, pair):
        with torch.no_grad():
            x = torch.from_numpy(pair)
            return {"learned": m.model.mdp(m.model.vision_tower(x)).abs().reshape(2, G, G).numpy()}

    def input_only(m, pair):  # what |before − after| is: no weight involved
        return {"input_only": np.abs(pair[0] - pair[1]).reshape(1, G, G).repeat(2, 0)}

    def both(m, pair):
        return {**learned(m, pair), **input_only(m, pair)}

    check = sanity_check(model, _pairs(), both)
    assert [s.randomised for s in check.steps] == [("model.mdp",), ("model.mdp", "model.vision_tower")]
    assert all(s.parameters_changed == 2 for s in check.steps)
    assert set(check.flags) == {"input_only"} and len(check.flags["input_only"]) == 2
    assert check.steps[0].correlation["input_only"] == 1.0 and check.steps[-1].correlation["learned"] < 0.5
    assert "does not depend on the weights" in check.verdicts["input_only"]
    assert "passes" in check.verdicts["learned"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the trained model is untouched
    json.dumps(check.to_dict())


def test_sanity_check_skips_a_missing_module():
    model = _toy_model()
    model.model.mdp = None  # a no-MDP model
    check = sanity_check(model, _pairs(2), lambda m, p: {"x": np.abs(p).reshape(2, G, G)})
    assert check.skipped == ["model.mdp"] and [s.randomised for s in check.steps] == [("model.vision_tower",)]


def test_reinitialise_reaches_every_learned_weight_of_the_real_model(make_model):
    """On M3Diff the named submodules exist and the model's own ``_init_weights`` re-draws every
    parameter that is not a constant at initialisation (LayerNorm 1/0, zero biases, Score's bias)."""
    import torch

    from analysis.localization import reinitialise

    model = make_model()
    for path in ("model.mdp", "model.vision_tower"):
        sub = model.get_submodule(path)
        before = {n: p.detach().clone() for n, p in sub.named_parameters()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(99)
            n = reinitialise(model, path)
        same = [k for k, p in sub.named_parameters() if torch.equal(p, before[k]) and before[k].std() > 0]
        assert n > 0 and same == [], (path, same)


def test_the_tiny_models_mdp_maps_depend_on_its_weights(make_model, processor):
    """End to end on M3Diff: the trace's maps through ``model_map_fn``, re-initialising the real
    submodules. A random tiny model's MDP maps are re-drawn with its MDP, so nothing is flagged at
    that step; the pixel difference beside them would be (it has no weights)."""
    from analysis.localization import model_map_fn

    from tests.conftest import pair_images

    pairs = [pair_images(seed) for seed in range(2)]
    trace_maps = model_map_fn(processor)

    def map_fn(model, pair):
        maps = trace_maps(model, pair)
        g = next(iter(maps.values())).shape[-1]
        return {**maps, "pixel_difference": baseline_maps(*pair, g)["pixel_difference"]}

    check = sanity_check(make_model(), pairs, map_fn)
    assert [s.randomised for s in check.steps] == [("model.mdp",), ("model.mdp", "model.vision_tower")]
    first = check.steps[0].correlation
    assert {"attn_eq5@", "attn_eq6@", "delta_norm@", "feature_difference@"} <= {k.split("@")[0] + "@" for k in first}
    assert check.flags["pixel_difference"] and all(not k.startswith("attn") for k in check.flags)


def test_a_twin_has_the_feature_difference_map_and_its_sanity_check_skips_the_mdp(make_model, processor):
    """The no-MDP twin is compared with the MDP model on the one map both have: where the image tokens
    the LLM reads differ. Its vision tower is what the check destroys."""
    from analysis.localization import model_map_fn

    from tests.conftest import pair_images

    pairs = [pair_images(seed) for seed in range(2)]
    twin = make_model(use_mdp=False)
    maps = model_map_fn(processor)(twin, pairs[0])
    assert list(maps) == ["feature_difference"] and maps["feature_difference"].shape[0] == 2
    assert np.ptp(maps["feature_difference"]) > 0
    same = model_map_fn(processor)(twin, (pairs[0][0], pairs[0][0]))["feature_difference"]
    assert np.abs(same).max() < 1e-4  # identical images: no difference anywhere
    check = sanity_check(twin, pairs, model_map_fn(processor))
    assert check.skipped == ["model.mdp"] and [s.randomised for s in check.steps] == [("model.vision_tower",)]
    assert "feature_difference" not in check.flags  # re-drawn with the vision tower


def test_maps_round_trip_through_their_compact_json_form():
    from analysis.localization import decode_maps, encode_maps

    rng = np.random.default_rng(0)
    maps = {"attn_eq5@4": rng.random((2, G, G)), "feature_difference": 300 * rng.random((2, G, G))}
    entry = json.loads(json.dumps(encode_maps(maps)))
    back = decode_maps(entry)
    assert list(back) == list(maps)
    for k in maps:
        np.testing.assert_allclose(back[k], maps[k], rtol=1e-3)  # float16: 3 significant digits
    assert len(entry["float16"]) < 2 * 2 * G * G * 2 * 1.4
    with pytest.raises(ValueError, match="bytes"):
        decode_maps({**entry, "grid": G + 1})
    with pytest.raises(ValueError, match="predict --maps"):
        decode_maps({"names": ["x"], "grid": G, "float16": "not base64!"})
