"""Faults of a training run that used to end in a wrong success or in lost work: a diverging loss,
logs of a killed run, recipe values of the wrong type."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m3diff.cli import main
from training.recipe import RecipeError, load_recipe

TINY = Path(__file__).resolve().parents[2] / "training" / "recipes" / "tiny-cpu.yaml"
QUICK = ["--set", "data.val_pairs=0", "--set", "eval_max_new_tokens=4", "--quiet"]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--pairs", "40", "--seed", "5", "--size", "64", "--quiet"]) == 0
    return out


def _finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


def test_lr_1e308_stops_in_one_line_and_saves_nothing_non_finite(synth_data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(run), *QUICK,
               "--set", "optim.lr=1e308", "--set", "max_steps=4", "--set", "checkpoint_every=1"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "trained to step" not in out
    assert "training stopped at step 1" in err and "NaN or inf" in err and "no checkpoint had been written" in err
    assert not (run / "model").exists()
    assert not list(run.glob("checkpoints/step-*"))


def test_a_non_finite_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(synth_data, tmp_path,
                                                                                     monkeypatch, capsys):
    import training.train as train_module

    real = train_module.step_losses
    calls = {"n": 0}

    def loss_goes_nan_at_step_3(model, batch):  # 2 micro-batches per step in tiny-cpu
        loss, n, aux = real(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), n, aux

    monkeypatch.setattr(train_module, "step_losses", loss_goes_nan_at_step_3)
    run = tmp_path / "run"
    rc = main(["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(run), *QUICK,
               "--set", "max_steps=6", "--set", "checkpoint_every=2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "training stopped at step 3: the loss nan is not finite" in err and "step-000002" in err
    assert (run / "checkpoints" / "latest").read_text() == "step-000002"
    assert _finite(run / "checkpoints" / "step-000002" / "model.safetensors")
    assert not (run / "model").exists()


def test_a_model_with_non_finite_weights_is_refused_when_loaded(synth_data, tmp_path, capsys):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    assert main(["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(run), *QUICK,
                 "--set", "max_steps=1"]) == 0
    weights = load_file(str(run / "model" / "model.safetensors"))
    name = next(k for k, t in weights.items() if t.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(run / "model" / "model.safetensors"), metadata={"format": "pt"})
    pair = sorted((synth_data / "images").glob("*_before.png"))[0]
    capsys.readouterr()
    rc = main(["describe", str(pair), str(pair).replace("_before", "_after"), "--model", str(run / "model"), "--json"])
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]  # above it: transformers' loading progress bar
    assert rc == 2 and out == "" and "Traceback" not in err and last.startswith("m3diff describe: error:")
    assert "NaN or inf" in last and str(run / "model") in last


def test_resumed_steps_appear_once_in_the_logs(synth_data, tmp_path):
    """A run killed after logging steps past its last checkpoint: resuming logs those steps again."""
    run = tmp_path / "run"
    base = ["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(run), *QUICK,
            "--set", "max_steps=5", "--set", "checkpoint_every=2", "--set", "keep_checkpoints=5"]
    assert main(base) == 0
    # as if killed after logging step 5 but before its checkpoint: the newest complete one is step 4
    shutil.rmtree(run / "checkpoints" / "step-000005")
    (run / "checkpoints" / "latest").write_text("step-000004")
    assert main(base + ["--resume"]) == 0
    with open(run / "log.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("override, message", [
    ("model.config.use_mdp=maybe", "model.config.use_mdp: expected true or false"),
    ("model.config.mdp_depth=two", "model.config.mdp_depth: expected an integer"),
    ("model.config.mdp_layers=[2, x]", r"model.config.mdp_layers\[1\]: expected an integer"),
    ("model.config.mdp_dept=3", "model.config.mdp_dept: not a field of M3DiffConfig"),
])
def test_model_config_values_are_type_checked(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, [override])


def test_model_config_values_of_the_right_type_pass():
    r = load_recipe(TINY, ["model.config.use_mdp=false", "model.config.mdp_layers=[2, 4]",
                           "model.config.mdp_mlp_ratio=3"])
    assert r.model.config == {"use_mdp": False, "mdp_layers": [2, 4], "mdp_mlp_ratio": 3}


def test_set_with_a_wrong_type_is_one_line_before_any_work(synth_data, tmp_path, capsys):
    rc = main(["train", "--recipe", str(TINY), "--data", str(synth_data), "--out", str(tmp_path / "run"),
               "--set", "model.config.use_mdp=maybe"])
    err = capsys.readouterr().err
    assert rc == 2 and "use_mdp" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_describe_json_never_prints_nan(monkeypatch, capsys):
    """A NaN in the layer scores (finite weights can still overflow) is written as null: valid JSON."""
    from m3diff.describing import Description
    from m3diff.pipeline import DiffCaptioner

    class Fake:
        source = "fake"

        def use_recommended_threads(self):
            pass

        def describe(self, *a, **k):
            return Description("", {2: float("nan"), 4: 0.5}, None, 0.1)

    monkeypatch.setattr(DiffCaptioner, "from_pretrained", classmethod(lambda cls, *a, **k: Fake()))
    images = Path(__file__).resolve().parents[2] / "examples" / "images"  # the images are read before the model
    assert main(["describe", str(images / "color_before.png"), str(images / "color_after.png"), "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["layer_scores"] == {"2": None, "4": 0.5}


def test_a_data_spec_with_an_unknown_format_is_one_line_before_any_work(tmp_path, capsys):
    """--data is parsed by the one parser training reads it with, so a bad spec fails at the recipe check."""
    data = tmp_path / "d"
    data.mkdir()
    rc = main(["train", "--recipe", str(TINY), "--data", f"{data}:no-such-format", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "data:" in err and "no-such-format" in err
    assert not (tmp_path / "run").exists()
