"""`m3diff space build`: the metadata of the Space, and that its app imports and starts on a CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from m3diff.cli import main as cli_main
from hosting import SpaceBuildError, build_space, read_front_matter, repo_root

ROOT = repo_root()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return build_space(tmp_path_factory.mktemp("space") / "out")


def test_the_repositorys_spaces_folder_is_not_a_package():
    assert (ROOT / "spaces").is_dir() and not (ROOT / "spaces" / "__init__.py").exists()
    import spaces  # Hugging Face's library, not our folder

    assert hasattr(spaces, "GPU")


def test_cpu_space_metadata(space):
    meta = read_front_matter((space / "README.md").read_text(encoding="utf-8"))
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ == "6.31.0"
    major, minor = (int(x) for x in str(meta["python_version"]).split(".")[:2])
    assert (major, minor) >= (3, 11)  # transformers 5 needs it
    assert meta["app_file"] == "app.py" and (space / "app.py").is_file()
    assert meta["suggested_hardware"] == "cpu-basic"
    req = (space / "requirements.txt").read_text(encoding="utf-8")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in req
    import torch

    assert f"torch=={torch.__version__.split('+')[0]}" in req
    assert "gradio==6.31.0" in req
    assert "jre" in (space / "packages.txt").read_text()
    assert json.loads((space / "space_config.json").read_text())["model"] is None


def test_space_holds_packages_app_examples_and_no_spaces_package(space):
    for path in ("m3diff/pipeline.py", "analysis/figures.py", "analysis/attribution.py", "m3diff_app.py",
                 "examples/test.json", "examples/report.json"):
        assert (space / path).is_file(), path
    assert not (space / "hosting.py").exists()  # the builder is not part of what it builds
    assert not (space / "spaces").exists()
    assert not list(space.rglob("__pycache__"))


def test_gpu_build_points_at_the_7b_model(tmp_path):
    out = build_space(tmp_path / "gpu", model="org/m3diff-7b")
    meta = read_front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["models"] == ["org/m3diff-7b"] and meta["preload_from_hub"] == ["org/m3diff-7b"]
    assert meta["suggested_hardware"].startswith("zero") and meta["sdk_version"] == "6.31.0"
    assert "download.pytorch.org/whl/cpu" not in (out / "requirements.txt").read_text()
    assert json.loads((out / "space_config.json").read_text())["model"] == "org/m3diff-7b"


def test_build_refuses_clearly(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(SpaceBuildError, match="not empty"):
        build_space(tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(SpaceBuildError, match="hub id"):
        build_space(tmp_path / "a", model="not-a-model")
    with pytest.raises(SpaceBuildError, match="repository"):
        build_space(ROOT / "m3diff" / "space")
    assert cli_main(["space", "build", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_gpu_duration_fits_the_request(space, monkeypatch):
    monkeypatch.chdir(space)
    src = (space / "app.py").read_text()
    assert src.index("import spaces") < src.index("import m3diff_app")  # before anything touches CUDA
    assert "spaces.GPU(duration=gpu_seconds)" in src


# Run in the built Space's folder: its app.py is the GPU entry, not the repository's app, so the work the
# model does for "Explain a word" must be named by the library (analysis.attribution), never by "app".
EXPLAIN_IN_SPACE = """
import app  # the Space's entry: it loads the model and builds the app as the Space does
import m3diff

print(m3diff.__file__)
print(app.gpu_seconds(None, None, 96))
before, after = "examples/images/color_before.png", "examples/images/color_after.png"
*_, (caption, _, shown) = app.app.describe_events(app.SERVICES, before, after, 8)
shown.caption = "the red cube moved"  # explain a word that is surely there
before_map, after_map, note = app.app.explain_word(app.SERVICES, shown, "1: red")
assert before_map.size == shown.before.size and after_map.size == shown.after.size
assert "**red**" in note, note
print("explained")
"""


@pytest.mark.slow
def test_the_built_space_imports_explains_a_word_and_starts_on_cpu(space):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "M3DIFF_MODEL")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    probe = subprocess.run([sys.executable, "-c", EXPLAIN_IN_SPACE], cwd=space, env=env, capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    where, seconds, explained = probe.stdout.split()[-3:]
    assert Path(where).is_relative_to(space)  # the Space's own copy, not the repository's
    assert 0 < int(seconds) <= 120
    assert explained == "explained"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the Space did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(15)


def test_gpu_benchmark_refuses_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu_7b.py"), "--skip-train"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    from training.train import answer_loss_sum, apply_lora, param_groups  # noqa: F401 (what it uses)
    from training.recipe import load_recipe

    assert load_recipe(ROOT / "training" / "recipes" / "paper-7b.yaml").lora.rank == 128


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_building_onto_a_file_or_an_unwritable_place_is_one_line(tmp_path, capsys, where):
    target = tmp_path / "out"
    target.write_text("not a folder")
    if where == "unwritable":  # a folder that cannot be made (root ignores mode bits, not this)
        target = target / "space"
    assert cli_main(["space", "build", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(target.parent if where == "unwritable" else target) in err
