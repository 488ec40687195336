"""The ``render`` domain: a perspective camera over a textured ground plane, flat-shaded solids
with cast shadows, an articulated figure, signs with text and arrows.

Drawn at twice the output size and box-filtered down (cheap anti-aliasing). A viewpoint change is
a real camera move: every object and the floor are re-projected. Each object's drawn extent,
shadow included, is returned so that tests and analysis can check where a change is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from m3diff.data.synth.fonts import FontCache
from m3diff.data.synth.scene import COLORS, POSES, RENDER_SHAPES, Obj, Scene

SS = 2  # supersampling factor
FOV = math.radians(46)
SHADOW_DARKEN = 0.42
AMBIENT = 0.38
SKIN = (232, 190, 160)
TROUSERS = (55, 58, 80)
TABLE_HALF = (2.6, 2.1)  # half extents of the area objects stand on (x, y), metres
FIGURE_HEIGHT = 1.45
SIGN_BOARD = (1.25, 0.62, 0.56)  # width, height, height of its lower edge


@dataclass(frozen=True)
class View:
    C: np.ndarray
    r: np.ndarray
    u: np.ndarray
    f: np.ndarray
    focal: float
    W: int


def make_view(scene: Scene, W: int) -> View:
    cam = scene.camera
    f = np.array([math.sin(cam.yaw) * math.cos(cam.elev), math.cos(cam.yaw) * math.cos(cam.elev), -math.sin(cam.elev)])
    C = -cam.dist * f
    r = np.array([math.cos(cam.yaw), -math.sin(cam.yaw), 0.0])
    u = np.cross(r, f)
    return View(C, r, u, f, W / (2 * math.tan(FOV / 2)), W)


def project(v: View, P: np.ndarray) -> np.ndarray:
    """[..., 3] world points → [..., 2] pixel coordinates."""
    d = P - v.C
    z = np.maximum(d @ v.f, 1e-3)
    return np.stack([v.W / 2 + v.focal * (d @ v.r) / z, v.W / 2 - v.focal * (d @ v.u) / z], axis=-1)


def ground_coords(scene: Scene, o: Obj) -> tuple[float, float]:
    """Where an object stands as the camera sees it: (left -1 … right +1, back -1 … front +1)."""
    yaw = scene.camera.yaw
    lat = o.x * math.cos(yaw) - o.y * math.sin(yaw)
    dep = o.x * math.sin(yaw) + o.y * math.cos(yaw)
    return lat / TABLE_HALF[0], -dep / TABLE_HALF[1]


def facing_axes(yaw: float) -> dict[str, float]:
    """World angles of the four camera-relative directions for a camera at ``yaw``."""
    return {"right": -yaw, "left": math.pi - yaw, "back": math.pi / 2 - yaw, "front": -math.pi / 2 - yaw}


def light_dir(scene: Scene) -> np.ndarray:
    li = scene.light
    return np.array([math.cos(li.elevation) * math.cos(li.azimuth), math.cos(li.elevation) * math.sin(li.azimuth),
                     math.sin(li.elevation)])


def solid_size(o: Obj) -> float:
    return 0.8 if o.size == "large" else 0.48


def _ring(n, radius, z, cx, cy, phase=0.0):
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a), np.full(n, z)], axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _band(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Quads [n, 4, 3] between two closed rings [n, 3]."""
    return np.stack([lo, np.roll(lo, -1, 0), np.roll(hi, -1, 0), hi], axis=1)


