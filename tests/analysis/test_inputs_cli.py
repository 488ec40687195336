from __future__ import annotations

import json

import pytest

from analysis.inputs import InputError, align, load_references, parse_predictions
from m3diff.data.record import DiffPair


def _refs(n=8):
    return [DiffPair(id=f"r{i}", before=None, after=None, captions=(f"caption {i}",), change_types=("color",))
            for i in range(n)]


def test_prediction_formats():
    a = parse_predictions([{"id": "r1", "caption": "x"}])
    b = parse_predictions([{"image_id": 1, "caption": "x"}])
    c = parse_predictions({"r1": "x"})
    assert a.captions == {"r1": "x"} and b.captions == {"1": "x"} and c.captions == {"r1": "x"}
    with pytest.raises(InputError, match="record #0 needs 'id'"):
        parse_predictions([{"caption": "x"}])


def test_mismatch_lists_ids_and_needs_a_choice():
    preds = parse_predictions([{"id": f"r{i}", "caption": "c"} for i in range(2, 8)] + [{"id": "zz", "caption": "c"}])
    with pytest.raises(InputError) as e:
        align(preds, _refs())
    msg = str(e.value)
    assert "'zz'" in msg and "2 reference id(s) without a prediction: 'r0', 'r1'" in msg and "--on-mismatch intersect" in msg
    al = align(preds, _refs(), on_mismatch="intersect")
    assert al.ids == [f"r{i}" for i in range(2, 8)] and al.notes and al.dropped["reference_without_prediction"] == ["r0", "r1"]


def test_many_ids_are_truncated_with_a_count():
    preds = parse_predictions([{"id": f"x{i}", "caption": "c"} for i in range(20)] + [{"id": "r0", "caption": "c"}])
    with pytest.raises(InputError, match=r"20 prediction id\(s\).*\(\+15 more\)"):
        align(preds, _refs())


def test_duplicates_and_empty():
    rows = [{"id": f"r{i}", "caption": "c"} for i in range(8)] + [{"id": "r3", "caption": "other"}]
    with pytest.raises(InputError, match="appear more than once: 'r3'"):
        align(parse_predictions(rows), _refs())
    assert align(parse_predictions(rows), _refs(), on_duplicate="last").hyps[3] == "other"
    rows = [{"id": f"r{i}", "caption": "" if i == 5 else "c"} for i in range(8)]
    with pytest.raises(InputError, match="1 empty prediction.*'r5'.*--on-empty score-as-empty"):
        align(parse_predictions(rows), _refs())
    al = align(parse_predictions(rows), _refs(), on_empty="score-as-empty")
    assert al.hyps[5] == "" and len(al.ids) == 8 and al.notes


def test_no_common_ids_is_always_an_error():
    with pytest.raises(InputError, match="no id is in both"):
        align(parse_predictions({"a": "c"}), _refs(), on_mismatch="intersect")


def test_coco_ground_truth(tmp_path):
    p = tmp_path / "gt.json"
    p.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}],
                             "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"},
                                             {"image_id": 2, "caption": "c"}]}))
    pairs = load_references(p)
    assert [(x.id, x.captions) for x in pairs] == [("1", ("a", "b")), ("2", ("c",))]


