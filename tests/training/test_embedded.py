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
    from analysis.report import read_report

    assert read_report(dest / "reports" / "m3diff.json").report.run.scores.overall.scores["CIDEr-D"] == 25.0
    assert (dest / "reports" / "no_mdp.json").is_file()
    card = (dest / "README.md").read_text()
    assert "stopped at step 2 of the 3-step schedule" in card
    params = DiffCaptioner.from_pretrained(dest).info.parameters["total"]
    assert f"| parameters | {params / 1e6:.2f} M |" in card
    assert "CIDEr-D overall 25.0 (bar: >= 80; long-term >= 100): NOT met" in card
    # a twin's report alone gives no paired interval: the bar is not called met on the means
    assert "ahead of the no-MDP twin (25.0 vs 20.0; no paired interval in the report): NOT met" in card
    assert "(not measured: run `m3diff probe`" in card
    assert "the reports have no localization section: predict with `--maps`" in card
    assert "(the reports have no changes section: evaluate on generated references)" in card
    assert "m3diff train …" in card
    # shipped again without the run's log at hand (a new reader): the stage's time as measured where it trained
    assert embedded.main(["--model", str(tmp_path / "mdp" / "model"), "--report", str(mdp_report), "--command", "x",
                          "--dest", str(dest), "--stage-cpu-minutes", "74"]) == 0
    assert "| training time | 74 CPU-minutes (one thread) |" in (dest / "README.md").read_text()


def _report(tmp_path, name, **run):
    from dataclasses import replace

    from analysis.report import read_report

    rep = read_report(make_report(tmp_path / name, name)).report
    rep.runs[name] = replace(rep.run, **run)
    return rep


def test_the_cards_localization_table_shows_each_models_maps_beside_the_baselines_once(tmp_path):
    """Scored by the real evaluation on generated pairs: a "model" whose map is the pixel difference
    itself must score exactly what the baseline scores, and the twin's map its own numbers."""
    import numpy as np

    from analysis.localization import baseline_maps, evaluate_localization
    from analysis.render import map_pointing_md
    from m3diff.cli import main
    from m3diff.data.readers import read_dataset
    from m3diff.images import load_image

    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--pairs", "40", "--seed", "4", "--size", "64", "--quiet"]) == 0
    pairs = [p for p in read_dataset(data, split="train").pairs][:16]
    copy = {p.id: {"feature_difference": baseline_maps(load_image(p.before), load_image(p.after), 8)["pixel_difference"]}
            for p in pairs}
    flat = {p.id: {"feature_difference": np.ones((2, 8, 8))} for p in pairs}
    mdp = _report(tmp_path, "m3diff", localization=evaluate_localization(copy, pairs))
    twin = _report(tmp_path, "no_mdp", localization=evaluate_localization(flat, pairs))
    table = map_pointing_md({"MDP": mdp, "twin": twin}).splitlines()
    rows = {tuple(c.strip() for c in r.strip("|").split("|")[:2]): r for r in table[2:]}
    label = "‖P(F′1) − P(F′2)‖, the image tokens the LLM reads"
    assert set(rows) == {("MDP", label), ("twin", label), ("—", "pixel difference (baseline)"),
                         ("—", "uniform map (chance)")}
    cells = lambda r: r.strip("|").split("|")[2:]  # noqa: E731
    assert cells(rows[("MDP", label)]) == cells(rows[("—", "pixel difference (baseline)")])
    assert cells(rows[("twin", label)]) == cells(rows[("—", "uniform map (chance)")])
    single = mdp.run.localization.summary.per_setting["single"]["pixel_difference"]
    assert f"{100 * single.pointing:.0f}%" == cells(rows[("—", "pixel difference (baseline)")])[0].strip()


def test_the_cards_tables_go_on_by_number_of_changes_with_caption_lengths(tmp_path):
    from analysis.render import comparison_md, score_tables_md
    from tests.analysis.conftest import slice_result

    rep = _report(tmp_path, "m3diff")
    bd = rep.run.scores
    bd.overall = slice_result(10, 40.0, kind="overall", words={"caption": 26.0, "references": 35.2})
    bd.per_domain, bd.per_type = {}, {"ocr": slice_result(4, 8.5)}
    bd.per_changes = {"1": slice_result(6, 80.4, kind="changes", words={"caption": 16.0, "references": 20.0}),
                      "4": slice_result(4, 5.1, kind="changes", words={"caption": 45.0, "references": 67.0})}
    table = score_tables_md(rep, ("CIDEr-D",))
    assert "| slice | n | CIDEr-D | words (caption / references) |" in table
    assert "| overall | 10 | 40.0 | 26 / 35 |" in table and "| type: ocr | 4 | 8.5 |  |" in table
    assert table.index("| 1 change | 6 | 80.4 | 16 / 20 |") < table.index("| 4 changes | 4 | 5.1 | 45 / 67 |")
    twin = _report(tmp_path, "no_mdp")
    twin.run.scores.overall, twin.run.scores.per_domain, twin.run.scores.per_type = bd.overall, {}, bd.per_type
    twin.run.scores.per_changes = {"4": slice_result(4, 3.0, kind="changes")}
    both = comparison_md({"m3diff": rep, "no_mdp": twin})
    assert "| 4 changes | 4 | 5.1 | 3.0 |" in both and "| 1 change | 6 | 80.4 | – |" in both


def test_the_cards_change_table_shows_each_models_own_run(tmp_path):
    from analysis.changes import ChangeScore, ChangeSummary
    from analysis.render import change_naming_md
    from analysis.report import ChangesRun

    def changes(recall, value):
        score = ChangeScore(4, 4, recall, recall, 4, 0.5, 2, 4, value)
        return ChangesRun(ChangeSummary(score, {"ocr": ChangeScore(2, 2, recall, recall, 2, 0.5, 1, 2, 0.0)}))

    mdp = _report(tmp_path, "m3diff", changes=changes(0.4, 0.1))
    twin = _report(tmp_path, "no_mdp", changes=changes(0.2, 0.05))
    table = change_naming_md({"M3Diff": mdp, "twin": twin}).splitlines()
    assert table[0] == ("| slice | M3Diff: recall % | M3Diff: precision % | M3Diff: new value said % | twin: recall % "
                        "| twin: precision % | twin: new value said % |")
    assert table[2] == "| overall | 40.0 | 50.0 | 10.0 | 20.0 | 50.0 | 5.0 |"
    assert table[3] == "| ocr | 40.0 | 50.0 | 0.0 | 20.0 | 50.0 | 0.0 |"
    assert change_naming_md({"M3Diff": _report(tmp_path, "plain")}) == ""
