"""Headless Chromium (Debian's chromium, driven by playwright) for the page tests: one page, and every console
error and page error it raised. `playwright install` downloads browsers and fails here: never call it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.procs import REPO

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]  # root needs --no-sandbox; the rest keep it off the closed network
SCREENSHOTS = REPO / "test-output"


@contextlib.contextmanager
def chromium_page(headers: dict[str, str] | None = None) -> Iterator[tuple[Any, list[str]]]:
    """A page and the problems it reports (console errors, uncaught exceptions), in a browser closed after."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium: apt-get install chromium"
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(extra_http_headers=headers or {})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            browser.close()
