"""`m3diff synth` -> `m3diff predict` (a saved tiny model) -> `m3diff eval`, on one generated set."""
from __future__ import annotations

import csv
import json

import pytest

from m3diff.cli import main
from m3diff.pipeline import DiffCaptioner


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def data(workdir):
    out = workdir / "synth"
    assert main(["synth", "--out", str(out), "--pairs", "60", "--seed", "0", "--size", "64", "--workers", "1",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def model_dir(workdir, tiny_tokenizer, tiny_config):
    from m3diff.config import preset
    from m3diff.modeling import M3DiffForConditionalGeneration
    from m3diff.processing import PairProcessor

    import torch

    torch.manual_seed(0)
    model = M3DiffForConditionalGeneration(preset("tiny", vocab_size=len(tiny_tokenizer))).eval()
    path = workdir / "model"
    DiffCaptioner(model, PairProcessor.for_config(tiny_config, tiny_tokenizer)).save_pretrained(path)
    return path


def _test_ids(data):
    return [r["id"] for r in json.loads((data / "test.json").read_text())]


def _predict(data, model_dir, out, *extra):
    return main(["predict", "--data", str(data), "--split", "test", "--out", str(out), "--model", str(model_dir),
                 "--max-new-tokens", "8", "--batch-size", "4", *extra])


@pytest.fixture(scope="module")
def predictions(data, model_dir, workdir):
    out = workdir / "pred.json"
    assert _predict(data, model_dir, out) == 0
    return out


def test_predict_writes_one_caption_per_test_pair(predictions, data, model_dir):
    doc = json.loads(predictions.read_text())
    assert doc["model"] == str(model_dir) and doc["split"] == "test" and doc["data"] == str(data)
    rows = doc["predictions"]
    ids = _test_ids(data)
    assert len(ids) >= 4 and [r["id"] for r in rows] == ids  # one per pair, in the split's order
    assert all(set(r) == {"id", "caption"} and isinstance(r["caption"], str) for r in rows)
    assert any(r["caption"] for r in rows)


def test_predict_resumes_only_missing_ids(predictions, data, model_dir, workdir, monkeypatch, capsys):
    doc = json.loads(predictions.read_text())
    missing = doc["predictions"][1]
    partial = dict(doc, predictions=[r for r in doc["predictions"] if r["id"] != missing["id"]])
    out = workdir / "partial.json"
    out.write_text(json.dumps(partial))
    described = []
    original = DiffCaptioner.describe_batch

    def spy(self, pairs, **kwargs):
        described.extend(pairs)
        return original(self, pairs, **kwargs)

    monkeypatch.setattr(DiffCaptioner, "describe_batch", spy)
    assert _predict(data, model_dir, out) == 0
    assert len(described) == 1 and missing["id"] in str(described[0][0])
    # the missing caption is recomputed (greedy decoding: the same), the others kept, the split order restored
    assert json.loads(out.read_text())["predictions"] == doc["predictions"]
    described.clear()
    capsys.readouterr()
    assert _predict(data, model_dir, out) == 0
    assert not described and "already predicted" in capsys.readouterr().err


def test_predict_keeps_rows_outside_a_limit(predictions, data, model_dir, workdir):
    doc = json.loads(predictions.read_text())
    out = workdir / "limited.json"
    out.write_text(json.dumps(dict(doc, predictions=doc["predictions"][1:])))
    assert _predict(data, model_dir, out, "--limit", "1") == 0  # describes pair 0 only ...
    assert json.loads(out.read_text())["predictions"] == doc["predictions"]  # ... and loses nothing


def test_predict_refuses_a_file_of_another_model_or_split(predictions, data, model_dir, workdir, capsys):
    doc = json.loads(predictions.read_text())
    for field, value in (("model", "someone/else"), ("split", "val")):
        out = workdir / f"other_{field}.json"
        out.write_text(json.dumps(dict(doc, **{field: value})))
        before = out.read_text()
        assert _predict(data, model_dir, out) == 2
        err = capsys.readouterr().err
        assert value in err and "--out" in err and "Traceback" not in err
        assert out.read_text() == before
    assert _predict(data, model_dir, workdir / "x.json", "--batch-size", "0") == 2


def test_eval_on_the_generated_split(predictions, data, workdir, cli_scorer):
    # A one-fixed-sentence baseline: the first reference of the first training pair, for every test pair.
    train = json.loads((data / "train.json").read_text())
    fixed = workdir / "fixed.json"
    fixed.write_text(json.dumps([{"id": i, "caption": train[0]["captions"][0]} for i in _test_ids(data)]))
    out = workdir / "eval"
    rc = main(["eval", "--pred", f"model={predictions}", "--pred", f"fixed={fixed}", "--refs", str(data),
               "--split", "test", "--out", str(out), "--bootstrap", "50", "--on-empty", "score-as-empty"])
    assert rc == 0
    for f in ("report.json", "scores.csv", "table.tex", "report.html"):
        assert (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    n = len(_test_ids(data))
    assert rep["overall"]["n"] == n and rep["meta"]["n_pairs"] == n
    assert set(rep["overall"]) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "n", "ci"}
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert 0 <= rep["overall"][metric] <= 1000
    types = {t for r in json.loads((data / "test.json").read_text()) for t in r["change_types"]}
    assert set(rep["per_type"]) == types and all(v["n"] >= 1 for v in rep["per_type"].values())
    assert set(rep["runs"]) == {"model", "fixed"} and rep["comparison"]["base"] == "model"
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"model", "fixed"}
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "n"} <= set(rows[0])
    assert {r["slice"] for r in rows if r["slice_kind"] == "type"} == types
    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "\nmodel &" in tex and "\nfixed &" in tex
    assert "plotly" in (out / "report.html").read_text()
