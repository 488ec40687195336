"""End to end in headless Chromium (Debian's chromium driven by Playwright): upload a pair, Describe, see
the caption, the Score chart and a heatmap with its colour scale; the Dashboard's protocol card and
localization panel; a test pair of the Errors tab, regenerated, with its true boxes and hit or miss;
what a model with a change reader read, beside its caption. The walk is scripts/screenshots.py's; here
its screenshots go to a temporary folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from m3diff.describing import GenerationSettings
from scripts.screenshots import CHROMIUM, EXPERIMENTS, TABS, explore, open_app, served_as_fresh_clone, tour

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_describe_in_a_browser_and_screenshot_every_tab(tmp_path):
    with served_as_fresh_clone(tmp_path) as (url, scored):
        shots = tour(url, scored, tmp_path / "shots", tmp_path / "profile")
    assert set(shots) == set(TABS)
    for path in shots.values():
        assert path.parent == tmp_path / "shots" and path.stat().st_size > 20_000


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_make_a_pair_of_each_type_probe_it_and_read_the_dashboard_at_1400px(tmp_path):
    with served_as_fresh_clone(tmp_path) as (url, _):
        shots = explore(url, tmp_path / "shots", tmp_path / "profile")
    assert set(shots) == set(EXPERIMENTS)
    for path in shots.values():
        assert path.stat().st_size > 10_000


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_described_pair_shows_what_the_model_read(reader_captioner, pair_files, tmp_path):
    """A model with a change reader: beside the caption, one line per change read (its type's colour
    swatch), and its boxes drawn on the before and the after image."""
    from playwright.sync_api import sync_playwright

    from tests.app.conftest import serve

    reading = reader_captioner.describe(*pair_files, settings=GenerationSettings(max_new_tokens=8)).changes
    assert reading.changes, "the tiny random reader reads changes at threshold 0.5"
    with serve(reader_captioner) as url, sync_playwright() as pw:
        browser, page = open_app(pw, tmp_path / "profile", url)
        panel = page.locator("#read-panel")
        assert "What the model read" in panel.inner_text()
        page.locator("#before input[type=file]").set_input_files(pair_files[0])
        page.locator("#after input[type=file]").set_input_files(pair_files[1])
        page.locator("#before img").first.wait_for(timeout=20_000)
        page.locator("#after img").first.wait_for(timeout=20_000)
        page.locator("#describe-btn").click()
        lines = page.locator("#read-changes li")
        lines.first.wait_for(timeout=60_000)
        assert [lines.nth(i).get_attribute("data-type") for i in range(lines.count())] == \
            [c.type for c in reading.changes]
        assert reading.changes[0].type in lines.first.inner_text()
        for side in ("before", "after"):
            page.locator(f"#read-{side} img").first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "read.png"), full_page=True)
        browser.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_errors_tab_shows_what_the_change_reader_read_in_a_pair(services, read_report_file, tmp_path):
    """A report whose run has a detection section: the Dashboard's per-type table, and in the Errors tab the
    picked pair's row per change (true vs read, ✓/✗) with both images of the read boxes."""
    from playwright.sync_api import sync_playwright

    import app
    from analysis.report import read_report
    from tests.app.conftest import free_port

    path, pid, role = read_report_file
    config = app.AppConfig(port=free_port(), max_new_tokens=4)
    demo = app.build_app(app.Services(services.captioner, None, {"reader": read_report(path)}, "", config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser, page = open_app(pw, tmp_path / "profile", f"http://127.0.0.1:{config.port}/")
            page.get_by_role("tab", name="Dashboard").click()
            page.wait_for_function("() => ['recall %', 'pointing %', 'overall'].every("
                                   "w => document.querySelector('#detection-table').textContent.includes(w))",
                                   timeout=20_000)
            assert not page.locator("#errors-read-before").is_visible()
            page.get_by_role("tab", name="Errors").click()
            table = page.locator("#errors-table")
            table.get_by_text(pid, exact=True).first.click()
            rows = page.locator("#errors-text table tr")
            rows.first.wait_for(timeout=60_000)
            texts = [rows.nth(i).inner_text() for i in range(rows.count())]
            assert "box pointed" in texts[0]
            right = next(t for t in texts[1:] if t.split()[0] == role["right"].type)
            wrong = next(t for t in texts[1:] if t.split()[0] == role["wrong"].type)
            assert right.count("✓") == 3 and wrong.count("✗") == 2 and "✓" in wrong
            for side in ("before", "after"):
                page.locator(f"#errors-read-{side} img").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "errors.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
