"""load_image: every kind of bad or unusual input becomes RGB or one clear ImageError."""
import io

import numpy as np
import pytest
from PIL import Image

from m3diff.images import ImageError, ImageLimits, load_image


def png_bytes(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "1"])
def test_modes_are_converted_to_rgb(mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    image = base.convert(mode) if mode not in ("I;16", "I") else Image.fromarray(
        (np.random.default_rng(1).integers(0, 65535, (20, 30))).astype(np.uint16 if mode == "I;16" else np.int32), mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(png_bytes(image, fmt))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = (np.linspace(0, 65535, 30 * 20).reshape(20, 30)).astype(np.uint16)
    out = np.asarray(load_image(Image.fromarray(ramp, "I;16")))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 100


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert load_image(rgba).getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = load_image(png_bytes(image, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_paths_arrays_and_files(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (16, 16), "blue").save(path)
    assert load_image(path).size == (16, 16)
    assert load_image(str(path)).getpixel((0, 0)) == (0, 0, 255)
    assert load_image(np.zeros((16, 16), dtype=np.float32)).mode == "RGB"
    with open(path, "rb") as f:
        assert load_image(f).size == (16, 16)


@pytest.mark.parametrize(
    "src, message",
    [
        (b"not an image at all", "not an image"),
        (b"", "empty"),
        (png_bytes(Image.new("RGB", (1, 1))), "only 1×1"),
        (png_bytes(Image.new("RGB", (64, 64)))[:60], "truncated|not an image"),
    ],
)
def test_bad_inputs_give_clear_errors(src, message):
    with pytest.raises(ImageError, match=message):
        load_image(src)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png", name="before image")


def test_decompression_bomb_is_refused_before_decoding():
    # A 1-colour PNG of 12000×12000 compresses to a few kB but would take 432 MB decoded.
    bomb = png_bytes(Image.new("L", (12000, 12000)))
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="MP|decompression bomb"):
        load_image(bomb, limits=ImageLimits(max_pixels=50_000_000))


def test_truncated_file_with_intact_header():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = png_bytes(noise)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_huge_declared_size_trips_pil_bomb_guard_as_our_error():
    bomb = png_bytes(Image.new("1", (15000, 15000)))  # 225 MP: over PIL's own hard limit
    with pytest.raises(ImageError, match="decompression bomb|MP"):
        load_image(bomb)
