"""The app's screenshots in docs/images, made by walking the served app in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/images]

The same walk is the browser test (tests/app/test_browser.py), which writes its screenshots to a
temporary folder: only this script writes into docs/. The app is served as on a fresh clone, where the
evaluation data the shipped reports name does not exist, so the Errors tab redraws their pairs from
the generator's settings.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

import app
from analysis.evidence import UNITS
from analysis.probe import probe_plan
from analysis.render import best_localizing_map
from analysis.report import Report, read_report
from m3diff.describing import EMBEDDED_DIR
from m3diff.change_types import TYPE_IDS
from webapp.services import default_report_paths

HERE = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TABS = ("describe", "dashboard", "errors", "localization")
EXPERIMENTS = ("make_pair", "probe")  # the Describe tab's panels (issue #32), shot by ``explore``


def open_app(pw, profile: Path, url: str):
    """(browser, page) with the app loaded at 1400 px, in a fresh profile (launch_persistent_context is
    Playwright's way to pass --user-data-dir)."""
    browser = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=FLAGS,
                                                    viewport={"width": 1400, "height": 1000})
    page = browser.new_page()
    page.goto(url, wait_until="load")
    page.locator("#describe-btn").wait_for(timeout=30_000)
    return browser, page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localized_ids(reports: list[Report]) -> set[str]:
    """Pair ids that a report's localization scored (they have a hit or miss to show)."""
    return {pid for rep in reports for run in rep.runs.values() if run.localization
            for pid in run.localization.pairs}


@contextlib.contextmanager
def served_as_fresh_clone(folder: Path):
    """The app as `python app.py` starts it (default model, the shipped reports), with the reports'
    data folder pointed where no data is; yields (url, ids of pairs with a localization score)."""
    reports, paths = [], []
    for path in default_report_paths():
        rep = Report.loads(path.read_text(encoding="utf-8"), name=path.name)
        rep.meta.references = "runs/not-on-a-fresh-clone"
        reports.append(rep)
        paths.append(str(rep.save(folder / path.name)))
    config = app.AppConfig(port=free_port(), reports=tuple(paths))
    demo = app.build_app(app.load_services(config))
    app.launch(demo, config, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{config.port}/", localized_ids(reports)
    finally:
        demo.close()


def tour(url: str, scored: set[str], shots: Path, profile: Path) -> dict[str, Path]:
    """Describe a pair, read the Dashboard and open a pair of the Errors tab, checking what each view
    must show on the way; a screenshot of each into ``shots``."""
    from playwright.sync_api import sync_playwright

    assert scored, "the reports' localization scored no pair"
    ex = HERE / "examples" / "images"
    shots.mkdir(parents=True, exist_ok=True)
    describe_png, dashboard_png, errors_png, localization_png = (shots / f"app_{tab}.png" for tab in TABS)
    with sync_playwright() as pw:
        browser, page = open_app(pw, profile, url)
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
        # the map shown first is the shipped model's best-pointing one by its report
        best, _ = best_localizing_map(read_report(EMBEDDED_DIR / "reports" / "m3diff.json").report.run.localization)
        assert UNITS[best] in legend.inner_text()
        page.wait_for_timeout(1500)  # the stream's last tokens and the twin's box
        caption = page.locator("#caption textarea").input_value()
        assert "red" in caption.lower(), caption  # the new colour, named
        page.screenshot(path=str(describe_png), full_page=True)

        page.get_by_role("tab", name="Dashboard").click()
        page.locator(".js-plotly-plot:visible").first.wait_for(timeout=20_000)
        # the grounding checks of the shipped reports: one row per model
        page.locator("text=same-scene swap >> visible=true").first.wait_for(timeout=20_000)
        # how each report was scored: its protocol card
        page.locator("#protocol-table").scroll_into_view_if_needed()
        page.wait_for_function("() => ['pycocoevalcap', 'references per pair', 'CIDEr-D'].every("
                               "w => document.querySelector('#protocol-table').textContent.includes(w))",
                               timeout=20_000)
        # does the model look at the change: each map beside the pixel difference and chance
        panel = page.locator("#localization-panel")
        panel.locator("#localization-pointing").get_by_text("pixel difference").first.wait_for(timeout=20_000)
        panel.locator("#localization-energy").get_by_text("uniform (chance)").first.wait_for(timeout=20_000)
        assert "‖ΔF‖" in panel.locator("#localization-pointing").inner_text()
        notes = panel.locator("#localization-notes").inner_text()
        assert "Sanity check, m3diff" in notes and "No change, m3diff" in notes
        page.wait_for_timeout(1500)
        page.screenshot(path=str(dashboard_png), full_page=True)
        panel.screenshot(path=str(localization_png))

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
        page.screenshot(path=str(errors_png), full_page=True)
        browser.close()
    return dict(zip(TABS, (describe_png, dashboard_png, errors_png, localization_png)))


def _scrolling_tables(page) -> list[str]:
    """The visible wide tables with a scroll container whose content is larger than its box."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.wide-table *')).filter(e => {
        const s = getComputedStyle(e);
        const scrolls = ['auto', 'scroll'].includes(s.overflowX) || ['auto', 'scroll'].includes(s.overflowY);
        return e.offsetParent !== null && scrolls
            && (e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1);
    }).map(e => e.closest('.wide-table').id || e.className)""")


