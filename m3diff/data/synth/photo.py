"""The ``photo`` domain: tiles of the photographs that ship with scikit-image as backgrounds,
flat shaded objects composited into them with drop shadows, and edits of the photo itself
(a viewpoint change is a new, closer crop of the photo, an illumination change a photometric edit).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from m3diff.data.synth.fonts import FontCache
from m3diff.data.synth.render import SS, SKIN, TROUSERS
from m3diff.data.synth.scene import COLORS, PHOTOS, POSES, Obj, Scene, footprint

SHADOW_DARKEN = 0.45
# Photo sizes (H, W) as bundled with scikit-image 0.26, so scenes can be listed without loading
# images; retina is used only inside its central disc.
PHOTO_SHAPES = {"astronaut": (512, 512), "coffee": (400, 600), "chelsea": (300, 451), "rocket": (427, 640),
                "hubble_deep_field": (872, 1000), "immunohistochemistry": (512, 512), "retina": (1411, 1411),
                "camera": (512, 512), "brick": (512, 512), "grass": (512, 512), "gravel": (512, 512),
                "moon": (512, 512), "coins": (303, 384), "clock": (300, 400), "cell": (660, 550),
                "stereo_motorcycle": (500, 741)}
TILE = 256
MAX_TILES_PER_PHOTO = 4


def photo_tiles() -> list[tuple[str, tuple[int, int, int]]]:
    """Every photo scene: (photo name, (x0, y0, side)), non-overlapping tiles, a fixed order."""
    out = []
    for name in PHOTOS:
        H, W = PHOTO_SHAPES[name]
        x_lo, y_lo = 0, 0
        if name == "retina":
            x_lo = y_lo = 300
            H = W = 1100
        side = min(TILE, H - y_lo, W - x_lo)
        rows = (H - y_lo) // side
        cols = (W - x_lo) // side
        cells = [(x_lo + c * side, y_lo + r * side) for r in range(rows) for c in range(cols)]
        step = max(1, len(cells) / MAX_TILES_PER_PHOTO)
        for i in range(min(MAX_TILES_PER_PHOTO, len(cells))):
            x0, y0 = cells[int(i * step)]
            out.append((name, (x0, y0, side)))
    return out


class PhotoLibrary:
    """Loaded photos (RGB, and mirrored), one copy per worker."""

    def __init__(self):
        self._images: dict[tuple[str, bool], Image.Image] = {}

    def get(self, name: str, flip: bool) -> Image.Image:
        key = (name, flip)
        if key not in self._images:
            from skimage import data

            arr = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, -1)
            img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
            self._images[key] = img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img
        return self._images[key]


def window(scene: Scene) -> tuple[float, float, float]:
    """The view window in tile units: left, top, side."""
    cam = scene.camera
    side = 1.0 / cam.magnification
    return cam.cx - side / 2, cam.cy - side / 2, side


def ground_coords(scene: Scene, o: Obj) -> tuple[float, float]:
    """(left -1 … right +1, top -1 … bottom +1) in the image."""
    l, t, s = window(scene)
    return 2 * (o.x - l) / s - 1, 2 * (o.y - t) / s - 1


def light_offset(scene: Scene) -> tuple[float, float]:
    """Direction a shadow falls in the image (away from the light)."""
    a = scene.light.azimuth
    return -math.cos(a), math.sin(a) * 0.6 + 0.4


def _shape_points(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        n, rr, ph = 4, [r * 1.05], math.pi / 4
    elif kind == "diamond":
        n, rr, ph = 4, [r * 1.12, r * 0.75], 0.0
    elif kind == "triangle":
        n, rr, ph = 3, [r * 1.15], -math.pi / 2
    elif kind == "hexagon":
        n, rr, ph = 6, [r], 0.0
    elif kind == "star":
        n, rr, ph = 10, [r * 1.15, r * 0.5], -math.pi / 2
    else:
        raise ValueError(kind)
    if kind == "diamond":
        return [(cx, cy - rr[0]), (cx + rr[1], cy), (cx, cy + rr[0]), (cx - rr[1], cy)]
    pts = []
    for i in range(n):
        a = ph + angle + i * 2 * math.pi / n
        rad = rr[i % len(rr)]
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _arrow_points(cx, cy, length, direction):
    outline = [(-0.5, -0.12), (0.08, -0.12), (0.08, -0.3), (0.5, 0.0), (0.08, 0.3), (0.08, 0.12), (-0.5, 0.12)]
    a = {"right": 0.0, "down": math.pi / 2, "left": math.pi, "up": -math.pi / 2}[direction]
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + length * (x * ca - y * sa), cy + length * (x * sa + y * ca)) for x, y in outline]


def _figure_lines(o: Obj, px, py, scale):
    """(start, end, width, colour) in pixels; feet at (px, py); the head is a disc (start is end)."""
    H = scale
    aa = POSES[o.pose]

    def P(h, z):
        return (px + h, py - z)

    out = []
    for side, (a1, a2), origin in ((-1, aa[2], (-0.05 * H, 0.5 * H)), (1, aa[3], (0.05 * H, 0.5 * H))):
        k = (origin[0] + side * 0.25 * H * math.sin(math.radians(a1)), origin[1] - 0.25 * H * math.cos(math.radians(a1)))
        e = (k[0] + side * 0.24 * H * math.sin(math.radians(a2)), k[1] - 0.24 * H * math.cos(math.radians(a2)))
        out += [(P(*origin), P(*k), 0.075 * H, TROUSERS), (P(*k), P(*e), 0.075 * H, TROUSERS)]
    out.append((P(0, 0.5 * H), P(0, 0.82 * H), 0.12 * H, COLORS[o.color]))
    for side, (a1, a2) in ((-1, aa[0]), (1, aa[1])):
        s = (side * 0.07 * H, 0.8 * H)
        el = (s[0] + side * 0.19 * H * math.sin(math.radians(a1)), s[1] - 0.19 * H * math.cos(math.radians(a1)))
        hd = (el[0] + side * 0.17 * H * math.sin(math.radians(a2)), el[1] - 0.17 * H * math.cos(math.radians(a2)))
        out += [(P(*s), P(*el), 0.06 * H, COLORS[o.color]), (P(*el), P(*hd), 0.055 * H, COLORS[o.color])]
    head = P(0, 0.93 * H)
    out.append((head, head, 0.17 * H, SKIN))
    return out


def _lighten(c, k):
    return tuple(int(round(v + (255 - v) * k)) for v in c)


def _darken(c, k):
    return tuple(int(round(v * (1 - k))) for v in c)


def render(scene: Scene, size: int, library: PhotoLibrary, fonts: FontCache):
    """The image of ``scene`` and, per object uid, its box [x0, y0, x1, y1) in output pixels."""
    W = size * SS
    name, (x0, y0, side) = scene.photo, scene.tile
    photo = library.get(name, scene.camera.flip)
    if scene.camera.flip:
        x0 = photo.width - x0 - side
    l, t, s = window(scene)
    box = (x0 + l * side, y0 + t * side, x0 + (l + s) * side, y0 + (t + s) * side)
    img = photo.resize((W, W), Image.BILINEAR, box=box)
    k = W / s  # tile units → canvas pixels

    def to_px(x, y):
        return (x - l) * k, (y - t) * k

    sx, sy = light_offset(scene)
    shadow = Image.new("L", (W, W), 0)
    sd = ImageDraw.Draw(shadow)
    plans, extents = [], {}
    for o in scene.objects:
        cx, cy = to_px(o.x, o.y)
        r = footprint(o, "photo") * k * 0.92
        off = (sx * 0.3 * r, sy * 0.3 * r)
        if o.kind == "figure":
            lines = _figure_lines(o, cx, cy + 0.5 * r * 2.2, r * 2.2)
            for a, b, w, _ in lines:
                sa = (a[0] + off[0], a[1] + off[1])
                sb = (b[0] + off[0], b[1] + off[1])
                sd.line([sa, sb], fill=255, width=max(1, int(w)))
                sd.ellipse([sb[0] - w / 2, sb[1] - w / 2, sb[0] + w / 2, sb[1] + w / 2], fill=255)
            xs = [p[0] for a, b, _, _ in lines for p in (a, b)]
            ys = [p[1] for a, b, _, _ in lines for p in (a, b)]
            pad = 0.12 * r * 2.2
            ext = (min(xs) - pad - abs(off[0]), min(ys) - pad - abs(off[1]), max(xs) + pad + abs(off[0]), max(ys) + pad + abs(off[1]))
            plans.append((o, "figure", lines))
        elif o.kind == "sign":
            bw, bh = 2.0 * r, 1.05 * r
            rect = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            sd.rectangle((rect[0] + off[0], rect[1] + off[1], rect[2] + off[0], rect[3] + off[1]), fill=255)
            ext = (rect[0] - 1 - abs(off[0]), rect[1] - 1 - abs(off[1]), rect[2] + abs(off[0]) + 1, rect[3] + abs(off[1]) + 1)
            plans.append((o, "sign", rect))
        else:
            if o.kind == "arrow":
                pts = _arrow_points(cx, cy, 2.0 * r, o.direction)
            elif o.kind == "circle":
                pts = None
            else:
                pts = _shape_points(o.kind, cx, cy, r, o.angle)
            if pts is None:
                sd.ellipse((cx - r + off[0], cy - r + off[1], cx + r + off[0], cy + r + off[1]), fill=255)
                xs, ys = [cx - r, cx + r], [cy - r, cy + r]
            else:
                sd.polygon([(x + off[0], y + off[1]) for x, y in pts], fill=255)
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ext = (min(xs) - 2 - abs(off[0]), min(ys) - 2 - abs(off[1]), max(xs) + abs(off[0]) + 2, max(ys) + abs(off[1]) + 2)
            plans.append((o, "shape", (pts, cx, cy, r)))
        extents[o.uid] = ext
    m = np.asarray(shadow, np.float32)[..., None] * (SHADOW_DARKEN / 255.0)
    img = Image.fromarray(np.clip(np.asarray(img, np.float32) * (1 - m), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for o, what, data in plans:
        base = COLORS[o.color]
        if what == "figure":
            for a, b, w, colour in data:
                w = max(1, int(round(w)))
                if a is not b:
                    draw.line([a, b], fill=colour, width=w)
                for p in (a, b):
                    draw.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=colour)
        elif what == "sign":
            rect = data
            draw.rectangle(rect, fill=(246, 242, 228), outline=(50, 50, 50), width=max(1, int(0.08 * (rect[3] - rect[1]))))
            font = fonts.fit(o.text, 0.86 * (rect[2] - rect[0]), 0.66 * (rect[3] - rect[1]))
            draw.text(((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2), o.text, fill=(25, 25, 25), font=font, anchor="mm")
        else:
            pts, cx, cy, r = data
            ow = max(1, int(round(0.1 * r)))
            hx, hy = -sx * 0.18 * r, -sy * 0.18 * r  # highlight toward the light
            if pts is None:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=base, outline=_darken(base, 0.45), width=ow)
                rr = 0.55 * r
                draw.ellipse((cx + hx - rr, cy + hy - rr, cx + hx + rr, cy + hy + rr), fill=_lighten(base, 0.3))
            else:
                draw.polygon(pts, fill=base, outline=_darken(base, 0.45), width=ow)
                if o.kind != "arrow":
                    inner = [(cx + hx + 0.5 * (x - cx), cy + hy + 0.5 * (y - cy)) for x, y in pts]
                    draw.polygon(inner, fill=_lighten(base, 0.3))
    li = scene.light
    if li.intensity != 1.0 or li.tint != (1.0, 1.0, 1.0):
        g = np.array(li.tint, np.float32) * li.intensity
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) * g, 0, 255).astype(np.uint8))
    img = img.reduce(SS)
    boxes = {}
    for uid, (a, b, c, d) in extents.items():
        boxes[uid] = (max(0, int(math.floor(a / SS)) - 1), max(0, int(math.floor(b / SS)) - 1),
                      min(size, int(math.ceil(c / SS)) + 1), min(size, int(math.ceil(d / SS)) + 1))
    return img, boxes
