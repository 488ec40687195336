"""The change zoom: where it looks, that a fresh one changes nothing, that it reads what is in its window."""
import pytest
import torch
import torch.nn.functional as F

from m3diff.config import preset
from m3diff.modeling import M3DiffForConditionalGeneration
from m3diff.zoom import ChangeZoom


def pair_with_square(side: int, x: int, y: int, size: int, colour: torch.Tensor, seed: int = 0):
    """[2, 3, side, side] in [-1, 1]: a textured background, and the same with a square painted in."""
    g = torch.Generator().manual_seed(seed)
    before = torch.rand(3, side, side, generator=g) * 0.4 - 0.2
    after = before.clone()
    after[:, y:y + size, x:x + size] = colour[:, None, None]
    return torch.stack([before, after])


@pytest.mark.parametrize("x,y", [(4, 6), (90, 20), (50, 100), (118, 118)])
def test_window_holds_the_change_in_both_images_and_either_order(x, y):
    zoom = ChangeZoom(out_dim=16, crop=32, width=32)
    pixels = pair_with_square(128, x, y, 8, torch.tensor([1.0, -1.0, 1.0]))
    box = zoom.locate(pixels[0:1], pixels[1:2])[0].tolist()
    assert box[2] - box[0] == box[3] - box[1] == 32
    assert 0 <= box[0] and box[2] <= 128 and 0 <= box[1] and box[3] <= 128
    cx, cy = x + 4, y + 4
    assert box[0] <= cx < box[2] and box[1] <= cy < box[3]
    assert zoom.locate(pixels[1:2], pixels[0:1])[0].tolist() == box


def test_zoom_moves_with_the_change_and_reads_the_window():
    zoom = ChangeZoom(out_dim=16, crop=32, width=32)
    torch.nn.init.normal_(zoom.out.weight)  # trained-like: a fresh zoom adds nothing
    colour = torch.tensor([1.0, -1.0, 1.0])
    left, right = pair_with_square(128, 10, 10, 8, colour), pair_with_square(128, 100, 100, 8, colour)
    a, b = zoom(left), zoom(right)
    assert a.boxes[0, 0] < 40 and b.boxes[0, 0] > 70
    assert not torch.allclose(a.added, b.added)
    # the background outside the window does not reach it
    outside = left.clone()
    outside[:, :, 90:, 90:] = 0.7
    torch.testing.assert_close(zoom(outside).added, a.added)


def test_a_pair_described_alone_is_read_as_in_a_batch():
    # the reader normalises with batch statistics while training (BatchNorm: GroupNorm never learned
    # the sign's word); described, a pair must not depend on what else is in its batch
    zoom = ChangeZoom(out_dim=16, crop=32, width=32)
    torch.nn.init.normal_(zoom.out.weight)
    colours = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 0.0], [0.5, 0.5, -1.0]])
    pairs = [pair_with_square(128, 10 + 40 * i, 30 + 20 * i, 8, c, seed=i) for i, c in enumerate(colours)]
    for _ in range(3):  # training steps move the running statistics
        zoom(torch.cat(pairs))
    zoom.eval()
    with torch.no_grad():
        together = zoom(torch.cat(pairs)).added
        alone = torch.cat([zoom(p).added for p in pairs])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    zoom.train()
    with torch.no_grad():  # while training the batch does matter: the test above is not vacuous
        assert not torch.allclose(zoom(pairs[0]).added, zoom(torch.cat(pairs)).added[:2], atol=1e-5)


def test_fresh_zoom_describes_exactly_as_without_it(make_model, processor, pair):
    plain = make_model(seed=1)
    zoomed = make_model(seed=1, zoom_crop=16, zoom_width=32)
    missing = zoomed.load_state_dict(plain.state_dict(), strict=False)
    assert missing.missing_keys and all(".zoom." in f".{k}" for k in missing.missing_keys)
    batch = processor.encode_pairs([pair, pair[::-1]])
    torch.testing.assert_close(zoomed(**batch).logits, plain(**batch).logits, rtol=0, atol=0)
    assert zoomed.num_parameters_by_part()["zoom"] > 0 and plain.num_parameters_by_part()["zoom"] == 0


@pytest.mark.parametrize("use_mdp", [True, False], ids=["mdp", "no-mdp"])
def test_zoom_reaches_the_llm_and_survives_save_load(make_model, processor, pair, tmp_path, use_mdp):
    model = make_model(seed=2, zoom_crop=16, zoom_width=32, use_mdp=use_mdp)
    torch.nn.init.normal_(model.model.zoom.out.weight)
    batch = processor.encode_pairs([pair, pair[::-1]])
    features = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"],
                                              batch_num_images=batch["batch_num_images"])
    assert features.zoom_boxes.shape == (2, 4)
    logits = model(**batch).logits
    with torch.no_grad():
        model.model.zoom.out.weight.zero_()
    assert not torch.allclose(model(**batch).logits, logits)
    with torch.no_grad():
        torch.manual_seed(5)
        torch.nn.init.normal_(model.model.zoom.out.weight)
    model.save_pretrained(tmp_path)
    loaded = M3DiffForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.zoom_crop == 16
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("use_mdp", [True, False], ids=["mdp", "no-mdp"])
def test_a_zoom_token_changes_only_each_images_newline_token(make_model, processor, pair, use_mdp):
    plain = make_model(seed=3, use_mdp=use_mdp)
    zoomed = make_model(seed=3, zoom_crop=16, zoom_width=32, zoom_token=True, use_mdp=use_mdp)
    zoomed.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(zoomed.model.zoom.out.weight)
    batch = processor.encode_pairs([pair, pair[::-1]])
    args = batch["pixel_values"], batch["image_sizes"]
    with torch.no_grad():
        base = plain.model.get_image_features(*args, batch_num_images=batch["batch_num_images"]).pooler_output
        read = zoomed.model.get_image_features(*args, batch_num_images=batch["batch_num_images"])
    assert len(base) == len(read.pooler_output) == 4
    for b, z in zip(base, read.pooler_output):
        torch.testing.assert_close(z[:-1], b[:-1], rtol=0, atol=0)  # the image's own tokens, untouched
        torch.testing.assert_close(b[-1], plain.model.image_newline.to(b.dtype))  # the last one is the newline
        assert (z[-1] - b[-1]).norm() > 1e-3  # which carries the read
    with torch.no_grad():
        assert not torch.allclose(zoomed(**batch).logits, plain(**batch).logits)


