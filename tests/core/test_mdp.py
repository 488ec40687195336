"""The MDP module against the paper's equations (1)–(8)."""
import pytest
import torch

from m3diff.mdp import MDPLayer, MultiScaleDifferentialPerception

B, N, D, L = 2, 16, 32, 3


@pytest.fixture
def feats():
    torch.manual_seed(0)
    return [torch.randn(B, N, D) for _ in range(L)], [torch.randn(B, N, D) for _ in range(L)]


@pytest.fixture
def mdp():
    torch.manual_seed(0)
    return MultiScaleDifferentialPerception(dim=D, layers=[2, 3, 4], num_heads=2, mlp_ratio=2.0, depth=2).eval()


def test_every_equation_has_the_paper_shapes(mdp, feats):
    layer = mdp.scales[0].layers[0]
    F1, F2 = feats[0][0], feats[1][0]
    l1, l2 = layer.gates(F1, F2)
    assert l1.shape == l2.shape == (B, N, D)  # eq. (1)
    assert layer.W_m.weight.shape == (D, 2 * D) and layer.W_p.weight.shape == (D, 3 * D)
    dF = layer.delta(F1, F2)
    assert dF.shape == (B, N, D)  # eq. (3)
    F1t, F2t, dF_out, maps = layer(F1, F2, with_trace=True)
    assert F1t.shape == F2t.shape == dF_out.shape == (B, N, D)  # eq. (6)
    eq5, eq6 = maps
    assert eq5.shape == eq6.shape == (B, 2, N)
    out1, out2, trace = mdp(*feats, with_trace=True)
    assert out1.shape == out2.shape == (B, N, D)  # eq. (8)
    assert trace.scores.shape == (B, L, D)  # eq. (7): a channel vector per scale


def test_gates_are_in_unit_interval_and_symmetric(mdp, feats):
    layer = mdp.scales[1].layers[0]
    F1, F2 = feats[0][1], feats[1][1]
    l1, l2 = layer.gates(F1, F2)
    assert torch.all((l1 > 0) & (l1 < 1)) and torch.all((l2 > 0) & (l2 < 1))
    s1, s2 = layer.gates(F2, F1)  # swap the images: the gates swap
    torch.testing.assert_close(s1, l2)
    torch.testing.assert_close(s2, l1)
    assert not torch.allclose(l1, l2)


def test_identical_images_give_delta_of_Wp_on_hat_hat_zero(mdp, feats):
    layer = mdp.scales[0].layers[0]
    F = feats[0][0]
    l1, _ = layer.gates(F, F)
    hat = F * l1  # eq. (2); both gates are equal for identical inputs
    expected = hat @ layer.W_p.weight[:, :D].T + hat @ layer.W_p.weight[:, D : 2 * D].T  # W_p[F̂‖F̂‖0]
    torch.testing.assert_close(layer.delta(F, F), expected)
    # and the difference channel block contributes nothing
    zero_block = torch.cat([hat, hat, torch.zeros_like(hat)], -1) @ layer.W_p.weight.T
    torch.testing.assert_close(layer.delta(F, F), zero_block)


def test_score_is_in_unit_interval_and_starts_at_one_over_L(mdp, feats):
    _, _, trace = mdp(*feats, with_trace=True)
    assert torch.all((trace.scores > 0) & (trace.scores < 1))
    # a fresh MDP averages the scales (Score bias = logit(1/L)); weights are small, so close to 1/L
    assert torch.allclose(trace.score_means, torch.full((B, L), 1 / L), atol=0.05)


def test_eq8_is_the_score_weighted_sum_of_scales(mdp, feats):
    out1, out2, trace = mdp(*feats, with_trace=True)
    expected1 = torch.zeros(B, N, D)
    expected2 = torch.zeros(B, N, D)
    for i, scale in enumerate(mdp.scales):
        F1t, F2t, score, _, _ = scale(feats[0][i], feats[1][i])
        torch.testing.assert_close(score, trace.scores[:, i])
        expected1 += score[:, None] * F1t
        expected2 += score[:, None] * F2t
    torch.testing.assert_close(out1, expected1)
    torch.testing.assert_close(out2, expected2)


