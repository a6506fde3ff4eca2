"""The browser harness (tests/browser.py) against a real local HTTP server: Debian's chromium, started by
Playwright headless, loads a page from `python -m http.server`, runs its script, submits its form, and the
screenshot it saves is a real PNG of the page. The dashboard's own browser tests build on these fixtures."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import free_port
from browser import browser, page, screenshot  # noqa: F401  (fixtures)
from waiting import eventually

pytestmark = pytest.mark.waits

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cm harness</title></head>
<body>
  <h1 id="title">Fleet</h1>
  <p>Machines in alarm: <span id="count">0</span></p>
  <button id="raise" onclick="document.getElementById('count').textContent =
      String(Number(document.getElementById('count').textContent) + 1)">raise</button>
  <form action="/done.html" method="get"><input name="who" id="who"><button id="send">send</button></form>
</body></html>
"""
DONE = "<!doctype html><html><head><title>done</title></head><body><p id='ok'>received</p></body></html>"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on a loopback port, serving two static pages."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    (root / "done.html").write_text(DONE)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        assert eventually(lambda: _serves(url) or server.poll() is not None, 15), "http.server did not start"
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _serves(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_system_chromium_loads_runs_and_submits_a_real_page(page, site: str) -> None:  # noqa: F811
    page.goto(f"{site}/index.html")
    assert page.title() == "cm harness"
    assert page.text_content("#title") == "Fleet"
    page.click("#raise")
    page.click("#raise")
    assert page.text_content("#count") == "2"  # the page's script ran in the browser
    page.fill("#who", "operator")
    page.click("#send")
    page.wait_for_url(f"{site}/done.html?who=operator")
    assert page.text_content("#ok") == "received"
    assert "HeadlessChrome" in page.evaluate("navigator.userAgent")


def test_a_screenshot_is_a_png_of_the_page_in_the_artifacts(page, site: str) -> None:  # noqa: F811
    page.goto(f"{site}/index.html")
    path = screenshot(page, "harness index")
    data = path.read_bytes()
    assert path.name == "harness-index.png" and path.parent.name == "screenshots"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height >= 200
