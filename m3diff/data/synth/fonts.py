"""Pillow's built-in scalable font (works offline), one instance per pixel size.

An explicit cache object owned by a generator worker, never a module global.
"""
from __future__ import annotations

from PIL import ImageFont


class FontCache:
    def __init__(self):
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}

    def get(self, px: int) -> ImageFont.FreeTypeFont:
        px = max(4, int(px))
        if px not in self._fonts:
            self._fonts[px] = ImageFont.load_default(size=px)
        return self._fonts[px]

    def fit(self, text: str, width: float, height: float) -> ImageFont.FreeTypeFont:
        """The largest font (up to ``height`` px) whose rendering of ``text`` is at most ``width`` wide."""
        px = max(4, int(height))
        font = self.get(px)
        w = font.getlength(text)
        if w > width:
            font = self.get(int(px * width / w))
        return font
