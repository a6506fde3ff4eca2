"""A real headless browser for the tests: Debian's chromium driven by Playwright (the `playwright` package of the
dev extra), with screenshots kept as artifacts.

    from browser import browser, page, screenshot   # noqa: F401  (fixtures)

    def test_login(page):
        page.goto(url)
        screenshot(page, "login")          # artifacts/screenshots/login.png

The browser is the system's (`executable_path`), never one that `playwright install` downloads: only PyPI, Debian
and npm are reachable here, and `make system-deps` installs Debian's chromium. Headless only (no X server). Its
temporary files go to the test's own directory (TMPDIR), not the machine's /tmp. Screenshots go to
`artifacts/screenshots/` at the top of the checkout (git-ignored), or to $CM_ARTIFACTS/screenshots.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Debian's /usr/bin/chromium is a shell wrapper; the binary itself is what Playwright should start.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
VIEWPORT = {"width": 1280, "height": 800}


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if os.access(candidate, os.X_OK) else shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("chromium not found: `make system-deps` installs Debian's package `chromium`")


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("CM_ARTIFACTS", REPO / "artifacts")) / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page, name: str) -> Path:
    """The whole page as a PNG in the artifacts directory; returns its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    path = artifacts_dir() / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless chromium per test module (starting it takes about a second)."""
    from playwright.sync_api import sync_playwright  # the dev extra; imported here so other tests never load it

    scratch = tmp_path_factory.mktemp("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                              env={**os.environ, "TMPDIR": str(scratch)})
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    """A fresh page in its own context (no cookies shared between tests). A test that fails leaves a screenshot
    of where it was, named after the test."""
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    failed_before = request.session.testsfailed
    try:
        yield opened
    finally:
        # pytest counts a failed call before the fixtures' teardown runs
        if request.session.testsfailed > failed_before:
            screenshot(opened, f"failed-{request.node.name}")
        context.close()