def test_eval_cli_writes_four_reports(dataset, cli_scorer, capsys):
    from m3diff.cli import main

    out = dataset / "out"
    fixed = dataset / "fixed.json"
    recs = json.loads((dataset / "data" / "test.json").read_text())
    fixed.write_text(json.dumps([{"id": r["id"], "caption": "the red chair moved to the left."} for r in recs]))
    rc = main(["eval", "--pred", str(fixed), "--refs", str(dataset / "data"), "--split", "test",
               "--out", str(out), "--bootstrap", "50"])
    assert rc == 0
    for f in ("report.json", "scores.csv", "table.tex", "report.html"):
        assert (out / f).stat().st_size > 0
    from analysis.report import Report

    report = Report.loads((out / "report.json").read_text())
    overall = report.run.scores.overall
    assert set(overall.scores) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE"} and set(overall.ci) == set(overall.scores)
    assert overall.scores["SPICE"] is None and overall.n == 60
    assert all(s.n > 0 and s.scores["CIDEr-D"] is not None for s in report.run.scores.per_type.values())
    assert len(report.pairs) == 60 and report.pairs[0].score.refs and "BLEU-4" in report.pairs[0].score.scores
    assert "Real" in (out / "table.tex").read_text() and "Render" in (out / "table.tex").read_text()
    assert "plotly" in (out / "report.html").read_text()
    # the protocol card: in report.json, the page and the table's caption
    card = report.run.protocol
    assert card.pairs == 60 and card.spice is False and card.meteor is True
    assert card.scorer.startswith("pycocoevalcap ") and "CIDEr-D" in card.cider and card.scale == "×100"
    assert card.id_matching == "exact" and card.left_out == {}
    assert "<h2>Protocol</h2>" in (out / "report.html").read_text() and "not CIDEr" in (out / "report.html").read_text()
    caption = next(line for line in (out / "table.tex").read_text().splitlines() if line.startswith("\\caption{"))
    assert "pycocoevalcap" in caption and "60 pairs" in caption and "x100" in caption
    printed = capsys.readouterr().out
    assert printed.startswith("protocol: pycocoevalcap") and "BLEU-1" in printed and "BLEU-3" in printed


def test_eval_cli_bad_input_is_one_line_exit_2(dataset, capsys):
    from m3diff.cli import main

    bad = dataset / "bad.json"
    bad.write_text(json.dumps([{"id": "nope", "caption": "x"}]))
    rc = main(["eval", "--pred", str(bad), "--refs", str(dataset / "data"), "--split", "test", "--no-meteor"])
    err = capsys.readouterr().err
    assert rc == 2 and "'nope'" in err and "Traceback" not in err


def test_doctor(capsys):
    from m3diff.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "METEOR" in out and "SPICE" in out


def _coco_files(tmp_path, n=30, seed=5, empty=(3, 11, 17), ids=lambda i: str(i * 7 + 256)):
    """A COCO caption ground truth the way authors publish it (Spot-the-Diff's DDLA files): string image
    ids, one ``images`` entry per annotation (the id repeated), annotation ids equal to the image id, one
    or two references per pair, pairs whose only reference is "" (the seven of Spot-the-Diff's test
    split), and a results file with one caption per image."""
    from tests.analysis.conftest import make_split

    recs, preds = make_split(n, seed=seed)
    images, anns = [], []
    for k, r in enumerate(recs):
        iid = ids(int(r["id"][1:]))
        caps = [""] if k in empty else r["captions"][: 1 + k % 2]
        for c in caps:
            images.append({"id": iid})
            anns.append({"image_id": iid, "caption": c, "id": iid})
    results = [{"image_id": str(int(p["id"][1:]) * 7 + 256), "caption": p["caption"], "id": "x"} for p in preds]
    gt, res = tmp_path / "gtfile.json", tmp_path / "predfile.json"
    gt.write_text(json.dumps({"annotations": anns, "images": images}))
    res.write_text(json.dumps(results))
    assert len(images) > len({im["id"] for im in images})  # the id really repeats
    return gt, res


