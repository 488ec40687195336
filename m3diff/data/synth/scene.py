"""The scene model shared by both domains: objects, camera, light, and the closed vocabularies.

A scene is immutable; a change is a new scene made with ``dataclasses.replace``. Objects live in
world coordinates: the ground plane (metres, centred on the table) for ``render``, the unit square
of the background photo tile for ``photo``. Renderers turn a scene into pixels; the caption writer
reads the same objects, so captions can only say what the pixels show.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Saturated, well-separated colours so that a 128-px image still tells them apart under shading.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 40),
    "green": (45, 165, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 190),
    "gray": (135, 135, 135),
}
COLOR_NAMES = tuple(COLORS)

RENDER_SHAPES = ("cube", "ball", "cylinder", "cone", "pyramid")
PHOTO_SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SHAPES = {"render": RENDER_SHAPES, "photo": PHOTO_SHAPES}
SPECIAL_KINDS = ("figure", "sign", "arrow")  # carry pose, text and a pointing direction
SIZES = ("small", "large")

# Articulated figure poses: (upper arm, forearm) per arm and (thigh, shin) per leg, degrees from
# hanging straight down, positive away from the body.
POSES: dict[str, tuple[tuple[float, float], ...]] = {
    "standing": ((12, 8), (12, 8), (4, 2), (4, 2)),
    "waving": ((12, 8), (135, 170), (4, 2), (4, 2)),
    "arms_up": ((160, 172), (160, 172), (4, 2), (4, 2)),
    "arms_out": ((90, 90), (90, 90), (6, 4), (6, 4)),
    "kicking": ((40, 30), (40, 30), (4, 2), (75, 85)),
    "pointing": ((12, 8), (90, 90), (4, 2), (4, 2)),
}
POSE_NAMES = tuple(POSES)
# Camera-relative in ``render`` (back = away from the camera); image-relative in ``photo``.
DIRECTIONS = {"render": ("left", "right", "back", "front"), "photo": ("left", "right", "up", "down")}

SIGN_WORDS = (
    "OPEN", "CLOSED", "SALE", "EXIT", "STOP", "CAFE", "BAR", "HOTEL", "PARK", "BANK", "TAXI", "BUS",
    "FOOD", "BOOKS", "SHOP", "GAS", "INN", "PIZZA", "TEA", "MILK", "FISH", "BREAD", "WINE", "BEER",
    "SUSHI", "TOYS", "SHOES", "HATS", "MAPS", "GIFTS", "POST", "CLUB", "GYM", "SPA", "ZOO", "DELI",
    "BAKERY", "FRUIT", "JAZZ", "PUB", "CINEMA", "MUSEUM", "LIBRARY", "POLICE", "SCHOOL", "MARKET",
    "GARAGE", "FARM", "RADIO", "PHOTO", "MUSIC", "DINER", "KIOSK", "FLOWERS", "CANDY", "ICE", "SOAP",
    "LAMPS", "TOOLS", "WATER", "EAST", "WEST", "NORTH", "SOUTH", "HELLO", "WELCOME", "SORRY", "FREE",
    "NEW", "OLD", "HOT", "COLD", "LEFT", "RIGHT", "UP", "DOWN", "YES", "NO", "PUSH", "PULL",
    "BIKES", "BOATS", "CARS", "RENT", "HOSTEL", "MOTEL", "TICKETS", "TRAIN", "METRO", "TRAM", "PORT",
    "BEACH", "POOL", "SAUNA", "CHURCH", "CASTLE", "TOWER", "BRIDGE", "RIVER", "LAKE", "HILL", "FOREST",
    "GARDEN", "PLAZA", "MALL", "OFFICE", "STUDIO", "GALLERY", "THEATER", "OPERA", "CIRCUS", "ARCADE",
    "CASINO", "LOTTERY", "PHARMACY", "CLINIC", "DENTIST", "DOCTOR", "NURSE", "VET", "PETS", "DOGS",
    "CATS", "BIRDS", "SEEDS", "PLANTS", "TREES", "CORN", "RICE", "SOUP", "SALAD", "BURGER", "TACOS",
    "NOODLES", "COOKIES", "CAKE", "HONEY", "JAM", "CHEESE", "BUTTER", "EGGS", "MEAT", "GRILL", "JUICE",
    "COFFEE", "COCOA", "LEMON", "APPLE", "MANGO", "PEACH", "PLUM", "GRAPES", "MELON", "BERRY", "SALT",
    "SUGAR", "OIL", "PAINT", "GLASS", "WOOD", "STONE", "STEEL", "GOLD", "SILVER", "RUBY", "PEARL",
)

# Floors of the render domain: muted, so the saturated objects stand out.
FLOOR_PATTERNS = ("checker", "plain", "planks", "grid")
FLOOR_COLORS = ((196, 188, 170), (170, 170, 175), (150, 160, 140), (185, 165, 140), (160, 150, 165),
                (200, 200, 195), (140, 150, 165), (175, 160, 150))
WALL_COLORS = ((215, 220, 230), (225, 215, 200), (205, 215, 205), (230, 225, 230), (200, 205, 215))

# Background photos that ship with scikit-image (offline); ``page`` and ``text`` are left out so
# that the only text in a photo pair is the sign the OCR changes act on.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "cell",
          "stereo_motorcycle")


@dataclass(frozen=True)
class Obj:
    uid: int
    kind: str
    color: str
    size: str
    x: float
    y: float
    angle: float = 0.0  # rigid yaw of a solid (radians); decorative unless an orientation change
    direction: str = ""  # arrows
    pose: str = ""  # figures
    text: str = ""  # signs
    group: int = -1  # members of a counting group share kind, colour and size


@dataclass(frozen=True)
class Camera:
    yaw: float = 0.0  # render: orbit angle around the table (radians)
    elev: float = 0.74  # render: elevation (radians)
    dist: float = 7.0  # render: distance to the table centre
    cx: float = 0.5  # photo: view window centre in tile units
    cy: float = 0.5
    magnification: float = 1.0  # photo: 1 shows the whole tile
    flip: bool = False  # photo: mirrored tile (a per-pair variation of the scene, never a change)


@dataclass(frozen=True)
class Light:
    azimuth: float = 0.8  # radians; where the light comes from
    elevation: float = 0.9
    intensity: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Scene:
    domain: str  # "render" | "photo"
    scene_id: str
    floor: str = "checker"  # render backdrop
    floor_colors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((196, 188, 170), (170, 170, 175))
    wall: tuple[int, int, int] = (215, 220, 230)
    photo: str = ""  # photo backdrop: skimage name and tile (x0, y0, side) in photo pixels
    tile: tuple[int, int, int] = (0, 0, 0)
    camera: Camera = field(default_factory=Camera)
    light: Light = field(default_factory=Light)
    objects: tuple[Obj, ...] = ()

    def by_uid(self) -> dict[int, Obj]:
        return {o.uid: o for o in self.objects}


def footprint(o: Obj, domain: str) -> float:
    """Radius of the ground (render, metres) or tile (photo, unit square) area an object needs,
    for placement without overlaps."""
    big = o.size == "large"
    if domain == "render":
        table = {"cube": (0.34, 0.57), "ball": (0.3, 0.47), "cylinder": (0.3, 0.47), "cone": (0.3, 0.47),
                 "pyramid": (0.34, 0.57), "arrow": (0.45, 0.68), "figure": (0.45, 0.45), "sign": (0.7, 0.7)}
    else:
        table = {"circle": (0.062, 0.095), "square": (0.062, 0.095), "triangle": (0.066, 0.1),
                 "star": (0.066, 0.1), "diamond": (0.062, 0.095), "hexagon": (0.062, 0.095),
                 "arrow": (0.085, 0.11), "figure": (0.13, 0.13), "sign": (0.14, 0.14)}
    if o.kind not in table:
        raise ValueError(f"unknown object kind {o.kind!r} in the {domain} domain")
    return table[o.kind][big]
