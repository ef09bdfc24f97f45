"""Headless Chromium for page tests: load a file:// page, take a screenshot, collect console messages."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def load_page(page: Path, screenshot: Path, size: tuple[int, int] = (1280, 2400), timeout_s: float = 90) -> list[str]:
    """Open ``page`` from file://, save a screenshot, return every console message the page produced."""
    exe = chromium()
    assert exe is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
             f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=3000", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    return [ln for ln in proc.stderr.splitlines() if re.search(r":CONSOLE[:(]", ln)]