def _cocoevalcap(gt_file, res_file, meteor):
    """The path of the authors' notebook: COCO(gt) → loadRes(pred) → COCOEvalCap with
    params['image_id'] = cocoRes.getImgIds(), scorers run one by one (SPICE left out, it needs CoreNLP)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    coco = COCO(str(gt_file))
    coco_res = coco.loadRes(str(res_file))
    img_ids = coco_res.getImgIds()
    gts = PTBTokenizer().tokenize({i: coco.imgToAnns[i] for i in img_ids})
    res = PTBTokenizer().tokenize({i: coco_res.imgToAnns[i] for i in img_ids})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    want = {f"BLEU-{k + 1}": 100 * bleu[k] for k in range(4)}
    want |= {"ROUGE-L": 100 * Rouge().compute_score(gts, res)[0], "CIDEr-D": 100 * Cider().compute_score(gts, res)[0],
             "METEOR": 100 * meteor.compute_score(gts, res)[0]}
    return want, len(img_ids)


def test_coco_ground_truth_as_the_authors_publish_it_scores_exactly_as_cocoevalcap(tmp_path, cli_scorer, capsys):
    """DDLA's files as published (repeated image entries, "" references, one and two references per pair)
    score with the plain command, no flag, to pycocoevalcap's own numbers on every pair, BLEU-1..4 included."""
    from m3diff.cli import main

    gt_file, res_file = _coco_files(tmp_path)
    want, n = _cocoevalcap(gt_file, res_file, cli_scorer._meteor)
    capsys.readouterr()

    assert main(["eval", "--pred", str(res_file), "--refs", str(gt_file), "--json", "--bootstrap", "0"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert overall["n"] == n == 30
    for m, v in want.items():
        assert overall[m] == round(v, 4), m  # report.json keeps 4 decimals
    assert main(["eval", "--pred", str(res_file), "--refs", str(gt_file), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "BLEU-1" in line).split()
    row = next(line for line in table.splitlines() if line.startswith("overall")).split()
    for m in want:
        assert f"{want[m]:.2f}" == row[header.index(m)], m  # columns: slice, n, the metrics
    assert "macro" not in table  # no change types in these references: no empty macro row


def test_references_keyed_by_image_file_match_predictions_keyed_by_id(tmp_path, cli_scorer, capsys):
    """FINER-MLLM's COCO references name Spot-the-Diff pairs '256.png'; the reader (and DDLA) say '256'."""
    from m3diff.cli import main

    gt_file, res_file = _coco_files(tmp_path, ids=lambda i: f"{i * 7 + 256}.png")
    capsys.readouterr()
    assert main(["eval", "--pred", str(res_file), "--refs", str(gt_file), "--json", "--bootstrap", "0",
                 "--out", str(tmp_path / "ev")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["overall"]["n"] == 30
    assert err.count("differ only by an image extension") == 1 and "'256' for '256.png'" in err
    from analysis.report import Report

    report = Report.loads((tmp_path / "ev" / "report.json").read_text())
    assert report.run.protocol.id_matching == "image extension"


def test_very_long_captions_are_cut_with_a_warning_and_scored_quickly(dataset, cli_scorer, capsys):
    """A 20,000-word prediction stopped the METEOR jar; a 50 MB reference kept eval busy for minutes.
    Both are cut to their first MAX_CAPTION_WORDS words, said once, and score as the cut text would."""
    import time

    from analysis.inputs import MAX_CAPTION_WORDS
    from m3diff.cli import main

    recs = json.loads((dataset / "data" / "test.json").read_text())
    preds = json.loads((dataset / "pred.json").read_text())
    words = "the red cube moved to the left of a small blue sphere".split()
    long_pred = " ".join(words[i % len(words)] for i in range(20_000))
    preds[0]["caption"] = long_pred
    recs[1]["captions"] = [recs[1]["captions"][0] + " " + "a " * 25_000_000]  # ~50 MB
    (dataset / "data" / "test.json").write_text(json.dumps(recs))
    (dataset / "long.json").write_text(json.dumps(preds))
    start = time.perf_counter()
    assert main(["eval", "--pred", str(dataset / "long.json"), "--refs", str(dataset / "data"), "--split", "test",
                 "--json", "--bootstrap", "0"]) == 0
    assert time.perf_counter() - start < 120
    out, err = capsys.readouterr()
    got = json.loads(out)["overall"]
    assert got["METEOR"] is not None
    assert err.count(f"longer than {MAX_CAPTION_WORDS:,} words") == 1 and "'p0000'" in err and "'p0001'" in err

    # the same numbers as the captions cut by hand
    preds[0]["caption"] = " ".join(long_pred.split()[:MAX_CAPTION_WORDS])
    recs[1]["captions"] = [" ".join(recs[1]["captions"][0].split()[:MAX_CAPTION_WORDS])]
    (dataset / "data" / "test.json").write_text(json.dumps(recs))
    (dataset / "cut.json").write_text(json.dumps(preds))
    assert main(["eval", "--pred", str(dataset / "cut.json"), "--refs", str(dataset / "data"), "--split", "test",
                 "--json", "--bootstrap", "0"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["overall"] == got and "longer than" not in err
