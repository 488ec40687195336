"""benchmarks/gpu_check.py on the tiny preset on a CPU: the run a GPU gets, stage by stage, with its checks,
its failures recorded while the run goes on, and its time budget."""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# small sizes of the same stages: the test is about what runs and what is recorded, not about the numbers
LIGHT = ["--preset", "tiny", "--device", "cpu", "--tokens", "12", "--repeats", "1", "--batches", "1,2",
         "--train-steps", "1", "--embedded-steps", "3", "--synth-pairs", "24"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one mixed-precision setting per process; the embedded recipe asks for its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def statuses(lines: list[dict]) -> dict[str, dict]:
    return {line["stage"]: line for line in lines if "status" in line and line["stage"] != "summary"}


def results(lines: list[dict]) -> dict[tuple[str, str], dict]:
    return {(line["stage"], line["result"]): line for line in lines if "result" in line}


@pytest.mark.slow
def test_every_stage_runs_on_the_tiny_preset_and_its_checks_hold(gpu_check, tmp_path, fresh_accelerate):
    from m3diff.config import preset

    out = tmp_path / "cpu.jsonl"
    assert gpu_check.main(LIGHT + ["--out", str(out)]) == 0
    lines = read(out)
    st = statuses(lines)
    assert list(st) == list(gpu_check.STAGES)
    assert {name: line["status"] for name, line in st.items()} == {name: "ok" for name in gpu_check.STAGES}
    res = results(lines)
    failed = [(key, name) for key, line in res.items() for name, ok in line.get("checks", {}).items() if not ok]
    assert failed == []
    assert all(line.get("checks") for key, line in res.items() if key[0] in ("pipeline", "app", "space")
               and key[1] not in ("build", "saved"))

    tiny = preset("tiny")
    describe = res[("pipeline", "describe")]
    assert describe["grid"] == tiny.patch_grid and describe["layers"] == list(tiny.mdp_layers)
    assert describe["image_size"] == [320, 200] and describe["placed_shape"] == [200, 320]  # not square
    assert res[("pipeline", "explain_word")]["word"] == "square" and res[("pipeline", "explain_word")]["explain_s"] > 0
    with_mdp, without = res[("inference", "m3diff")], res[("inference", "no_mdp")]
    assert with_mdp["params"] - without["params"] == with_mdp["mdp_params"] > 0
    assert set(with_mdp["throughput"]) == {"1", "2"} and with_mdp["per_token_s"] > 0
    assert res[("inference", "mdp_overhead")]["caption_ratio"] == round(with_mdp["caption_s"] / without["caption_s"], 3)
    train = res[("train_paper_7b", "batch_4")]  # the paper-7b recipe's per-device batch
    assert train["per_device_batch"] == 4 and len(train["losses"]) == 2  # a warm-up step and the one timed
    assert res[("app", "model_process")]["device"] == "cpu"
    assert res[("train_embedded", "steps")]["steps"] == 3 and res[("train_embedded", "steps")]["steps_per_s"] > 0

    summary = lines[-1]
    assert summary["stage"] == "summary" and summary["status"] == "ok"
    assert summary["goals"]["mdp_overhead_caption_ratio"]["measured"] == res[("inference", "mdp_overhead")]["caption_ratio"]
    assert summary["goals"]["caption_80_tokens_s"]["measured"] is None  # 12 tokens were asked for, not 80
    assert summary["goals"]["train_step_fits_at_recipe_batch"]["met"] is True


def test_a_stage_that_fails_is_recorded_and_the_next_one_runs(gpu_check, tmp_path, monkeypatch, fresh_accelerate):
    import analysis.attribution

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (as a 7B attribution might)")

    monkeypatch.setattr(analysis.attribution, "explain_word", out_of_memory)
    out = tmp_path / "run.jsonl"
    assert gpu_check.main(LIGHT + ["--only", "pipeline,train_embedded", "--out", str(out)]) == 1
    lines = read(out)
    st = statuses(lines)
    assert st["pipeline"]["status"] == "failed" and "CUDA out of memory" in st["pipeline"]["error"]
    assert "out_of_memory" in st["pipeline"]["traceback"]
    assert {"build", "describe", "describe_stream"} <= {r for s, r in results(lines) if s == "pipeline"}  # kept
    assert st["train_embedded"]["status"] == "ok"
    assert lines[-1]["status"] == "failed" and lines[-1]["stages"]["pipeline"] == "failed"


def test_a_check_that_does_not_hold_fails_its_stage(gpu_check, tmp_path, monkeypatch):
    def nan_maps(run):
        yield gpu_check.checked("describe", {"maps_finite": False, "maps_shape": True})
        yield {"result": "after"}

    monkeypatch.setitem(gpu_check.STAGE_FUNCTIONS, "pipeline", nan_maps)
    out = tmp_path / "run.jsonl"
    assert gpu_check.main(["--preset", "tiny", "--device", "cpu", "--only", "pipeline", "--out", str(out)]) == 1
    lines = read(out)
    assert ("pipeline", "after") in results(lines)  # the stage went on after the bad result
    assert statuses(lines)["pipeline"]["error"] == "ChecksFailed: checks failed: describe.maps_finite"


def test_the_checks_catch_a_non_finite_map_and_a_wrong_shape(gpu_check):
    from m3diff.config import preset
    from m3diff.describing import Description, PairTrace

    config = preset("tiny")
    g, d = config.patch_grid, config.vision_config.hidden_size
    layers = tuple(config.mdp_layers)

    def trace(eq6):
        return PairTrace(layers=layers, score_mean={k: 0.5 for k in layers},
                         score={k: np.full(d, 0.5, np.float32) for k in layers},
                         delta_norm={k: np.ones((g, g), np.float32) for k in layers},
                         attn_eq5={k: np.ones((2, g, g), np.float32) for k in layers}, attn_eq6=eq6)

    good = {k: np.ones((2, g, g), np.float32) for k in layers}
    ok, _ = gpu_check.description_checks(Description("x", trace=trace(good), feature_difference=np.ones((g, g))),
                                         config, (48, 32))
    assert all(ok.values())
    nan = {**good, layers[-1]: np.full((2, g, g), np.nan, np.float32)}
    bad, _ = gpu_check.description_checks(Description("x", trace=trace(nan), feature_difference=np.ones((g, g))),
                                          config, (48, 32))
    assert [k for k, v in bad.items() if not v] == ["maps_finite"]
    small = {**good, layers[0]: np.ones((2, g - 1, g - 1), np.float32)}
    bad, _ = gpu_check.description_checks(Description("x", trace=trace(small), feature_difference=None),
                                          config, (48, 32))
    assert {k for k, v in bad.items() if not v} == {"maps_shape", "feature_difference"}


def test_a_spent_budget_starts_no_more_stages_and_keeps_what_was_measured(gpu_check, tmp_path, monkeypatch):
    seen_on_disk = []

    def slow_stage(run):
        # the lines written so far are already on disk: a run cut short still reports them
        seen_on_disk.append([json.loads(line)["stage"] for line in Path(run.out.name).read_text().splitlines()])
        yield {"result": "measured", "value": 1}
        while run.elapsed() < run.settings.budget_s:  # a stage that outlasts the budget
            time.sleep(0.05)

    monkeypatch.setitem(gpu_check.STAGE_FUNCTIONS, "pipeline", slow_stage)
    out = tmp_path / "run.jsonl"
    args = ["--preset", "tiny", "--device", "cpu", "--only", "pipeline,app,train_embedded", "--out", str(out)]
    assert gpu_check.main(args + ["--budget-s", "2"]) == 0
    lines = read(out)
    assert seen_on_disk == [["environment", "environment"]]
    st = statuses(lines)
    assert st["pipeline"]["status"] == "ok" and results(lines)[("pipeline", "measured")]["value"] == 1
    assert st["app"]["status"] == st["train_embedded"]["status"] == "skipped"
    assert "budget" in st["app"]["reason"] and lines[-1]["stage"] == "summary"

    assert gpu_check.main(args + ["--budget-s", "0"]) == 0  # nothing but the machine's description
    st = statuses(read(out))
    assert st["environment"]["status"] == "ok"
    assert [st[name]["status"] for name in ("pipeline", "app", "train_embedded")] == ["skipped"] * 3


def test_cuda_asked_for_without_a_gpu_is_one_clear_error(gpu_check, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    out = tmp_path / "run.jsonl"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    lines = read(out)
    assert lines[0]["result"] == "environment" and lines[0]["cuda_available"] is False
    assert lines[-1] == {**lines[-1], "stage": "summary", "status": "failed"}
