"""Helpers for the dashboard's tests: a browser-like HTTP client (cookies, the CSRF token from the forms) that
keeps every response it got, the login and the fleet table in a real browser, and a historian seeded with
machines, alerts and telemetry.

    from web_helpers import Browser, seed, sign_in, shown_states
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import requests
from fleet_helpers import T0_US, contract_alert, contract_state, contract_telemetry

from fleet.historian import Historian
from fleet.historian.overview import place
from fleet.payloads import Accepted

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
TELEMETRY = 300  # pump-1's records, one a second
PUMP_ALERTS = 6  # transitions normal -> warning -> alarm -> normal ...: 4 raised, 2 back to normal


@dataclass
class Browser:
    """requests.Session against one base url, remembering every response (for the no-secret sweep)."""

    base: str
    seen: list[requests.Response] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        response = self.session.request(method, self.base.rstrip("/") + path, **kwargs)
        self.seen.append(response)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def csrf(self, path: str = "/login") -> str:
        """The CSRF token in the forms of `path`, as a browser would submit it."""
        found = CSRF.search(self.get(path).text)
        assert found, f"no CSRF token in {path}"
        return found.group(1)

    def login(self, name: str, password: str) -> requests.Response:
        return self.post("/login", data={"name": name, "password": password, "csrf_token": self.csrf(), "next": "/fleet"})


def dashboard_url(log: str) -> str:
    """The dashboard's address that `cm-fleet serve` (with `[web] port = 0`) logged last: each start picks a port."""
    found = re.findall(r"dashboard on (http://\S+)", log)
    assert found, log
    return found[-1].rstrip("/")


def sign_in(page: Any, base: str, name: str, password: str) -> None:
    """Log in through the login form in a real browser (a Playwright page), as a person does."""
    page.goto(f"{base}/fleet")
    assert re.search(r"/login\?next=", page.url), page.url  # the anonymous visitor is sent to the login
    page.get_by_test_id("login-name").fill(name)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(re.compile(r"/fleet$"))


def shown_states(page: Any) -> dict[str, str]:
    """Each machine's state as the fleet page in the browser shows it, by device."""
    return {row.get_attribute("data-device"): row.get_attribute("data-state")
            for row in page.get_by_test_id("machine-row").all()}


def seed(historian: Historian) -> None:
    """pump-1 in alarm with alerts and TELEMETRY records; fan-2 normal, on site plant-a with tags; bare-3 only online."""
    pump = [Accepted("telemetry", "pump-1", contract_telemetry("pump-1", i)) for i in range(TELEMETRY)]
    pump += [Accepted("alert", "pump-1", contract_alert("pump-1", i)) for i in range(PUMP_ALERTS)]
    pump += [Accepted("state", "pump-1", contract_state("pump-1", 5, since_i=4))]  # alarm since its 5th second
    fan = [Accepted("state", "fan-2", contract_state("fan-2", 3)), Accepted("status", "fan-2", "online"),
           Accepted("telemetry", "fan-2", contract_telemetry("fan-2", 0))]
    historian.store(pump + fan + [Accepted("status", "bare-3", "offline")], [], T0_US)
    assert place(historian, "fan-2", "plant-a", ["fans", "line-3"])


def raised_alert_ids(device_id: str = "pump-1") -> list[str]:
    """The alerts of seed() that raise a state (warning or alarm), oldest first."""
    alerts = [contract_alert(device_id, i) for i in range(PUMP_ALERTS)]
    return [a["id"] for a in alerts if a["state"] != "normal"]
