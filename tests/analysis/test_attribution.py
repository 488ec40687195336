import numpy as np
import pytest
import torch

from analysis.attribution import AttributionConfig, WordAttribution, attribute, caption_words, explain_word
from m3diff.pipeline import DiffCaptioner
from tests.conftest import pair_images


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


# ---------------------------------------------------------------------------- explain_word on the tiny model
CAPTION = "the red xylophone moved behind the blue sphere."


@pytest.fixture(params=[dict(use_mdp=True), dict(use_mdp=False)], ids=["mdp", "no-mdp"])
def captioner(request, make_model, processor):
    return DiffCaptioner(make_model(**request.param), processor)


def _teacher_forced_logprob(captioner, before, after, caption, positions):
    """log p of caption tokens ``positions`` from one plain forward over the whole sequence."""
    batch = captioner.processor.encode_pairs([(before, after)], answers=[caption])
    ids = batch["input_ids"][0]
    at = int((batch["labels"][0] != -100).nonzero()[0])
    with torch.no_grad():
        logits = captioner.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    logp = logits.log_softmax(-1)
    return sum(float(logp[at + p - 1, ids[at + p]]) for p in positions)


def test_explain_word_maps_fit_each_image(captioner):
    before, after = pair_images(size=(60, 40))
    after = after.resize((50, 70))  # the two images need not share a size
    w = explain_word(captioner, before, after, CAPTION, "sphere")
    s = captioner.model.config.vision_config.image_size
    g = s // captioner.model.config.vision_config.patch_size
    assert isinstance(w, WordAttribution) and w.method == "saliency"
    assert w.pixels.shape == (2, s, s) and w.patches.shape == (2, g, g)
    assert w.image_maps[0].shape == (40, 60) and w.image_maps[1].shape == (70, 50)
    for m in (w.pixels, w.patches, *w.image_maps):
        assert np.isfinite(m).all() and (m >= 0).all()
    assert all(w.pixels[i].sum() > 0 and w.image_maps[i].sum() > 0 for i in (0, 1))  # both images matter
    assert w.score < 0 and w.score == pytest.approx(
        _teacher_forced_logprob(captioner, before, after, CAPTION, w.token_positions), abs=1e-4)
    small = explain_word(captioner, before, after, CAPTION, "sphere", overlay_side=20)
    assert small.image_maps[0].shape == (13, 20) and small.image_maps[1].shape == (20, 14)


def test_multi_token_word_maps_to_its_tokens(captioner):
    tok = captioner.processor.tokenizer
    before, after = pair_images()
    w = explain_word(captioner, before, after, CAPTION, 2)
    ids = tok(CAPTION, add_special_tokens=False)["input_ids"]
    assert w.word == "xylophone" and len(w.token_positions) > 1  # the tiny tokenizer never saw it
    assert w.token_positions == list(range(w.token_positions[0], w.token_positions[-1] + 1))
    assert tok.decode([ids[p] for p in w.token_positions]).strip() == "xylophone"
    assert "".join(w.tokens).strip() == "xylophone"
    # the word before and after are outside the span
    assert "red" not in tok.decode([ids[p] for p in w.token_positions])
    last = explain_word(captioner, before, after, CAPTION, "Sphere")  # by text, case-insensitive, before the "."
    assert last.word_index == len(caption_words(CAPTION)) - 1
    assert tok.decode([ids[p] for p in last.token_positions]).strip() == "sphere"
    assert explain_word(captioner, before, after, CAPTION, "the").word_index == 0  # the first occurrence
    assert explain_word(captioner, before, after, CAPTION, 5).token_positions[0] > w.token_positions[-1]  # "the" #2


def test_explain_caption_is_log_p_of_every_token_and_a_one_word_caption_equals_its_word(captioner):
    from analysis.attribution import explain_caption

    before, after = pair_images()
    whole = explain_caption(captioner, before, after, CAPTION)
    n = len(captioner.processor.tokenizer(CAPTION, add_special_tokens=False)["input_ids"])
    assert whole.token_positions == list(range(n))
    assert whole.score == pytest.approx(_teacher_forced_logprob(captioner, before, after, CAPTION, range(n)), abs=1e-3)
    g = captioner.model.config.vision_config.image_size // captioner.model.config.vision_config.patch_size
    assert whole.patches.shape == (2, g, g) and (whole.patches >= 0).all() and whole.patches.sum() > 0
    one = explain_caption(captioner, before, after, "sphere")
    np.testing.assert_allclose(one.patches, explain_word(captioner, before, after, "sphere", 0).patches, rtol=1e-5)
    with pytest.raises(ValueError, match="no words"):
        explain_caption(captioner, before, after, " . ")


def test_integrated_gradients_with_few_steps(make_model, processor):
    captioner = DiffCaptioner(make_model(), processor)
    before, after = pair_images()
    sal = explain_word(captioner, before, after, CAPTION, "red")
    ig = explain_word(captioner, before, after, CAPTION, "red", AttributionConfig("integrated_gradients", n_steps=4))
    assert ig.method == "integrated_gradients" and ig.pixels.shape == sal.pixels.shape
    assert np.isfinite(ig.pixels).all() and ig.pixels.sum() > 0 and np.isfinite(ig.convergence_delta)
    assert ig.score == pytest.approx(sal.score)
    with torch.inference_mode():  # as a caller that just generated the caption may be
        logit = explain_word(captioner, before, after, CAPTION, "red", target="logit")
    assert logit.score != pytest.approx(sal.score) and logit.pixels.sum() > 0


def test_explain_word_bad_input_is_clear(make_model, processor):
    captioner = DiffCaptioner(make_model(), processor)
    before, after = pair_images()
    with pytest.raises(ValueError, match="no words"):
        explain_word(captioner, before, after, "  . ", 0)
    with pytest.raises(ValueError, match="'banana' is not a word of the caption; its words are: the red"):
        explain_word(captioner, before, after, CAPTION, "banana")
    with pytest.raises(ValueError, match="out of range: the caption has 8 words"):
        explain_word(captioner, before, after, CAPTION, 8)
    with pytest.raises(ValueError, match="target"):
        explain_word(captioner, before, after, CAPTION, 0, target="prob")


