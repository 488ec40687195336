"""`m3diff describe` says a missing image at once, before loading any model, and prints no library
progress bars unless asked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3diff.cli import main
from m3diff.pipeline import DiffCaptioner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "images" / "color_before.png"


def test_a_missing_image_is_named_before_any_model_loads(tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(DiffCaptioner, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    missing = tmp_path / "nowhere.png"
    assert main(["describe", str(EXAMPLE), str(missing)]) == 2
    err = capsys.readouterr().err
    assert "after image" in err and "nowhere.png" in err and len(err.strip().splitlines()) == 1
    assert not loads  # refused before the model was asked for


@pytest.mark.slow
def test_describe_prints_no_library_progress_bar_unless_asked():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "m3diff.cli", *flags, "describe", str(EXAMPLE), str(EXAMPLE), "--max-new-tokens", "4"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr[-2000:]
    asked = run("--library-progress")
    assert asked.returncode == 0 and "Loading weights" in asked.stderr


def test_describe_lists_what_the_change_reader_read(tmp_path, capsys):
    model = tmp_path / "reader-model"
    DiffCaptioner.untrained(change_reader=True).save_pretrained(model)
    assert main(["describe", str(EXAMPLE), str(EXAMPLE.with_name("color_after.png")), "--model", str(model),
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("Changes read ("))
    n = int(out[head].split("(")[1].split(",")[0])
    listed = out[head + 1:head + 1 + n]
    assert len(listed) == n and all(line.startswith("  ") and "[" in line for line in listed)
    plain = tmp_path / "plain-model"
    DiffCaptioner.untrained().save_pretrained(plain)
    assert main(["describe", str(EXAMPLE), str(EXAMPLE), "--model", str(plain), "--max-new-tokens", "4"]) == 0
    assert "Changes read" not in capsys.readouterr().out
