"""report.html: self-contained, loads from file:// in headless Chromium without console messages."""

from __future__ import annotations

import re

import pytest

from cvd_scene.cli import main
from tests.browser import chromium, load_page


def test_report_of_a_run_without_stages_is_self_contained(tmp_path):
    assert main(["run", str(tmp_path / "r"), "--until", "plan", "--quiet"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<title>cvd-scene" in page
    # self-contained: no external resources at all
    assert not re.search(r"""(src|href)=["']https?://""", page)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_report_loads_in_headless_chromium_without_console_messages(tmp_path):
    assert main(["run", str(tmp_path / "r"), "--until", "plan", "--quiet"]) == 0
    shot = tmp_path / "shot.png"
    console = load_page(tmp_path / "r" / "report.html", shot, size=(1000, 800))
    assert console == []
    assert shot.stat().st_size > 1000


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_console_check_catches_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><script>nosuchfunction()</script></body></html>")
    console = load_page(bad, tmp_path / "bad.png", size=(400, 300))
    assert any("nosuchfunction" in line for line in console)