def test_zoom_needs_pairs(make_model, processor, pair):
    model = make_model(zoom_crop=16, zoom_width=32, use_mdp=False)
    batch = processor(images=[[pair[0]]], text=[processor.prompt().replace("<image>", "", 1)], return_tensors="pt")
    with pytest.raises(ValueError, match="exactly two images"):
        model(**batch)


@pytest.mark.parametrize("field,value", [("zoom_crop", 12), ("zoom_crop", -8), ("zoom_width", 48), ("zoom_token", True)])
def test_bad_zoom_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        preset("tiny", **{field: value})


def test_the_reader_learns_what_is_in_its_window():
    """Trained briefly on which of four colours a square that appeared somewhere has, the zoom reads it
    on held-out pairs with the square at new places — a reader that ignored the window could not
    (chance 25%; a mean over the whole image dilutes an 8-px square on 64 px 64-fold)."""
    torch.manual_seed(0)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])

    def batch(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(4, (n,), generator=g)
        xy = torch.randint(0, 56, (n, 2), generator=g)
        pixels = torch.cat([pair_with_square(64, int(x), int(y), 8, colours[c], seed=seed * 1000 + i)
                            for i, (c, (x, y)) in enumerate(zip(labels, xy))])
        return pixels, labels

    zoom = ChangeZoom(out_dim=8, crop=16, width=32)
    head = torch.nn.Linear(32, 4)
    opt = torch.optim.AdamW([*zoom.parameters(), *head.parameters()], lr=3e-3)
    for step in range(60):
        pixels, labels = batch(16, step)
        read = zoom(pixels).read[1::2]  # the after image holds the square
        loss = F.cross_entropy(head(read), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pixels, labels = batch(64, 10_000)
    with torch.no_grad():
        accuracy = (head(zoom(pixels).read[1::2]).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


def test_a_window_on_the_padded_square_lands_on_the_original_image():
    from m3diff.describing import window_to_image

    # a 200 × 100 image sits in the middle band of its 200-px square (50 px of padding above)
    assert window_to_image((0.0, 0.25, 0.5, 0.75), (200, 100)) == (0, 0, 100, 100)
    assert window_to_image((0.5, 0.5, 1.0, 1.0), (200, 100)) == (100, 50, 200, 100)  # clipped at the bottom
    assert window_to_image((0.0, 0.0, 1.0, 1.0), (64, 64)) == (0, 0, 64, 64)


def test_describe_says_where_the_zoom_read_and_it_is_where_the_pair_differs(make_model, processor):
    from PIL import Image

    from m3diff.describing import GenerationSettings, window_to_image
    from m3diff.pipeline import DiffCaptioner

    rng = torch.Generator().manual_seed(0)
    base = (torch.rand(48, 64, 3, generator=rng) * 120 + 60).to(torch.uint8).numpy()
    changed = base.copy()
    changed[30:38, 48:56] = (255, 0, 0)  # a red square, lower right
    before, after = Image.fromarray(base), Image.fromarray(changed)
    captioner = DiffCaptioner(make_model(seed=1, zoom_crop=16, zoom_width=32), processor, source="test")
    d = captioner.describe(before, after, settings=GenerationSettings(max_new_tokens=2))
    x0, y0, x1, y1 = window_to_image(d.zoom_window, before.size)
    assert x0 <= 52 < x1 and y0 <= 34 < y1
    assert d.to_json()["zoom_window"] == pytest.approx(list(d.zoom_window), abs=1e-6)
    *_, last = captioner.describe_stream(before, after, settings=GenerationSettings(max_new_tokens=2))
    assert last.zoom_window == d.zoom_window
    plain = DiffCaptioner(make_model(seed=1), processor, source="test")
    assert plain.describe(before, after, settings=GenerationSettings(max_new_tokens=2)).zoom_window is None


def test_the_reader_runs_in_float32_under_cpu_bf16_autocast():
    # on a CPU its convolutions in bf16 took 10x the float32 time (m3diff/zoom.py)
    import torch

    from m3diff.zoom import ChangeZoom

    zoom = ChangeZoom(8, crop=16, width=32).eval()
    crops = torch.randn(3, 3, 16, 16)
    with torch.autocast("cpu", torch.bfloat16):
        read = zoom.read(crops)
        added = zoom.out(read)
    assert read.dtype == torch.float32 and added.dtype == torch.bfloat16  # the projection still follows autocast
    assert torch.allclose(read, zoom.read(crops), atol=1e-5)
