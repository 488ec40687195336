"""A report someone uploads can never make the server read a file outside the operator's folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import app
from analysis.report import read_report
from tests.analysis.conftest import make_report
from webapp.reports import ReportStore


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
    # paths a report might try to name beside its pairs: not part of a report, never looked at
    report["pairs"][0]["before"], report["pairs"][0]["after"] = str(secret), str(secret)
    report["pairs"][1]["before"], report["pairs"][1]["after"] = "/etc/passwd", "../../../../etc/passwd"
    allowed = (tmp_path / "operator",)

    opened = []
    for name in ("is_file", "exists"):
        real = getattr(Path, name)
        monkeypatch.setattr(Path, name, lambda self, real=real: opened.append(str(self)) or real(self))
    loaded = read_report(_upload(tmp_path, report), allowed=allowed)
    # meta.references leads outside: the dataset is not read, no pair resolves
    assert loaded.images == {} and loaded.references_dir is None
    assert all(loaded.pair_files(p.id) is None for p in loaded.report.pairs)
    assert not any("elsewhere" in p or "passwd" in p for p in opened)  # not even probed

    # the same report, trusted (the operator named it), still shows its images
    trusted = read_report(Path(elsewhere))
    assert trusted.pair_files("p0") == (str(secret), str(secret.with_name("p0_a.png")))


def test_a_report_over_the_operators_data_still_shows_its_pairs(tmp_path):
    operator = make_report(tmp_path / "op", "m3diff")
    report = json.loads(Path(operator).read_text())
    data = Path(report["meta"]["references"])
    loaded = read_report(_upload(tmp_path, report), allowed=(data,))
    files = loaded.pair_files("p0")
    assert files and all(Path(f).is_file() and data in Path(f).resolve().parents for f in files)


def test_a_symlink_out_of_an_allowed_folder_is_refused(tmp_path):
    elsewhere = make_report(tmp_path / "elsewhere", "secret")
    data = Path(json.loads(Path(elsewhere).read_text())["meta"]["references"])
    allowed = tmp_path / "operator"
    shutil.copytree(data, allowed)
    (allowed / "images" / "p0_b.png").unlink()
    (allowed / "images" / "p0_b.png").symlink_to(data / "images" / "p0_b.png")  # a file of elsewhere
    report = json.loads(Path(elsewhere).read_text())
    report["meta"]["references"] = str(allowed)
    loaded = read_report(_upload(tmp_path, report), allowed=(allowed,))
    # the link leads out: the dataset reader refuses the folder, so no pair of it is shown
    assert loaded.pair_files("p0") is None and loaded.images == {}


def test_the_errors_tab_of_an_uploaded_report_says_it_cannot_show_the_pair(tmp_path):
    """Through the app's own callbacks: upload (add_report with the operator's folders), then the
    Errors tab's view of a pair whose images lie elsewhere."""
    elsewhere = make_report(tmp_path / "elsewhere", "secret")
    report = json.loads(Path(elsewhere).read_text())
    services = app.Services(captioner=object(), reports={}, config=app.AppConfig())
    allowed = services.operator_folders()
    assert app.EXAMPLES_DIR in allowed
    store = services.reports
    state, *_ = app.add_report(store, store.initial(), str(_upload(tmp_path, report)), "CIDEr-D", allowed)
    uploaded = store.resolve(state)[0]["report"]
    calls = []
    image, hb, ha, legend, *_, text = app.error_pair(lambda b, a: calls.append((b, a)), uploaded, "p0")
    # it names its references, outside the operator's folders: said so (not "does not say where"),
    # without naming them
    assert image is None and not calls and "were not found in the folders this app may read" in text
    assert str(tmp_path) not in text


def test_a_bad_report_upload_keeps_the_dashboard_as_it_was(tmp_path):
    """It used to raise, turning the chart and every table into "Error" until the metric changed."""
    store = ReportStore({"m3diff": read_report(make_report(tmp_path / "g", "m3diff"))})
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a report"}')
    state = store.initial()
    before = app.dashboard_view(store, state, "CIDEr-D")
    after, *views = app.add_report(store, state, str(bad), "CIDEr-D")
    assert after == state
    as_data = lambda v: v if isinstance(v, str) else v.to_dict()  # noqa: E731  (tables and Markdown notes)
    assert [as_data(v) for v in views[2:]] == [as_data(v) for v in before[2:]]  # the tables, unchanged


def test_deltas_between_different_pair_sets_say_so(tmp_path):
    from analysis.render import delta_table

    a = read_report(make_report(tmp_path / "a", "m3diff")).report
    b = read_report(make_report(tmp_path / "b", "other", shift=2.0)).report
    same = delta_table({"m3diff": a, "other": b})
    assert set(same["pairs"]) == {"same"}
    b.pairs = b.pairs[:2]  # another run over fewer pairs
    b.run.scores.overall.n = 2
    different = delta_table({"m3diff": a, "other": b})
    assert (different["pairs"] == "DIFFERENT pair sets: not comparable").all()
