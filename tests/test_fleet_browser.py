"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against a real `cm-fleet
serve` (real Mosquitto, waitress on a real port, SQLite) over a seeded historian: a user logs in, sees the fleet
(which updates without a reload), opens a machine whose charts draw, acknowledges an alert and closes it with a
failure mode; a viewer sees no button to change anything. Each page leaves a screenshot in
artifacts/screenshots/ (tests/browser.py)."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from broker import Mosquitto
from browser import browser, page, screenshot  # noqa: F401  (fixtures)
from fleet_helpers import T0_US, FleetService, contract_state
from waiting import eventually
from web_helpers import dashboard_url, raised_alert_ids, seed, shown_states, sign_in

from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian
from fleet.historian.accounts import Accounts
from fleet.payloads import Accepted
from fleet.web.credentials import hash_password

pytestmark = pytest.mark.waits  # on a real cm-fleet serve and a real browser
USERS = {"otto": ("operator", "operator-pass-2"), "vera": ("viewer", "viewer-pass-1")}
POLL_S = 10  # fleet.js reads the page's JSON twin this often


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Historian]]:
    directory = tmp_path_factory.mktemp("browser")
    broker = Mosquitto(directory / "broker").start()
    url = f"sqlite://{directory / 'historian.sqlite'}"
    historian = open_historian(HistorianConfig(url=url))
    accounts = Accounts(historian)  # as `cm-fleet user add` does (tests/test_fleet_web_cli.py runs that)
    for name, (role, password) in USERS.items():
        accounts.add(name, role, hash_password(password))
    seed(historian)
    service = FleetService(directory, broker.port, url, "[web]\nport = 0\n")
    try:
        service.start()
        assert eventually(lambda: "dashboard on http://" in service.read_log()), service.read_log()
        yield dashboard_url(service.read_log()), historian
        assert service.stop() == 0
    finally:
        if service.running():
            service.kill()
        historian.close()
        broker.stop()


def log_in(browser_page, base: str, name: str) -> None:
    sign_in(browser_page, base, name, USERS[name][1])
    assert browser_page.get_by_test_id("user").inner_text() == f"{name} ({USERS[name][0]})"


def test_an_operator_sees_the_fleet_opens_a_machine_and_acknowledges_and_closes_an_alert(dashboard, page):  # noqa: F811
    base, historian = dashboard
    page.goto(f"{base}/fleet")
    screenshot(page, "dashboard-login")
    log_in(page, base, "otto")

    assert shown_states(page) == {"pump-1": "alarm", "fan-2": "normal", "bare-3": "offline"}
    screenshot(page, "dashboard-fleet")
    # A new retained state arrives: the open page shows it within a poll, without a reload.
    historian.store([Accepted("state", "fan-2", contract_state("fan-2", 4, since_i=300))], [], T0_US)
    page.locator('[data-device="fan-2"][data-state="warning"]').wait_for(timeout=(POLL_S + 10) * 1000)
    assert shown_states(page)["fan-2"] == "warning"

    page.locator('[data-device="pump-1"] [data-testid="machine-link"]').click()
    page.wait_for_url(re.compile(r"/machines/pump-1$"))
    assert page.get_by_test_id("machine-name").inner_text().startswith("pump-1")
    for chart in ("chart-score", "chart-errors", "chart-features"):  # uPlot drew each one into a canvas
        page.locator(f'[data-testid="{chart}"] canvas').first.wait_for()
    screenshot(page, "dashboard-machine")

    first = raised_alert_ids()[0]
    page.get_by_test_id("nav-alerts").click()
    row = page.locator(f'[data-testid="alert-row"][data-alert="{first}"]')
    row.get_by_test_id("ack-comment").fill("on my way")
    row.get_by_test_id("ack-submit").click()
    row = page.locator(f'[data-testid="alert-row"][data-alert="{first}"]')
    assert row.get_by_test_id("alert-acknowledged").inner_text().startswith("otto, ")
    assert row.get_by_test_id("ack-form").count() == 0  # acknowledged once
    row.get_by_test_id("close-mode").select_option("outer_race")
    row.get_by_test_id("close-comment").fill("bearing replaced")
    row.get_by_test_id("close-submit").click()
    assert page.locator(f'[data-alert="{first}"]').count() == 0  # closed: no longer among the active ones
    page.get_by_test_id("alert-filters").get_by_text("closed", exact=True).click()
    row = page.locator(f'[data-testid="alert-row"][data-alert="{first}"]')
    assert row.get_by_test_id("alert-closed").inner_text().startswith("outer_race by otto, ")
    screenshot(page, "dashboard-alerts")
    stored = historian.read("SELECT acknowledged_by, ack_comment, closed_by, failure_mode, close_comment FROM alerts "
                            "WHERE id = ?", (first,))
    assert stored == [("otto", "on my way", "otto", "outer_race", "bearing replaced")]


def test_a_viewer_sees_the_alerts_without_a_way_to_change_them(dashboard, page):  # noqa: F811
    base, _ = dashboard
    log_in(page, base, "vera")
    page.get_by_test_id("nav-alerts").click()
    assert page.get_by_test_id("alert-row").count() > 0
    assert page.get_by_test_id("ack-form").count() == page.get_by_test_id("close-form").count() == 0
