"""Turning whatever a person hands us into an RGB PIL image, or one clear error saying why not.

Every entry point (CLI, pipeline, app) goes through ``load_image`` so the rules are the same
everywhere: EXIF orientation honoured; palette, grayscale, 16-bit, CMYK and alpha modes converted;
tiny images, truncated files and decompression bombs refused *before* decoding the pixels.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


# A URL, also after pathlib collapsed its "//" ("https:/x"): never a local file name worth trying
_URL = re.compile(r"^(https?|ftp|s3|gs|hf|file):/", re.IGNORECASE)


class ImageError(ValueError):
    """An image that cannot be used; the message says which and why, for a person."""


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 8  # below this there is nothing to describe (and the resize would be meaningless)
    max_pixels: int = 40_000_000  # refuse larger before decoding: a decompression bomb costs memory, not time


DEFAULT_LIMITS = ImageLimits()


def load_image(src, *, name: str = "image", limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """``src``: a path, bytes, a file object, a numpy array or a PIL image. Returns an RGB image."""
    if isinstance(src, Image.Image):
        image, label = src, name
    elif isinstance(src, np.ndarray):
        image, label = _from_array(src, name), name
    else:
        image, label = _open(src, name)
    w, h = image.size
    if w * h > limits.max_pixels:
        raise ImageError(
            f"{label} is {w}×{h} = {w * h / 1e6:.0f} MP, over the limit of {limits.max_pixels / 1e6:.0f} MP "
            "(refused without decoding it, to protect memory); resize it first."
        )
    if min(w, h) < limits.min_side:
        raise ImageError(f"{label} is only {w}×{h} pixels; it needs at least {limits.min_side} on each side.")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError) as exc:  # PIL reports truncated or corrupt data this way
        raise ImageError(f"{label} could not be decoded ({exc}); the file may be truncated or corrupt.") from None
    return to_rgb(image)


def _open(src, name: str) -> tuple[Image.Image, str]:
    label = name
    if isinstance(src, (str, Path)):
        if _URL.match(str(src)):  # Path() would turn "https://x/a.png" into the misleading "https:/x/a.png"
            raise ImageError(f"{name} {src} is a URL: m3diff does not fetch images from the network. Download it "
                             "and pass the file.")
        path = Path(src)
        label = f"{name} {path}"
        if not path.is_file():
            raise ImageError(f"{label} does not exist or is not a file.")
        data = path.read_bytes()
    elif isinstance(src, (bytes, bytearray)):
        data = bytes(src)
    elif hasattr(src, "read"):
        data = src.read()
    else:
        raise ImageError(f"{name}: expected a path, bytes, a file, an array or a PIL image, got {type(src).__name__}.")
    if not data:
        raise ImageError(f"{label} is empty.")
    try:
        # Image.open reads only the header: the size check in load_image runs before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"{label} declares an enormous size (a decompression bomb?); refused without decoding it.") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, TIFF, BMP, GIF…).") from None
    return image, label


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"{name}: an array image must be H×W or H×W×{{1,3,4}}, got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(array)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(array) / hi * 255.0, 0, 255).astype(np.uint8)
    hi = np.iinfo(array.dtype).max if array.max() > 255 else 255
    return (array.astype(np.float64) / hi * 255.0).round().astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB. Alpha is composited over white, as a viewer would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: rescale, don't clip
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
