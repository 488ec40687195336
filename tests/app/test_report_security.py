"""A report someone uploads can never make the server read a file outside the operator's folders."""
from __future__ import annotations

import json
from pathlib import Path

import app
from analysis.report import pair_images, read_report
from tests.analysis.conftest import make_report


def _upload(tmp_path, report: dict) -> Path:
    up = tmp_path / "upload" / "report.json"
    up.parent.mkdir(exist_ok=True)
    up.write_text(json.dumps(report))
    return up


def test_image_paths_outside_the_operators_folders_are_never_opened(tmp_path, monkeypatch):
    elsewhere = make_report(tmp_path / "elsewhere", "secret")  # a dataset the operator did not name
    report = json.loads(Path(elsewhere).read_text())
    secret = Path(report["meta"]["references"]) / "images" / "p0_b.png"
    assert secret.is_file()
    report["pairs"][0]["before"], report["pairs"][0]["after"] = str(secret), str(secret)
    report["pairs"][1]["before"], report["pairs"][1]["after"] = "/etc/passwd", "../../../../etc/passwd"
    allowed = (tmp_path / "operator",)

    opened = []
    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: opened.append(str(self)) or real_is_file(self))
    loaded = read_report(_upload(tmp_path, report), allowed=allowed)
    # meta.references leads outside: the dataset is not read, no pair resolves
    assert loaded["_images"] == {}
    for record in loaded["pairs"]:
        assert pair_images(loaded, record) is None
    assert not any("elsewhere" in p or "passwd" in p for p in opened)  # not even probed

    # the same report, trusted (the operator named it), still shows its images
    trusted = read_report(Path(elsewhere))
    assert pair_images(trusted, trusted["pairs"][0]) == (str(secret), str(secret.with_name("p0_a.png")))


def test_a_report_over_the_operators_data_still_shows_its_pairs(tmp_path):
    operator = make_report(tmp_path / "op", "m3diff")
    report = json.loads(Path(operator).read_text())
    data = Path(report["meta"]["references"])
    loaded = read_report(_upload(tmp_path, report), allowed=(data,))
    files = pair_images(loaded, loaded["pairs"][0])
    assert files and all(Path(f).is_file() and data in Path(f).resolve().parents for f in files)


def test_a_symlink_out_of_an_allowed_folder_is_refused(tmp_path):
    elsewhere = make_report(tmp_path / "elsewhere", "secret")
    outside = Path(json.loads(Path(elsewhere).read_text())["meta"]["references"]) / "images" / "p0_b.png"
    allowed = tmp_path / "operator"
    allowed.mkdir()
    (allowed / "link.png").symlink_to(outside)
    report = json.loads(Path(make_report(tmp_path / "r", "m3diff")).read_text())
    report["meta"].pop("references")
    report["pairs"][0]["before"] = report["pairs"][0]["after"] = str(allowed / "link.png")
    loaded = read_report(_upload(tmp_path, report), allowed=(allowed,))
    assert pair_images(loaded, loaded["pairs"][0]) is None


def test_the_errors_tab_of_an_uploaded_report_says_it_cannot_show_the_pair(tmp_path):
    """Through the app's own callbacks: upload (add_report with the operator's folders), then the
    Errors tab's view of a pair whose images lie elsewhere."""
    elsewhere = make_report(tmp_path / "elsewhere", "secret")
    report = json.loads(Path(elsewhere).read_text())
    services = app.Services(captioner=object(), reports={}, config=app.AppConfig())
    allowed = app.operator_folders(services)
    assert app.EXAMPLES_DIR in allowed
    reports, *_ = app.add_report({}, str(_upload(tmp_path, report)), "CIDEr-D", allowed)
    uploaded = reports["report"]
    calls = []
    image, hb, ha, legend, text = app.error_pair(lambda b, a: calls.append((b, a)), uploaded, "p0")
    assert image is None and not calls and "does not say where" in text


def test_a_bad_report_upload_keeps_the_dashboard_as_it_was(tmp_path):
    """It used to raise, turning the chart and every table into "Error" until the metric changed."""
    good = read_report(make_report(tmp_path / "g", "m3diff"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a report"}')
    before = app.dashboard_view({"m3diff": good}, "CIDEr-D")
    reports, *views = app.add_report({"m3diff": good}, str(bad), "CIDEr-D")
    assert list(reports) == ["m3diff"]
    as_data = lambda v: v if isinstance(v, str) else v.to_dict()  # noqa: E731  (tables and Markdown notes)
    assert [as_data(v) for v in views[1:]] == [as_data(v) for v in before[1:]]  # the tables, unchanged


def test_deltas_between_different_pair_sets_say_so(tmp_path):
    from analysis.tables import delta_table

    a = read_report(make_report(tmp_path / "a", "m3diff"))
    b = json.loads(Path(make_report(tmp_path / "b", "other", shift=2.0)).read_text())
    same = delta_table({"m3diff": a, "other": b})
    assert set(same["pairs"]) == {"same"}
    b["pairs"] = b["pairs"][:2]  # another run over fewer pairs
    b["overall"]["n"] = 2
    different = delta_table({"m3diff": a, "other": b})
    assert (different["pairs"] == "DIFFERENT pair sets: not comparable").all()
