"""What a hostile-but-fair visitor can send the served app, sent as a page sends it (webapp.visitor:
Gradio's queue, the Dashboard's and Errors tab's own events): every reply is one line of the app's,
naming what is wrong, with no server path, no exception text and no markup a browser would act on."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.analysis.conftest import make_report
from webapp.visitor import Visitor, file_data, reply_problems

pytestmark = pytest.mark.slow

HOSTILE = "<img src=http://127.0.0.1:9/beacon.png> [a link](http://127.0.0.1:9/x) <i>italic</i>"


@pytest.fixture
def visitor(server):
    v = Visitor(server)
    yield v
    v.close()


@pytest.fixture(scope="module")
def good_report(tmp_path_factory) -> dict:
    return json.loads(Path(make_report(tmp_path_factory.mktemp("good"))).read_text())


def _dashboard_upload(visitor: Visitor, tmp_path, report, name="report.json"):
    path = tmp_path / name
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    (sent,) = visitor.upload(path)
    event = visitor.event(visitor.component(label="Compare with another report.json"), "upload")
    return visitor.call(event["fn_index"], [None, sent, "CIDEr-D"])


def _problems(reply, laid_out=True) -> list[str]:
    return reply.problems(laid_out)


def _wrongly_typed(good: dict) -> dict:
    """name -> (the report, the field its refusal must name)."""
    cases = {}
    r = copy.deepcopy(good)
    r["meta"] = []
    cases["a list where an object belongs"] = (r, "meta")
    r = copy.deepcopy(good)
    r["pairs"][2]["CIDEr-D"] = "12.5"
    cases["a string where a score belongs"] = (r, "pairs[2].CIDEr-D")
    r = json.dumps(good).replace('"generator": null', '"generator": ' + "[" * 3000 + "0" + "]" * 3000)
    cases["deep nesting"] = (r, "report.json")
    r = copy.deepcopy(good)
    r["meta"]["references"] = 12
    cases["an int where a path belongs"] = (r, "meta.references")
    r = copy.deepcopy(good)
    run = next(iter(r["runs"]))
    r["runs"][run]["per_type"] = {HOSTILE: "x"}
    cases["markup in a key"] = (r, f"runs.{run}.per_type")
    return cases


def test_wrongly_typed_reports_get_one_line_naming_the_field(server, visitor, tmp_path, good_report, capfd):
    for case, (report, field) in _wrongly_typed(good_report).items():
        reply = _dashboard_upload(visitor, tmp_path, report)
        assert reply.error is None, (case, reply.error)  # a warning: the Dashboard keeps what it had
        assert len(reply.warnings) == 1 and field in reply.warnings[0], (case, reply.warnings)
        assert "\n" not in reply.warnings[0].strip(), case
        assert not _problems(reply), (case, _problems(reply))
    log = capfd.readouterr().err
    assert "Traceback" not in log
    assert log.count("refused a report upload") == len(_wrongly_typed(good_report))


def test_visitor_text_in_a_report_is_shown_as_text(server, visitor, tmp_path, good_report):
    report = copy.deepcopy(good_report)
    old_run = next(iter(report["runs"]))
    report["runs"] = {HOSTILE: report["runs"][old_run]}
    report["runs"][HOSTILE]["per_type"] = {HOSTILE: v for v in report["runs"][HOSTILE]["per_type"].values()}
    for p in report["pairs"]:
        p["caption"], p["refs"], p["id"] = HOSTILE, [HOSTILE], p["id"] + HOSTILE
        p["domain"] = HOSTILE
    report["meta"]["model"] = HOSTILE
    reply = _dashboard_upload(visitor, tmp_path, report, "hostile.json")
    assert reply.error is None and not reply.warnings, (reply.error, reply.warnings)
    assert HOSTILE in json.dumps(reply.outputs)  # the report was shown...
    assert not _problems(reply), _problems(reply)  # ...as text
    # the Errors tab: its table and a pair's text, as the page asks for them (the run picker first
    # learns the session's reports, as the page's state-change event tells it)
    run = visitor.component(label="run")
    picker = next(i for i, d in enumerate(visitor.config["dependencies"]) if d["outputs"] == [run])
    assert visitor.call(visitor.config["dependencies"][picker].get("id", picker), [None, None]).error is None
    rows = visitor.event(visitor.component(label="sort by"), "change")
    table = visitor.call(rows["fn_index"], [None, "hostile", "all", "all", "CIDEr-D", True])
    assert table.error is None and not _problems(table)
    select = visitor.event(visitor.component(elem_id="errors-table"), "select")
    shown = visitor.call(select["fn_index"], [None, "hostile", table.outputs[0]],
                         event_data={"index": [0, 0], "value": "x"})
    assert not _problems(shown), _problems(shown)


@pytest.mark.parametrize("where", ["relative", "absolute", "file:", "url"])
def test_describe_never_opens_or_fetches_a_server_path(server, visitor, pair_files, where, capfd):
    """A page (or a script) may name any path in place of an upload: it gets the app's line, and the
    server neither fetches the URL nor names its own folders."""
    from gradio_client import Client, handle_file

    path = {"relative": "app.py", "absolute": str(Path(__file__).resolve()), "file:": "file:///etc/passwd",
            "url": "http://127.0.0.1:9/x.png"}[where]
    (good,) = visitor.upload(pair_files[1])
    describe = next(i for i, d in enumerate(visitor.config["dependencies"]) if d.get("api_name") == "describe")
    describe = visitor.config["dependencies"][describe].get("id", describe)
    reply = visitor.call(describe, [file_data(path), good, 8])
    assert reply.error and reply.error.startswith("Before:") and "upload" in reply.error, reply.error
    assert not _problems(reply, laid_out=False), _problems(reply, laid_out=False)
    log = capfd.readouterr().err
    assert log.count("refused") == 1 and "Traceback" not in log, log[-2000:]  # one line per refusal
    if where == "url":  # the documented client sends a URL as it is
        client = Client(server, verbose=False)
        with pytest.raises(Exception) as err:
            client.predict(handle_file(path), handle_file(pair_files[1]), 8, api_name="/describe")
        assert "upload" in str(err.value) and not reply_problems(str(err.value)), str(err.value)


@pytest.fixture
def served_from_folders(services, tmp_path):
    """The app with its models loaded from folders of the server, as `--model DIR` and the embedded twin load."""
    import app
    from tests.app.conftest import free_port

    services.captioner.info  # noqa: B018
    for cap, name in ((services.captioner, "my-model"), (services.twin, "twin")):
        cap.source = str(tmp_path / "models" / name)
        cap.__dict__.pop("info", None)
    config = app.AppConfig(port=free_port(), max_new_tokens=8)
    demo = app.build_app(app.Services(services.captioner, services.twin, {}, "", config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/", tmp_path
    finally:
        demo.close()


def test_the_model_card_names_models_by_source_not_server_path(served_from_folders):
    url, folder = served_from_folders
    v = Visitor(url)
    try:
        page = json.dumps(v.config)
    finally:
        v.close()
    assert "my-model" in page and "twin" in page  # named...
    assert str(folder) not in page  # ...by the folder's name only


@pytest.fixture
def small_store_server(services):
    """The app with an upload budget of about two small reports, so the test sees the store let go."""
    import app
    from tests.app.conftest import free_port
    from webapp.reports import ReportStore, UploadLimits

    config = app.AppConfig(port=free_port(), max_new_tokens=8)
    store = ReportStore({}, UploadLimits(per_session=2, total_bytes=40_000))
    demo = app.build_app(app.Services(services.captioner, services.twin, store, "", config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/", store
    finally:
        demo.close()


def test_uploads_are_bounded_per_session_and_in_total_and_a_dropped_one_is_said(small_store_server, tmp_path,
                                                                              good_report):
    url, store = small_store_server
    first, second = Visitor(url), Visitor(url)
    try:
        assert not _dashboard_upload(first, tmp_path, good_report, "mine.json").warnings
        for k in range(3):  # one more than a session may hold: its oldest goes
            assert not _dashboard_upload(second, tmp_path, good_report, f"other{k}.json").warnings
        assert store.held_bytes() <= store.limits.total_bytes
        metric = first.event(first.component(label="metric"), "change")["fn_index"]
        back = first.call(metric, [None, "CIDEr-D"])
        assert back.error is None and "let go of mine" in back.outputs[0]  # said, when the visitor comes back
        again = second.call(second.event(second.component(label="metric"), "change")["fn_index"], [None, "CIDEr-D"])
        shown = json.dumps(again.outputs)
        assert "other2" in shown and "other0" not in shown  # two per session, the newest kept
    finally:
        first.close()
        second.close()


def test_the_reports_the_app_ships_name_no_path_of_a_machine():
    """The example report once carried the SPICE hint with the maker's site-packages path: the Dashboard
    showed it to every visitor."""
    import app
    from webapp.visitor import server_paths

    shipped = [app.EXAMPLES_DIR / "report.json", *sorted((app.HERE / "m3diff" / "weights" / "reports").glob("*.json"))]
    for path in shipped:
        text = path.read_text(encoding="utf-8")
        assert "site-packages" not in text and not [p for p in server_paths() if p in text], path.name