def explore(url: str, shots: Path, profile: Path, types=TYPE_IDS) -> dict[str, Path]:
    """Make a pair of each change type and see its boxes, references and scores; probe the last one and see
    every row; the Dashboard's tables at 1400 px with nothing scrolling inside itself and its knockout panel."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    make_png, probe_png = (shots / f"app_{name}.png" for name in EXPERIMENTS)
    with sync_playwright() as pw:
        browser, page = open_app(pw, profile, url)
        page.locator("#make-pair-panel").get_by_text("Make a pair").first.click()
        boxes = page.locator("#make-types")
        boxes.wait_for(timeout=20_000)
        page.locator("#make-seed textarea, #make-seed input").first.fill("3")
        chosen = ["color"]
        for t in types:
            for old in chosen:
                boxes.get_by_label(old, exact=True).uncheck()
            boxes.get_by_label(t, exact=True).check()
            chosen = [t]
            page.locator("#make-btn").click()
            # the per-change table names the type; the score line, references and boxed images are there
            page.wait_for_function("t => { const e = document.querySelector('#made-changes');"
                                   " return e && e.textContent.includes(t) && !e.textContent.includes('no change'); }",
                                   arg=t, timeout=60_000)
            page.locator("#made-score").get_by_text("CIDEr-D").first.wait_for(timeout=30_000)
            assert page.locator("#made-refs").inner_text().count("\n") >= 2
            assert page.locator("#made-before img").first.get_attribute("src")
            assert "seed=3" in page.locator("#made-link textarea, #made-link input").first.input_value()
        page.wait_for_timeout(1000)
        page.locator("#make-pair-panel").screenshot(path=str(make_png))

        page.locator("#probe-panel").get_by_text("Probe this pair").first.click()
        plan = page.locator("#probe-plan").inner_text()
        page.locator("#probe-btn").click()
        page.wait_for_function("() => { const e = document.querySelector('#probe-table');"
                               " return e && e.textContent.includes('ΔF = 0'); }", timeout=90_000)
        table = page.locator("#probe-table").inner_text()
        rows = plan[plan.rindex("(") + 1:plan.rindex(")")].split(", ")  # the rows the panel announced
        assert rows[:4] == probe_plan(())[:4] and "ΔF = 0" in rows and "no-MDP twin" in rows
        for row in rows:
            assert row in table, f"probe row {row!r} missing"
        page.locator("#probe-note").get_by_text("rows in").first.wait_for(timeout=30_000)
        assert not _scrolling_tables(page), "the probe's table scrolls inside itself"
        page.wait_for_timeout(1000)
        page.locator("#probe-panel").screenshot(path=str(probe_png))

        page.get_by_role("tab", name="Dashboard").click()
        page.locator("text=same-scene swap >> visible=true").first.wait_for(timeout=20_000)
        page.locator("#knockout-note").wait_for(timeout=20_000)
        page.wait_for_timeout(1500)
        scrolling = _scrolling_tables(page)
        assert not scrolling, f"Dashboard tables scrolling inside themselves at 1400 px: {scrolling}"
        browser.close()
    return dict(zip(EXPERIMENTS, (make_png, probe_png)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Make the app's screenshots by walking the served app in "
                                             "headless Chromium (Debian's chromium, driven by Playwright).")
    ap.add_argument("--out", type=Path, default=HERE / "docs" / "images", help="folder for app_*.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with served_as_fresh_clone(Path(tmp)) as (url, scored):
            for tab, path in tour(url, scored, args.out, Path(tmp) / "profile").items():
                print(f"{tab}: {path}")
            for panel, path in explore(url, args.out, Path(tmp) / "profile2").items():
                print(f"{panel}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
