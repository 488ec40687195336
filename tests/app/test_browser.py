"""End to end in headless Chromium (Debian's chromium driven by Playwright): upload a pair, Describe, see
the caption, the Score chart and a heatmap with its colour scale; the Dashboard's protocol card and
localization panel; a test pair of the Errors tab, regenerated, with its true boxes and hit or miss.
The walk is scripts/screenshots.py's; here its screenshots go to a temporary folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts.screenshots import CHROMIUM, EXPERIMENTS, TABS, explore, served_as_fresh_clone, tour

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