def mesh(o: Obj) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces (vertices [k, 3], outward normal [3]) of a solid or an arrow, in drawing order."""
    a = solid_size(o)
    up = np.array([0.0, 0.0, 1.0])
    c = np.array([o.x, o.y, 0.0])
    if o.kind in ("cube", "cylinder"):
        n = 4 if o.kind == "cube" else 14
        phase = o.angle + (math.pi / 4 if n == 4 else 0.0)
        rad = a / math.sqrt(2) if n == 4 else a / 2
        base = _ring(n, rad, 0.0, o.x, o.y, phase)
        top = base + a * up
        quads = _band(base, top)
        normals = _unit((quads[:, 0] + quads[:, 1]) / 2 - c) * np.array([1.0, 1.0, 0.0])
        return list(zip(quads, _unit(normals))) + [(top, up)]
    if o.kind in ("cone", "pyramid"):
        n = 4 if o.kind == "pyramid" else 14
        phase = o.angle + (math.pi / 4 if n == 4 else 0.0)
        rad = a / math.sqrt(2) if n == 4 else a / 2
        h = 0.95 * a if n == 4 else 1.1 * a
        base = _ring(n, rad, 0.0, o.x, o.y, phase)
        apex = np.broadcast_to(c + h * up, base.shape)
        tris = np.stack([base, np.roll(base, -1, 0), apex], axis=1)
        radial = _unit(((tris[:, 0] + tris[:, 1]) / 2 - c) * np.array([1.0, 1.0, 0.0]))
        normals = _unit(radial * h + up * rad * math.cos(math.pi / n))  # slant of a face at the in-radius
        return list(zip(tris, normals))
    if o.kind == "ball":
        rad, lat_n, lon_n = a / 2, 7, 12
        th = np.linspace(0, np.pi, lat_n + 1)[:, None]
        ph = o.angle + np.linspace(0, 2 * np.pi, lon_n + 1)[None]
        ctr = c + rad * up
        pts = ctr + rad * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th) + 0 * ph], axis=-1)
        quads = np.stack([pts[:-1, :-1], pts[:-1, 1:], pts[1:, 1:], pts[1:, :-1]], axis=2).reshape(-1, 4, 3)
        return list(zip(quads, _unit(quads.mean(1) - ctr)))
    if o.kind == "arrow":
        length = 1.6 * a
        outline = np.array([(-0.5, -0.11), (0.08, -0.11), (0.08, -0.3), (0.5, 0.0), (0.08, 0.3), (0.08, 0.11),
                            (-0.5, 0.11)]) * length
        ca, sa = math.cos(o.angle), math.sin(o.angle)
        xy = np.stack([o.x + outline[:, 0] * ca - outline[:, 1] * sa, o.y + outline[:, 0] * sa + outline[:, 1] * ca], 1)
        bot = np.concatenate([xy, np.zeros((7, 1))], 1)
        top = bot + 0.12 * up
        quads = _band(bot, top)
        e = np.roll(xy, -1, 0) - xy
        normals = _unit(np.stack([e[:, 1], -e[:, 0], np.zeros(7)], 1))  # counter-clockwise outline: right normal is outward
        return list(zip(quads, normals)) + [(top, up)]
    raise ValueError(f"no mesh for {o.kind!r}")


def figure_segments(o: Obj) -> list[tuple[np.ndarray, np.ndarray, float, tuple[int, int, int]]]:
    """Articulated figure as 3D segments (start, end, thickness, colour); the head is a segment of
    length zero (a disc)."""
    H = FIGURE_HEIGHT
    arms_legs = POSES[o.pose]
    hx, hy = math.cos(o.angle), math.sin(o.angle)

    def P(h, z):
        return np.array([o.x + h * hx, o.y + h * hy, z])

    shirt = COLORS[o.color]
    hip, neck = (0.0, 0.5 * H), (0.0, 0.82 * H)
    segs = []
    for side, (a1, a2), (l1, l2), origin, colour, th in (
        (-1, arms_legs[2], (0.25 * H, 0.24 * H), (-0.05 * H, 0.5 * H), TROUSERS, 0.075 * H),
        (1, arms_legs[3], (0.25 * H, 0.24 * H), (0.05 * H, 0.5 * H), TROUSERS, 0.075 * H),
    ):
        k = (origin[0] + side * l1 * math.sin(math.radians(a1)), origin[1] - l1 * math.cos(math.radians(a1)))
        e = (k[0] + side * l2 * math.sin(math.radians(a2)), k[1] - l2 * math.cos(math.radians(a2)))
        segs += [(P(*origin), P(*k), th, colour), (P(*k), P(*e), th, colour)]
    segs.append((P(*hip), P(*neck), 0.12 * H, shirt))
    for side, (a1, a2) in ((-1, arms_legs[0]), (1, arms_legs[1])):
        s = (side * 0.07 * H, 0.8 * H)
        el = (s[0] + side * 0.19 * H * math.sin(math.radians(a1)), s[1] - 0.19 * H * math.cos(math.radians(a1)))
        hd = (el[0] + side * 0.17 * H * math.sin(math.radians(a2)), el[1] - 0.17 * H * math.cos(math.radians(a2)))
        segs += [(P(*s), P(*el), 0.06 * H, shirt), (P(*el), P(*hd), 0.055 * H, shirt)]
    head = P(0.0, 0.93 * H)
    segs.append((head, head, 0.17 * H, SKIN))  # the same array twice marks a disc
    return segs


def sign_geometry(o: Obj) -> tuple[np.ndarray, np.ndarray]:
    """The post (2 points) and the board (4 corners) of a sign facing along ``o.angle``."""
    w, h, z0 = SIGN_BOARD
    hx, hy = math.cos(o.angle), math.sin(o.angle)
    post = np.array([[o.x, o.y, 0.0], [o.x, o.y, z0]])
    board = np.array([[o.x - w / 2 * hx, o.y - w / 2 * hy, z0], [o.x + w / 2 * hx, o.y + w / 2 * hy, z0],
                      [o.x + w / 2 * hx, o.y + w / 2 * hy, z0 + h], [o.x - w / 2 * hx, o.y - w / 2 * hy, z0 + h]])
    return post, board


def _shadow(P: np.ndarray, L: np.ndarray) -> np.ndarray:
    return P - (P[..., 2:3] / L[2]) * L


def _hull(pts: np.ndarray) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of [N, 2] points; duplicates are dropped first with numpy,
    because a mesh repeats each vertex in up to four faces."""
    q = np.round(pts, 1)
    q = q[np.lexsort((q[:, 1], q[:, 0]))]
    keep = np.ones(len(q), bool)
    keep[1:] = np.any(q[1:] != q[:-1], axis=1)
    pts = q[keep].tolist()
    if len(pts) < 3:
        return [tuple(p) for p in pts]

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return [tuple(p) for p in lower[:-1] + upper[:-1]]


