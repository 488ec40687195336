"""`m3diff data stats`, `m3diff data mix` and `m3diff synth` from the command line."""
from __future__ import annotations

import json

import pytest

from m3diff.cli import main
from m3diff.data.mixture import parse_source
from m3diff.data.readers import read_dataset
from m3diff.data.stats import compute_stats, sentences
from tests.data import helpers


def test_stats_figures_on_a_known_set(tmp_path):
    helpers.write_omnidiff(tmp_path)
    st = compute_stats(read_dataset(tmp_path).pairs)
    # 5 pairs x 2 captions; the second caption of each pair has two sentences.
    assert (st.pairs, st.captions, st.sentences) == (5, 10, 15)
    assert st.per_type == {"viewpoint": 3, "color": 3, "removal": 2}
    assert st.long_caption_pct == 0.0
    assert st.vocabulary == len({"the", "red", "cube", "moved", "to", "left", "a", "it", "is", "on", "now",
                                    "0", "1", "2", "3", "4"})
    assert sentences("It is 2.5 m away. Then it left!") == ["It is 2.5 m away", "Then it left"]


def test_stats_cli_json_and_text(tmp_path, capsys):
    helpers.write_clevr_change(tmp_path)
    assert main(["data", "stats", str(tmp_path), "--split", "test", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for key in ("pairs", "captions", "sentences", "avg_words", "vocabulary", "long_caption_pct", "per_type"):
        assert key in st
    assert st["pairs"] == 4 and st["captions"] == 10 and st["format"] == "clevr_change"
    assert main(["data", "stats", str(tmp_path), "--format", "clevr_change"]) == 0
    assert "vocabulary" in capsys.readouterr().out


def test_stats_cli_reports_missing_images_without_failing(tmp_path, capsys):
    helpers.write_omnidiff(tmp_path, images=False)
    assert main(["data", "stats", str(tmp_path)]) == 0
    assert "10 image file(s) are missing" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    helpers.write_omnidiff(tmp_path)
    assert main(["data", "stats", str(tmp_path), "--format", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset format 'nope'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "train.json").write_text("{")
    assert main(["data", "stats", str(tmp_path)]) == 2
    assert "train.json: not valid JSON" in capsys.readouterr().err


def test_parse_source():
    s = parse_source("data/clevr:clevr_change:0.5")
    assert (str(s.path), s.format, s.weight) == ("data/clevr", "clevr_change", 0.5)
    assert parse_source("x:2").weight == 2.0 and parse_source("x:2").format is None
    with pytest.raises(ValueError, match="unknown dataset format"):
        parse_source("x:cocoa")


def test_mix_every_clevr_caption_is_a_sample_and_weights(tmp_path, capsys):
    helpers.write_clevr_change(tmp_path / "clevr")
    helpers.write_iedit(tmp_path / "iedit")
    out = tmp_path / "mix.jsonl"
    rc = main(["data", "mix", "--source", f"{tmp_path / 'clevr'}", "--source", f"{tmp_path / 'iedit'}:iedit:2",
               "--split", "train", "--out", str(out)])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    clevr = [x for x in lines if x["source"] == "clevr_change"]
    iedit = [x for x in lines if x["source"] == "iedit"]
    assert len(clevr) == 2 * 3 + 2 * 2  # 2 train scenes: 3 change + 2 no-change captions each
    assert len(iedit) == 2 * 2  # 2 pairs, one sample each, weight 2
    from m3diff.processing import DEFAULT_PROMPT

    for x in lines:
        assert set(x) == {"id", "source", "before", "after", "prompt", "answer", "change_types", "domain", "split"}
        assert x["prompt"] == DEFAULT_PROMPT and x["answer"]
        assert x["before"].startswith("/")
    assert len({x["id"] for x in clevr}) == len(clevr)


def test_mix_fractional_weight_is_seeded(tmp_path):
    helpers.write_omnidiff(tmp_path / "o", n_per_split=(10, 0, 0))
    from m3diff.data.mixture import build_mixture

    src = parse_source(f"{tmp_path / 'o'}:0.5")
    ds = read_dataset(src.path, split="train")
    a = build_mixture([(src, ds)], seed=1)
    assert len(a) == 5 and a == build_mixture([(src, ds)], seed=1)


def test_synth_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--pairs", "12", "--size", "64", "--quiet", "--workers", "1"]) == 0
    assert len(read_dataset(out).pairs) == 12
    assert main(["synth", "--out", str(out), "--pairs", "12", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "t"), "--size", "20"]) == 2
