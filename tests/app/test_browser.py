"""End to end in headless Chromium (Debian's chromium driven by Playwright): upload a pair, Describe, see
the caption, the Score chart and a heatmap with its colour scale; the Dashboard's localization panel; a
test pair of the Errors tab, regenerated, with its true boxes and hit or miss. Screenshots of every tab
go to docs/images/app_*.png, the localization panel to docs/images/app_localization.png."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app
from webapp.services import default_report_paths
from tests.app.test_server import free_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = app.HERE / "docs" / "images"


def localized_ids(paths) -> set[str]:
    """Pair ids that a report's localization scored (they have a hit or miss to show)."""
    import json

    ids = set()
    for p in paths:
        for loc in (json.loads(Path(p).read_text(encoding="utf-8")).get("localization") or {}).values():
            ids |= set(loc.get("pairs") or {})
    return ids


@pytest.fixture
def live_app(tmp_path):
    """The app as `python app.py` starts it: default model, the shipped reports with localization —
    as on a fresh clone, where the evaluation data they name does not exist (a development checkout
    may hold it under runs/), so their pairs are redrawn from the generator's settings."""
    import json

    reports = []
    for path in default_report_paths():
        rep = json.loads(path.read_text(encoding="utf-8"))
        rep["meta"]["references"] = "runs/not-on-a-fresh-clone"
        reports.append(tmp_path / path.name)
        reports[-1].write_text(json.dumps(rep), encoding="utf-8")
    config = app.AppConfig(port=free_port(), reports=tuple(str(p) for p in reports))
    demo = app.build_app(app.load_services(config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/", localized_ids(config.reports or default_report_paths())
    finally:
        demo.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_describe_in_a_browser_and_screenshot_every_tab(live_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, scored = live_app
    assert scored, "the reports' localization scored no pair"

    ex = app.EXAMPLES_DIR / "images"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # a fresh profile per run: launch_persistent_context is Playwright's way to pass --user-data-dir
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        args=FLAGS, viewport={"width": 1400, "height": 1000})
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.locator("#describe-btn").wait_for(timeout=30_000)
        # what the loaded model knows and how good it measured, above the caption
        statement = page.locator("#model-statement").inner_text()
        assert "generated scenes only" in statement and "measured CIDEr-D" in statement
        # colour: a change whose object is large and plain to see, so the screenshot shows a caption
        # that can be checked against its pair at a glance (the orange cylinder turns red)
        page.locator("#before input[type=file]").set_input_files(str(ex / "color_before.png"))
        page.locator("#after input[type=file]").set_input_files(str(ex / "color_after.png"))
        page.locator("#before img").first.wait_for(timeout=20_000)
        page.locator("#after img").first.wait_for(timeout=20_000)
        page.locator("#describe-btn").click()
        page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0", timeout=60_000)
        # the Score chart: one plotly bar per MDP layer
        page.locator("#score-plot .js-plotly-plot").wait_for(timeout=30_000)
        bars = page.locator("#score-plot g.trace.bars path")
        bars.first.wait_for(timeout=30_000)
        assert bars.count() >= 1
        # a heatmap over the before image
        heat = page.locator("#heat-before img").first
        heat.wait_for(timeout=30_000)
        assert heat.get_attribute("src")
        # the maps' one colour scale, with its range and units
        legend = page.locator("#heat-legend .colour-legend")
        legend.wait_for(timeout=30_000)
        assert legend.get_attribute("data-vmin") == "0" and float(legend.get_attribute("data-vmax")) > 0
        assert "attention weight" in legend.inner_text()
        page.wait_for_timeout(1500)  # the stream's last tokens and the twin's box
        caption = page.locator("#caption textarea").input_value()
        assert "red" in caption.lower(), caption  # the new colour, named
        page.screenshot(path=str(SHOTS / "app_describe.png"), full_page=True)

        page.get_by_role("tab", name="Dashboard").click()
        page.locator(".js-plotly-plot:visible").first.wait_for(timeout=20_000)
        # the grounding checks of the shipped reports: one row per model
        page.locator("text=same-scene swap >> visible=true").first.wait_for(timeout=20_000)
        # does the model look at the change: each map beside the pixel difference and chance
        panel = page.locator("#localization-panel")
        panel.locator("#localization-pointing").get_by_text("pixel difference").first.wait_for(timeout=20_000)
        panel.locator("#localization-energy").get_by_text("uniform (chance)").first.wait_for(timeout=20_000)
        assert "‖ΔF‖" in panel.locator("#localization-pointing").inner_text()
        notes = panel.locator("#localization-notes").inner_text()
        assert "Sanity check, m3diff" in notes and "No change, m3diff" in notes
        page.wait_for_timeout(1500)
        page.screenshot(path=str(SHOTS / "app_dashboard.png"), full_page=True)
        panel.screenshot(path=str(SHOTS / "app_localization.png"))

        page.get_by_role("tab", name="Errors").click()
        table = page.locator("#errors-table")
        table.wait_for(timeout=20_000)
        table.locator("[data-testid=cell-0-0]").first.wait_for(timeout=20_000)  # gradio 6: a virtual grid of divs
        # a pair the report's localization scored (the shipped pairs' images do not ship: regenerated)
        cells = [table.locator(f"[data-testid=cell-{i}-0]").first for i in range(8)]
        cell = next(c for c in cells if c.count() and c.inner_text().strip() in scored)
        cell.click()
        page.get_by_text("Prediction:").wait_for(timeout=60_000)
        text = page.locator("#errors-text")
        text.get_by_text("Pointing", exact=True).first.wait_for(timeout=60_000)
        assert "regenerated" in text.inner_text()
        assert any(w in text.inner_text() for w in ("hit", "miss"))
        page.locator("#errors-pair img").first.wait_for(timeout=60_000)
        page.locator("#errors-map-before img").first.wait_for(timeout=60_000)
        page.locator("#errors-legend .colour-legend").wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SHOTS / "app_errors.png"), full_page=True)
        browser.close()
    for tab in ("describe", "dashboard", "errors", "localization"):
        assert (SHOTS / f"app_{tab}.png").stat().st_size > 20_000