def _floor(scene: Scene, v: View, size: int) -> np.ndarray:
    """Ground texture with fog and the backdrop above the horizon, [W, W, 3] float. Computed at the
    output size and upsampled: the texture has no detail worth supersampling."""
    g = ((np.arange(size, dtype=np.float32) + 0.5) * SS - v.W / 2) / v.focal
    gx, gy = g[None, :], g[:, None]
    dx = v.f[0] + gx * v.r[0] - gy * v.u[0]
    dy = v.f[1] + gx * v.r[1] - gy * v.u[1]
    dz = v.f[2] + gx * v.r[2] - gy * v.u[2]
    ground = dz < -1e-4
    t = np.where(ground, -v.C[2] / np.where(ground, dz, -1.0), 0.0).astype(np.float32)
    X = v.C[0] + t * dx
    Y = v.C[1] + t * dy
    a = np.array(scene.floor_colors[0], np.float32)
    b = np.array(scene.floor_colors[1], np.float32)
    if scene.floor == "checker":
        m = ((np.floor(X / 0.8) + np.floor(Y / 0.8)) % 2)[..., None]
        col = a * (1 - m) + b * m
    elif scene.floor == "planks":
        m = (np.floor(Y / 0.45) % 2)[..., None]
        seam = (np.abs((Y / 0.45) - np.round(Y / 0.45)) < 0.05)[..., None]
        col = (a * (1 - m) + (0.6 * a + 0.4 * b) * m) * np.where(seam, 0.8, 1.0)
    elif scene.floor == "grid":
        line = ((np.abs(X / 0.7 - np.round(X / 0.7)) < 0.05) | (np.abs(Y / 0.7 - np.round(Y / 0.7)) < 0.05))[..., None]
        col = np.where(line, b, a)
    else:
        col = a * (0.95 + 0.05 * (np.sin(X * 1.3) * np.cos(Y * 1.1))[..., None])
    col = col * (0.62 + 0.38 * math.sin(scene.light.elevation))
    wall = np.array(scene.wall, np.float32)
    fog = np.clip((t - 10.0) / 14.0, 0.0, 1.0)[..., None]
    col = col * (1 - fog) + wall * fog
    sky = wall * (0.9 + 0.1 * np.linspace(0, 1, size, dtype=np.float32))[:, None, None]
    small = np.where(ground[..., None], col, sky).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((v.W, v.W), Image.BILINEAR), np.float32)


class RenderCache:
    """Floors keyed by everything they depend on: the before and after image of a pair usually
    share one. Owned by one worker; bounded so a long run does not grow it."""

    def __init__(self, fonts: FontCache | None = None, max_floors: int = 8):
        self.fonts = fonts or FontCache()
        self._floors: dict = {}
        self._max = max_floors

    def floor(self, scene: Scene, v: View, size: int) -> np.ndarray:
        key = (scene.floor, scene.floor_colors, scene.wall, scene.camera, scene.light.elevation, size)
        if key not in self._floors:
            if len(self._floors) >= self._max:
                self._floors.pop(next(iter(self._floors)))
            self._floors[key] = _floor(scene, v, size)
        return self._floors[key]


