"""Packaging the embedded default: a trained run (here a tiny one, stopped part-way) goes into a weights
folder with its twin, its reports and a card that states the schedule, the bar and the tables."""
from __future__ import annotations

import json
from pathlib import Path

from tests.analysis.conftest import make_report

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "recipes" / "tiny-cpu.yaml"


def test_a_part_way_run_is_packaged_with_its_twin_reports_and_card(tmp_path):
    from m3diff.cli import main
    from m3diff.pipeline import DiffCaptioner
    from training import embedded

    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--pairs", "24", "--seed", "3", "--size", "64", "--quiet"]) == 0
    common = ["train", "--recipe", str(TINY), "--data", str(data), "--quiet", "--max-steps", "3", "--stop-at", "2",
              "--set", "checkpoint_every=0", "--set", "data.val_pairs=0"]
    assert main(common + ["--out", str(tmp_path / "mdp")]) == 0
    assert main(common + ["--out", str(tmp_path / "twin"), "--set", "model.config.use_mdp=false"]) == 0
    mdp_report = make_report(tmp_path / "r1", "m3diff", shift=5.0)
    twin_report = make_report(tmp_path / "r2", "no_mdp")
    dest = tmp_path / "weights"
    assert embedded.main(["--model", str(tmp_path / "mdp" / "model"), "--twin", str(tmp_path / "twin" / "model"),
                          "--report", str(mdp_report), "--twin-report", str(twin_report), "--command", "m3diff train …",
                          "--dest", str(dest)]) == 0

    assert DiffCaptioner.from_pretrained(dest).uses_mdp
    assert not DiffCaptioner.from_pretrained(dest / "twin").uses_mdp
    assert json.loads((dest / "reports" / "m3diff.json").read_text())["overall"]["CIDEr-D"] == 25.0
    assert (dest / "reports" / "no_mdp.json").is_file()
    card = (dest / "README.md").read_text()
    assert "stopped at step 2 of the 3-step schedule" in card
    params = DiffCaptioner.from_pretrained(dest).info.parameters["total"]
    assert f"| parameters | {params / 1e6:.2f} M |" in card
    assert "CIDEr-D overall 25.0 (bar: >= 40; long-term >= 100): NOT met" in card
    # a twin's report alone gives no paired interval: the bar is not called met on the means
    assert "ahead of the no-MDP twin (25.0 vs 20.0; no paired interval in the report): NOT met" in card
    assert "(not measured: run `m3diff probe`" in card
    assert "m3diff train …" in card
