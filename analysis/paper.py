"""The paper's reported numbers (OmniDiff / M3Diff, ICCV 2025; PAPER.md §7), so the dashboard can show
them beside ours. x100; None where the paper reports nothing."""
from __future__ import annotations

from analysis.breakdown import Breakdown, BreakdownConfig, SliceResult
from analysis.metrics import HEADLINE, METRICS


def _row(*vals):
    vals = list(vals) + [None] * (len(HEADLINE) - len(vals))
    return dict(zip(HEADLINE, vals))


# Table 3: OmniDiff, per domain. Keyed like report.json's per_domain ("real", "render").
OMNIDIFF_TABLE3: dict[str, dict[str, dict]] = {
    "M3Diff": {"real": _row(14.3, 18.9, 32.9, 31.3), "render": _row(15.7, 19.9, 35.3, 28.3)},
    "FINER-MLLM": {"real": _row(8.9, 13.8, 25.9, 11.7), "render": _row(13.6, 15.6, 29.9, 14.0)},
    "CARD": {"real": _row(9.1, 12.6, 25.1, 9.2), "render": _row(11.3, 13.4, 27.3, 7.3)},
    "GPT-4o (zero-shot)": {"real": _row(3.1, 13.6, 21.0, 5.2), "render": _row(4.6, 10.7, 21.4, 5.6)},
    "LLaVA-OV-7B (zero-shot)": {"real": _row(0.2, 4.1, 13.6, 1.7), "render": _row(0.3, 4.7, 15.6, 1.6)},
    "Qwen2.5-VL-7B (zero-shot)": {"real": _row(3.8, 9.5, 19.8, 6.2), "render": _row(2.1, 6.8, 18.3, 3.3)},
}

# M3Diff on the other benchmarks (overall scores).
M3DIFF_OTHER: dict[str, dict] = {
    "spot_the_diff": _row(14.4, 15.4, 37.6, 71.1, 24.9),
    "iedit": _row(33.6, 26.5, 59.7, 136.6, 27.5),
    "clevr_change": _row(57.1, 41.9, 75.3, 130.5, 33.8),
    "clevr_dc": _row(60.6, 37.6, 73.0, 109.4, 21.3),
}

# Table 6 ablation, CIDEr-D: (OmniDiff-Real, IEdit).
ABLATION_CIDER: dict[str, tuple[float, float]] = {
    "base": (1.1, 133.5), "+MDP": (1.9, 132.8), "+OmniDiff data": (35.3, 135.2), "full M3Diff": (31.3, 136.6),
}


def paper_breakdowns() -> dict:
    """Table 3 as one ``Breakdown`` per method (its per-domain slices only; no n, no intervals) for
    ``analysis.figures``."""
    def one(name, values):
        return SliceResult("domain", name, 0, {m: values.get(m) for m in METRICS}, {m: None for m in METRICS}, [])

    return {f"{method} (paper)": Breakdown(one("overall", {}), None, {}, {d: one(d, v) for d, v in doms.items()}, {},
                                           {}, [], [], [], BreakdownConfig(bootstrap=0))
            for method, doms in OMNIDIFF_TABLE3.items()}