def render(scene: Scene, size: int, cache: RenderCache) -> tuple[Image.Image, dict[int, tuple[int, int, int, int]]]:
    """The image of ``scene`` and, per object uid, its box [x0, y0, x1, y1) in output pixels
    (body and shadow)."""
    W = size * SS
    v = make_view(scene, W)
    L = light_dir(scene)
    floor = cache.floor(scene, v, size)
    shadow = Image.new("L", (W, W), 0)
    sd = ImageDraw.Draw(shadow)
    extents: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    drawn = []
    for o in scene.objects:
        if o.kind in RENDER_SHAPES or o.kind == "arrow":
            faces = mesh(o)
            allv = np.concatenate([f for f, _ in faces])
            sh = project(v, _shadow(allv, L))
            sd.polygon(_hull(sh), fill=255)
            q = project(v, allv)
            pts = np.concatenate([sh, q])
            drawn.append((o, "mesh", (faces, q)))
        elif o.kind == "figure":
            segs = figure_segments(o)
            ends = np.array([[a, b] for a, b, _, _ in segs])  # [S, 2, 3]
            dist = np.linalg.norm(ends[:, 0] - v.C, axis=1)
            widths = [max(1, int(round(v.focal * th / d))) for (_, _, th, _), d in zip(segs, dist)]
            sp = project(v, _shadow(ends, L))
            q = project(v, ends)
            for (pa, pb), w in zip(sp, widths):
                sd.line([tuple(pa), tuple(pb)], fill=255, width=w)
                sd.ellipse([pb[0] - w / 2, pb[1] - w / 2, pb[0] + w / 2, pb[1] + w / 2], fill=255)
            wmax = max(widths)
            pts = np.concatenate([sp.reshape(-1, 2), q.reshape(-1, 2)])
            pts = np.concatenate([pts - wmax / 2 - 1, pts + wmax / 2 + 1])
            drawn.append((o, "figure", (segs, q, widths)))
        elif o.kind == "sign":
            post, board = sign_geometry(o)
            bs = project(v, _shadow(board, L))
            ps = project(v, _shadow(post, L))
            wp = max(1, int(round(v.focal * 0.07 / np.linalg.norm(post[0] - v.C))))
            sd.polygon([tuple(p) for p in bs], fill=255)
            sd.line([tuple(ps[0]), tuple(ps[1])], fill=255, width=wp)
            qb, qp = project(v, board), project(v, post)
            pts = np.concatenate([bs, ps - wp, ps + wp, qb, qp - wp, qp + wp])
            drawn.append((o, "sign", (qb, qp, wp)))
        else:
            raise ValueError(f"the render domain cannot draw {o.kind!r}")
        extents[o.uid] = (pts.min(0), pts.max(0))
    m = np.asarray(shadow, np.float32)[..., None] * (SHADOW_DARKEN / 255.0)
    img = Image.fromarray(np.clip(floor * (1 - m), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    depth = {o.uid: float((np.array([o.x, o.y, 0.3]) - v.C) @ v.f) for o in scene.objects}
    for o, what, data in sorted(drawn, key=lambda t: -depth[t[0].uid]):
        if what == "mesh":
            faces, q = data
            k = [len(f) for f, _ in faces]
            starts = np.concatenate([[0], np.cumsum(k)])
            order = range(len(faces))
            if o.kind == "arrow":  # not convex: sides far to near, then the top
                d = [float((f.mean(0) - v.C) @ v.f) for f, _ in faces[:-1]]
                order = sorted(range(len(faces) - 1), key=lambda i: -d[i]) + [len(faces) - 1]
            normals = np.array([n for _, n in faces])  # [F, 3]
            firsts = np.array([f[0] for f, _ in faces])
            visible = ((v.C - firsts) * normals).sum(1) > 0
            shade = AMBIENT + (1 - AMBIENT) * np.clip(normals @ L, 0.0, None)
            fills = np.rint(np.array(COLORS[o.color], np.float64)[None] * shade[:, None]).astype(int).tolist()
            pts = q.tolist()
            for i in order:
                if visible[i]:
                    draw.polygon([tuple(p) for p in pts[starts[i]:starts[i + 1]]], fill=tuple(fills[i]))
        elif what == "figure":
            segs, q, widths = data
            for (a, b, _, colour), (pa, pb), w in zip(segs, q, widths):
                if a is not b:
                    draw.line([tuple(pa), tuple(pb)], fill=colour, width=w)
                for p in (pa, pb):
                    draw.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=colour)
        else:
            q, pp, wp = data
            draw.line([tuple(pp[0]), tuple(pp[1])], fill=(90, 70, 50), width=wp)
            draw.polygon([tuple(p) for p in q], fill=(246, 242, 228), outline=(60, 60, 60), width=max(1, wp // 2))
            bw = float(np.linalg.norm(q[1] - q[0]))
            bh = float(np.linalg.norm(q[3] - q[0]))
            font = cache.fonts.fit(o.text, 0.84 * bw, 0.62 * bh)
            c = q.mean(0)
            draw.text((float(c[0]), float(c[1])), o.text, fill=(25, 25, 25), font=font, anchor="mm")
    li = scene.light
    if li.intensity != 1.0 or li.tint != (1.0, 1.0, 1.0):
        k = np.array(li.tint, np.float32) * li.intensity
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) * k, 0, 255).astype(np.uint8))
    img = img.reduce(SS)
    boxes = {}
    for uid, (lo, hi) in extents.items():
        x0, y0 = (int(math.floor(c / SS)) - 1 for c in lo)
        x1, y1 = (int(math.ceil(c / SS)) + 1 for c in hi)
        boxes[uid] = (max(0, x0), max(0, y0), min(size, x1), min(size, y1))
    return img, boxes
