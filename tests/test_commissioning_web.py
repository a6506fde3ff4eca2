"""Commissioning on the dashboard of a real `cm-fleet serve` (real Mosquitto, waitress on a real port): the fleet
page and its twin show each machine's phase with its progress and refusal reason, the machine page shows the
detail with "Commission now" and "Learn again" for operators (CSRF-protected forms, JSON for API tokens) and
none for a viewer; closing an alert with a repair starts a new baseline. An operator in a real headless Chromium
reads the phase on the fleet page and presses "Commission now" on the machine page. (Every route's refusal of the anonymous,
the viewer and a missing CSRF token is tests/test_fleet_web.py's route sweep, which covers these routes too.)"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import Mosquitto
from browser import browser, page, screenshot  # noqa: F401  (fixtures)
from commissioning_helpers import STEP_US, baseline_card, learning_messages, levels
from fleet_helpers import T0_US, FleetService, contract_alert
from waiting import eventually
from web_helpers import Browser, dashboard_url, sign_in

from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian
from fleet.historian import commissioning as book
from fleet.historian.accounts import Accounts
from fleet.payloads import Accepted
from fleet.web.credentials import hash_password, new_token, token_hash

pytestmark = pytest.mark.waits  # on a real cm-fleet serve and its broker
PASSWORDS = {"vera": ("viewer", "viewer-pass-1"), "otto": ("operator", "operator-pass-2")}


@dataclass
class Site:
    base: str
    historian: Historian
    token: str

    def browser(self, user: str) -> Browser:
        signed_in = Browser(self.base)
        assert signed_in.login(user, PASSWORDS[user][1]).status_code == 303
        return signed_in


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("commissioning-web")
    url = f"sqlite://{directory / 'historian.sqlite'}"
    historian = open_historian(HistorianConfig(url=url))
    accounts = Accounts(historian)
    for name, (role, password) in PASSWORDS.items():
        accounts.add(name, role, hash_password(password))
    token = new_token()
    accounts.add_token("otto", token_hash(token))
    card = baseline_card(Path(directory) / "cards" / "pump")
    historian.store(learning_messages("pump-1", card, levels(40), T0_US)
                    + learning_messages("fan-2", card, levels(40, seed=1), T0_US)
                    + [Accepted("alert", "fan-2", contract_alert("fan-2", 0))], [], T0_US)
    assert book.discover(historian) == ["fan-2", "pump-1"]
    book.refuse(historian, "pump-1", "baseline too short: 0.27 of 14 days and 40 of 1000 snapshots so far")
    book.set_progress(historian, "pump-1", {"snapshots": 40, "days": 0.27, "min_snapshots": 1000, "min_days": 14.0})
    with Mosquitto(directory / "broker") as broker:
        service = FleetService(directory, broker.port, url, "[web]\nport = 0\n")
        service.start()
        try:
            assert eventually(lambda: "dashboard on http://" in service.read_log()), service.read_log()
            yield Site(dashboard_url(service.read_log()), historian, token)
        finally:
            assert service.stop() == 0
            historian.close()


def test_the_fleet_page_and_its_twin_show_the_phase_and_the_refusal(site):
    operator = site.browser("otto")
    phases = operator.get("/fleet.json").json()["phases"]
    assert phases["pump-1"] == ("learning: 40/1000 snapshots, 0.3/14 days; refused: baseline too short: 0.27 of 14 "
                                "days and 40 of 1000 snapshots so far")
    assert phases["fan-2"] == "learning: no check yet"
    html = operator.get("/fleet").text
    assert 'data-testid="machine-phase">learning: 40/1000 snapshots' in html


def test_the_machine_page_shows_the_detail_and_the_operators_buttons(site):
    operator, viewer = site.browser("otto"), site.browser("vera")
    twin = operator.get("/machines/pump-1.json").json()["commissioning"]
    assert (twin["phase"], twin["baseline_start_us"], twin["progress"]["snapshots"]) == ("learning", T0_US, 40)
    html = operator.get("/machines/pump-1").text
    assert 'data-testid="commissioning-phase">learning since' in html and "40 of 1000 snapshots" in html
    assert 'data-testid="commission-form"' in html and 'data-testid="learn-again-form"' in html
    seen = viewer.get("/machines/pump-1").text
    assert 'data-testid="commissioning-phase">learning' in seen and 'data-testid="commission-form"' not in seen


def test_commission_now_and_learn_again_from_the_page_and_the_api(site):
    operator = site.browser("otto")
    token = operator.csrf("/machines/pump-1")
    asked = operator.post("/machines/pump-1/commission", data={"csrf_token": token})
    assert asked.status_code == 303 and asked.headers["Location"] == "/machines/pump-1"
    found = book.record(site.historian, "pump-1")
    assert found is not None and found.requested_by == "otto" and found.requested_us is not None
    api = Browser(site.base).post("/machines/pump-1/learn-again", json={}, headers={"Authorization": f"Bearer {site.token}"})
    assert api.status_code == 200 and api.json()["started_by"] == "learn again by otto"
    assert api.json()["baseline_start_us"] == T0_US + 39 * STEP_US + 1 and api.json()["requested_us"] is None
    missing = operator.post("/machines/nope/commission", data={"csrf_token": token})
    assert missing.status_code == 409 and "machine &#39;nope&#39;: not in the historian" in missing.text


def test_closing_an_alert_with_a_repair_learns_again(site):
    operator = site.browser("otto")
    alert_id = contract_alert("fan-2", 0)["id"]
    token = operator.csrf("/alerts")
    closed = operator.post(f"/alerts/{alert_id}/close", data={"csrf_token": token, "failure_mode": "misalignment",
                                                              "repair": "realigned", "comment": "laser aligned"})
    assert closed.status_code == 303
    found = book.record(site.historian, "fan-2")
    assert found is not None and found.started_by == f"realigned (alert {alert_id} closed by otto)"
    assert "misalignment (realigned) by otto" in operator.get("/machines/fan-2").text
    refused = operator.post(f"/alerts/{alert_id}/close", data={"csrf_token": token, "failure_mode": "other", "repair": "x"})
    assert refused.status_code == 400 and "repair: expected one of bearing_replaced, realigned" in refused.text


def test_an_operator_reads_the_phase_and_asks_for_commissioning_in_a_real_browser(site, page):  # noqa: F811
    sign_in(page, site.base, "otto", PASSWORDS["otto"][1])
    twin = site.browser("otto").get("/fleet.json").json()["phases"]
    shown = {device: page.locator(f'[data-device="{device}"] [data-testid="machine-phase"]').inner_text()
             for device in twin}
    assert shown == twin and all(phase.startswith("learning: ") for phase in shown.values())
    page.goto(f"{site.base}/machines/fan-2")
    assert page.get_by_test_id("commissioning-phase").inner_text().startswith("learning since")
    page.get_by_test_id("commission-submit").click()
    page.wait_for_url(f"{site.base}/machines/fan-2")
    found = book.record(site.historian, "fan-2")
    assert found is not None and found.requested_by == "otto"  # the worker in cm-fleet serve takes it from here
    screenshot(page, "dashboard-commissioning")
