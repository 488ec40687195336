"""Regenerate the app's example pairs (one generated pair per change type, and a real photo pair) and
the example report: the embedded model's captions of them, scored by `m3diff eval`.

    python examples/make_examples.py            # the pairs and the report
    python examples/make_examples.py --report   # the report only (after the embedded model changed)

Generated pairs come from the project's synthetic generator (``m3diff.data.synth``), so they are the
kind of scene the embedded model was trained on; the stereo motorcycle views from scikit-image are a
real photo pair the embedded model has never seen (a viewpoint change). Same code, same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
SIZE = 192  # px: large enough to see the change, small enough to keep the folder under 2 MB


def main() -> None:
    import numpy as np
    from PIL import Image

    from m3diff.change_types import TYPE_IDS
    from m3diff.data.synth.generator import SynthConfig, Worker

    images = HERE / "images"
    images.mkdir(exist_ok=True)
    worker = Worker(SynthConfig(seed=7, size=SIZE, pairs=10_000), None)
    found: dict[str, dict] = {}
    for index in range(2000):
        if len(found) == len(TYPE_IDS):
            break
        split, record, before, after = worker.make(index)
        types = record["change_types"]
        # one change per example, so the example is about the type it is named after
        if len(types) != 1 or types[0] in found:
            continue
        t = types[0]
        for side, img in (("before", before), ("after", after)):
            Image.fromarray(np.asarray(img)).save(images / f"{t}_{side}.png", optimize=True)
        found[t] = {"id": t, "before": f"images/{t}_before.png", "after": f"images/{t}_after.png",
                    "change_types": [t], "domain": record["domain"], "scene": record["scene"],
                    "captions": record["captions"], "origin": "generated"}
    missing = [t for t in TYPE_IDS if t not in found]
    if missing:
        raise SystemExit(f"no single-change pair found for {missing}; raise the search range")

    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    for side, arr in (("before", left), ("after", right)):
        im = Image.fromarray(arr)
        im.thumbnail((384, 384))
        im.save(images / f"motorcycle_{side}.jpg", quality=88)
    examples = [found[t] for t in TYPE_IDS] + [{
        "id": "motorcycle", "before": "images/motorcycle_before.jpg", "after": "images/motorcycle_after.jpg",
        "change_types": ["viewpoint"], "domain": "real", "scene": "skimage-motorcycle",
        "captions": ["the camera moved slightly to the side; the motorcycle and the room are unchanged."],
        "origin": "scikit-image stereo_motorcycle (left and right views)",
    }]
    # m3diff's own dataset layout (a test split), so `m3diff predict/eval --data examples` read it too
    (HERE / "test.json").write_text(json.dumps(examples, indent=1) + "\n", encoding="utf-8")
    print(f"{len(examples)} example pairs in {HERE}")


def make_report() -> None:
    """examples/predictions.json and examples/report.json: the embedded model on the example pairs, scored
    as `m3diff predict` and `m3diff eval` do (no intervals: one pair per type)."""
    from analysis.breakdown import BreakdownConfig
    from analysis.evaluate import evaluate
    from analysis.inputs import Predictions
    from m3diff.data.layout import read_split
    from m3diff.pipeline import DiffCaptioner, GenerationSettings

    pairs = read_split(HERE / "test.json")
    captioner = DiffCaptioner.from_pretrained()
    described = captioner.describe_batch([(p.before, p.after) for p in pairs], with_trace=False,
                                         settings=GenerationSettings(max_new_tokens=160))
    preds = Predictions(HERE / "predictions.json", {p.id: d.caption for p, d in zip(pairs, described)},
                        model="embedded", data="examples", split="test")
    preds.save(preds.path, [p.id for p in pairs])
    report = evaluate({"embedded": preds}, pairs, split="test", bootstrap=BreakdownConfig(bootstrap=0),
                      model="embedded")
    report.meta.references = "examples"  # relative to the checkout: the app finds the images from anywhere
    report.meta.predictions = {"embedded": "examples/predictions.json"}
    report.save(HERE / "report.json")
    print(f"example report of {len(pairs)} pairs in {HERE / 'report.json'}")


if __name__ == "__main__":
    import sys

    if "--report" not in sys.argv[1:]:
        main()
    make_report()