def test_gradients_reach_every_mdp_parameter(mdp, feats):
    mdp.train()
    out1, out2, _ = mdp(*feats)
    (out1.square().mean() + out2.pow(3).mean()).backward()
    missing = [n for n, p in mdp.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_trace_costs_nothing_unless_asked(mdp, feats):
    out1, _, trace = mdp(*feats, with_trace=False)
    assert trace is None
    traced1, _, _ = mdp(*feats, with_trace=True)
    torch.testing.assert_close(out1, traced1)  # tracing observes, never changes, the result


def test_difference_attention_maps_are_distributions(mdp, feats):
    _, _, trace = mdp(*feats, with_trace=True)
    # eq. (5): mean over queries of the weights on image-1 and image-2 keys, a share of 3N keys
    share = trace.attn_eq5.sum(dim=(-1, -2))  # [B, L, 2]
    assert torch.all(share > 0) and torch.all(share.sum(-1) < 1 + 1e-5)
    # eq. (6): each patch's weight on the difference tokens is a probability
    assert torch.all((trace.attn_eq6 >= 0) & (trace.attn_eq6 <= 1 + 1e-6))
    assert trace.delta_norm.shape == (B, L, 4, 4) and torch.all(trace.delta_norm >= 0)


def test_mdp_layer_rejects_mismatched_pairs():
    layer = MDPLayer(D, 2, 2.0)
    with pytest.raises(RuntimeError):
        layer(torch.randn(1, N, D), torch.randn(1, N + 1, D))


def test_eager_attention_computes_what_fused_attention_does():
    """The training recipe's attn_implementation=eager must change the arithmetic's path, not the model."""
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration

    torch.manual_seed(0)
    model = M3DiffForConditionalGeneration(preset("tiny")).eval()
    pixels = torch.randn(4, 1, 3, 32, 32)
    sizes = torch.tensor([[32, 32]] * 4)
    with torch.no_grad():
        fused = model.get_image_features(pixels, sizes, batch_num_images=torch.tensor([2, 2])).pooler_output
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager = model.get_image_features(pixels, sizes, batch_num_images=torch.tensor([2, 2])).pooler_output
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- ablations: scale knockout and ΔF = 0
def test_knocking_out_a_scale_whose_score_is_zero_changes_nothing(mdp, feats):
    from m3diff.mdp import MDPKnockout

    with torch.no_grad():
        mdp.scales[1].score.bias.fill_(-1e4)  # sigmoid → exactly 0: this scale already weighs nothing
    out1, out2, trace = mdp(*feats, with_trace=True)
    assert torch.all(trace.scores[:, 1] == 0)
    ko1, ko2, _ = mdp(*feats, knockout=MDPKnockout(scales=(3,)))
    torch.testing.assert_close(ko1, out1)
    torch.testing.assert_close(ko2, out2)


def test_knocking_out_all_but_one_scale_gives_that_scale_the_whole_weight(mdp, feats):
    from m3diff.mdp import MDPKnockout

    _, _, trace = mdp(*feats, with_trace=True)
    total = trace.scores.sum(1)  # [B, d]: eq. (8)'s total weight per channel, kept by the renormalisation
    for i, layer in enumerate(mdp.layer_ids):
        others = tuple(l for l in mdp.layer_ids if l != layer)
        out1, out2, ko_trace = mdp(*feats, with_trace=True, knockout=MDPKnockout(scales=others))
        F1t, F2t, _, _, _ = mdp.scales[i](feats[0][i], feats[1][i])  # that scale alone
        torch.testing.assert_close(out1, total[:, None] * F1t)
        torch.testing.assert_close(out2, total[:, None] * F2t)
        assert torch.all(ko_trace.scores[:, [j for j in range(L) if j != i]] == 0)


def test_a_knockout_is_per_call_and_per_pair(mdp, feats):
    from m3diff.mdp import MDPKnockout

    plain1, _, _ = mdp(*feats)
    ko1, _, _ = mdp(*feats, knockout=[None, MDPKnockout(scales=(2,))])
    torch.testing.assert_close(ko1[0], plain1[0])  # the first pair of the batch was not ablated
    assert not torch.allclose(ko1[1], plain1[1])
    again1, _, _ = mdp(*feats)  # nothing stayed behind on the module
    torch.testing.assert_close(again1, plain1)


def test_zero_delta_removes_the_difference_and_changes_the_output(mdp, feats):
    from m3diff.mdp import MDPKnockout

    plain1, _, _ = mdp(*feats)
    out1, _, trace = mdp(*feats, with_trace=True, knockout=MDPKnockout(zero_delta=True))
    assert torch.all(trace.delta_norm == 0)  # eq. (3)'s ΔF, as every later equation read it
    assert not torch.allclose(out1, plain1)


@pytest.mark.parametrize("knockout, message", [({"scales": (7,)}, "MDP scales are layers"),
                                               ({"scales": (2, 3, 4)}, "keep at least one")])
def test_impossible_knockouts_say_what_to_choose(mdp, feats, knockout, message):
    from m3diff.mdp import MDPKnockout

    with pytest.raises(ValueError, match=message):
        mdp(*feats, knockout=MDPKnockout(**knockout))


def test_a_knockout_keeps_a_bf16_mdp_in_bf16(mdp, feats):
    from m3diff.mdp import MDPKnockout

    half = mdp.to(torch.bfloat16)
    h1, h2 = [f.to(torch.bfloat16) for f in feats[0]], [f.to(torch.bfloat16) for f in feats[1]]
    out1, _, _ = half(h1, h2, knockout=[MDPKnockout(zero_delta=True), MDPKnockout(scales=(3,))])
    assert out1.dtype == torch.bfloat16 and torch.isfinite(out1.float()).all()
