"""End to end in headless Chromium (Debian's chromium driven by Playwright): upload a pair, Describe, see
the caption, the Score chart and a heatmap; screenshot every tab into docs/images/app_*.png."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app
from tests.app.test_server import free_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = app.HERE / "docs" / "images"


@pytest.fixture
def live_app():
    """The app as `python app.py` starts it (default model, shipped or example reports)."""
    config = app.AppConfig(port=free_port())
    demo = app.build_app(app.load_services(config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/"
    finally:
        demo.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_describe_in_a_browser_and_screenshot_every_tab(live_app, tmp_path):
    from playwright.sync_api import sync_playwright

    ex = app.EXAMPLES_DIR / "images"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # a fresh profile per run: launch_persistent_context is Playwright's way to pass --user-data-dir
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        args=FLAGS, viewport={"width": 1400, "height": 1000})
        page = browser.new_page()
        page.goto(live_app, wait_until="load")
        page.locator("#describe-btn").wait_for(timeout=30_000)
        # what the loaded model knows and how good it measured, above the caption
        statement = page.locator("#model-statement").inner_text()
        assert "generated scenes only" in statement and "measured CIDEr-D" in statement
        # illumination: the change the shipped model reads best (its README table), so the screenshot
        # shows a caption that fits its pair
        page.locator("#before input[type=file]").set_input_files(str(ex / "illumination_before.png"))
        page.locator("#after input[type=file]").set_input_files(str(ex / "illumination_after.png"))
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
        page.wait_for_timeout(1500)  # the stream's last tokens and the twin's box
        caption = page.locator("#caption textarea").input_value()
        assert any(w in caption.lower() for w in ("light", "darker", "brighter", "shadow")), caption
        page.screenshot(path=str(SHOTS / "app_describe.png"), full_page=True)

        page.get_by_role("tab", name="Dashboard").click()
        page.locator(".js-plotly-plot:visible").first.wait_for(timeout=20_000)
        # the grounding checks of the shipped reports: one row per model
        page.locator("text=same-scene swap >> visible=true").first.wait_for(timeout=20_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(SHOTS / "app_dashboard.png"), full_page=True)

        page.get_by_role("tab", name="Errors").click()
        table = page.locator("#errors-table")
        table.wait_for(timeout=20_000)
        cell = table.locator("[data-testid=cell-0-0]").first  # gradio 6: a virtual grid of divs
        cell.wait_for(timeout=20_000)
        cell.click()
        page.get_by_text("Prediction:").wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SHOTS / "app_errors.png"), full_page=True)
        browser.close()
    for tab in ("describe", "dashboard", "errors"):
        assert (SHOTS / f"app_{tab}.png").stat().st_size > 20_000
