"""The change zoom (ours, not the paper's): a full-resolution look at where the two images differ.

At the embedded model's 128 px in 16-px patches, a sign's letters are ~7 px and fall at any offset
inside a patch; a from-scratch ViT never learned to read them (per-patch word probes stayed at chance,
docs/training.md), while a small convolutional reader of the sign's crop read the word on 97% of
held-out signs. So the zoom:

    locate   the peak of the pair's pixel difference, averaged over a patch-sized window (the same
             place in both images: what changed is read where it changed)
    crop     a ``crop`` × ``crop`` window there from each image, at the processor's resolution
    read     a small convolutional net (letter-sized filters anywhere in the window), one transformer
             layer over its 8 × 8 cells, mean-pooled: one vector per image
    add      that vector, projected to the LLM's width, to every token of its image (an LLM trained
             from scratch first attends to image tokens uniformly, so a fact broadcast to every
             token reaches it whole)

The output projection starts at zero: a model with a fresh zoom describes exactly as without it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ZoomOutput:
    """``added``: [2B, D] what each image's tokens receive (images ordered before₀, after₀, …);
    ``read``: [2B, W] the reader's pooled features; ``boxes``: [B, 4] the window of each pair (x0, y0,
    x1, y1 in the processor's pixels, the same in both images)."""

    added: torch.Tensor
    read: torch.Tensor
    boxes: torch.Tensor


def _conv(cin: int, cout: int) -> nn.Sequential:
    # BatchNorm, not GroupNorm: the same crop probe with GroupNorm(8) stayed at chance on the sign's
    # word after 5 CPU-minutes where BatchNorm read 82% (docs/training.md, "A change zoom"); described
    # in eval mode, a pair alone is read with the running statistics, as in any batch
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU())


class ChangeZoom(nn.Module):
    def __init__(self, out_dim: int, crop: int = 64, width: int = 128, window: int = 16):
        super().__init__()
        if crop % 8:
            raise ValueError(f"zoom crop {crop} must be a multiple of 8 (three 2x poolings to the cells)")
        self.crop, self.window = crop, window
        self.net = nn.Sequential(_conv(3, width // 4), nn.MaxPool2d(2), _conv(width // 4, width // 2), nn.MaxPool2d(2),
                                 _conv(width // 2, width), nn.MaxPool2d(2), _conv(width, width))
        cells = (crop // 8) ** 2
        self.position = nn.Parameter(torch.zeros(1, cells, width))
        self.mix = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.out = nn.Linear(width, out_dim)

    def reset_output(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def locate(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """[B, 4] long: the window around each pair's peak of patch-averaged pixel difference."""
        diff = (before.float() - after.float()).abs().sum(1, keepdim=True)  # [B, 1, H, W]
        stride = max(1, self.window // 4)
        pooled = F.avg_pool2d(diff, self.window, stride=stride)  # [B, 1, h, w]
        w = pooled.shape[-1]
        peak = pooled.flatten(1).argmax(1)
        centres = torch.stack([(peak % w) * stride, (peak // w) * stride], 1) + self.window // 2
        return self._boxes(centres, *before.shape[-2:])

    def _boxes(self, centres: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[n, 4] long: ``crop``-sided windows around ``centres`` [n, 2] (x, y), kept inside the image."""
        c = min(self.crop, height, width)
        x0 = (centres[:, 0].round().long() - c // 2).clamp(0, width - c)
        y0 = (centres[:, 1].round().long() - c // 2).clamp(0, height - c)
        return torch.stack([x0, y0, x0 + c, y0 + c], 1)

    @staticmethod
    def _cut(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return torch.stack([im[:, y0:y1, x0:x1] for im, (x0, y0, x1, y1) in zip(images, boxes.tolist())])

    def windows(self, images: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` [n, 3, H, W], ``centres`` [n, 2] (x, y in pixels) → the windows [n, 3, c, c] around
        them, kept inside the image, and their boxes [n, 4]."""
        boxes = self._boxes(centres, *images.shape[-2:])
        return self._cut(images, boxes), boxes

    def read(self, crops: torch.Tensor) -> torch.Tensor:
        """[n, 3, c, c] windows → [n, W] pooled features."""
        if crops.shape[-1] != self.crop:  # an image smaller than the window: read it whole, at the window's size
            crops = F.interpolate(crops, size=(self.crop, self.crop), mode="bilinear", align_corners=False)
        # on a CPU the reader runs outside bf16 autocast: its convolutions took 10x the time of float32
        # there (fwd + bwd of 48 windows: 5.9 s against 0.6 s), which made a bf16 training step ~20x slower
        with torch.autocast(crops.device.type, enabled=crops.device.type != "cpu" and torch.is_autocast_enabled(crops.device.type)):
            h = self.net(crops.to(self.position.dtype)).flatten(2).transpose(1, 2) + self.position  # [n, cells, W]
            return self.mix(h).mean(1)

    def forward(self, pixel_values: torch.Tensor) -> ZoomOutput:
        """``pixel_values``: [2B, 3, H, W], images ordered before₀, after₀, …"""
        before, after = pixel_values[0::2], pixel_values[1::2]
        boxes = self.locate(before, after)
        crops = torch.stack([self._cut(before, boxes), self._cut(after, boxes)], 1).flatten(0, 1)  # image order
        read = self.read(crops)  # [2B, W]
        return ZoomOutput(added=self.out(read), read=read, boxes=boxes)
