"""The learning-rate schedule every training here uses: linear warm-up, then cosine decay."""
from __future__ import annotations

import math


def lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:  # linear warm-up, then cosine from 1 to min_ratio
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f
