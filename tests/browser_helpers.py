"""Headless chromium for the page tests (the HTML report, the service's page): the system's
chromium driven by Playwright, with the flags this closed network needs. Skips without a
browser, except where ``EFFICIENTAD_REQUIRE_BROWSER=1`` (CI installs chromium and sets it)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

BROWSER = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("EFFICIENTAD_REQUIRE_BROWSER") == "1"
# The closed network: no background connections, no first-run, no updates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def headless_chromium():
    """A launched Playwright ``Browser``, closed on exit; skips (or fails, where required)
    when Playwright or chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRE_BROWSER:
            raise
        pytest.skip('playwright not installed (pip install ".[test]")')
    if not Path(BROWSER).is_file():
        if REQUIRE_BROWSER:
            pytest.fail(f"EFFICIENTAD_REQUIRE_BROWSER=1 but {BROWSER} is missing (apt-get install chromium)")
        pytest.skip("no chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()
