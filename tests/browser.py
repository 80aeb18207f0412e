"""Headless Debian Chromium through Playwright, for the page tests (review app, dataset card).

Flags as the machine notes advise: no sandbox (root), no background networking or component updates
(the closed network refuses them, many at a time). Importing this module skips the calling test
module with the reason when Chromium or Playwright is missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--autoplay-policy=no-user-gesture-required"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright  # noqa: F401  (re-exported for the tests)
except ImportError:
    pytest.skip("playwright not installed: pip install playwright (no `playwright install` needed)",
                allow_module_level=True)


def launch(p):
    """A Chromium browser from a running ``sync_playwright()`` context."""
    return p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
