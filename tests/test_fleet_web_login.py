"""The login rate limit, per user and per address, on the dashboard served by waitress on a real port; the
throttle's window on a clock the test moves; anonymous viewing when the config allows it; Secure cookies and a
trusted proxy's X-Forwarded-For; the session secret file."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from web_helpers import CSRF, Browser

from fleet.config import FleetConfigError, HistorianConfig, WebConfig
from fleet.historian import Historian, open_historian
from fleet.historian.accounts import Accounts
from fleet.web.app import session_secret
from fleet.web.credentials import check_password, hash_password
from fleet.web.server import WebServer
from fleet.web.throttle import LoginThrottle

PASSWORD = "right-password-1"


@pytest.fixture
def historian(tmp_path) -> Iterator[Historian]:
    opened = open_historian(HistorianConfig(url=f"sqlite://{tmp_path / 'h.sqlite'}"))
    Accounts(opened).add("otto", "operator", hash_password(PASSWORD))
    Accounts(opened).add("ada", "admin", hash_password(PASSWORD))
    yield opened
    opened.close()


def serve(request: pytest.FixtureRequest, historian: Historian, **settings: object) -> Browser:
    server = WebServer(WebConfig(port=0, **settings), historian)  # type: ignore[arg-type]
    server.start()
    request.addfinalizer(server.stop)
    return Browser(server.url)


def attempt(browser: Browser, name: str, password: str, address: str | None = None) -> int:
    headers = {"X-Forwarded-For": address} if address else {}
    return browser.post("/login", data={"name": name, "password": password, "csrf_token": browser.csrf()},
                        headers=headers).status_code


def test_failed_logins_are_limited_per_user_and_per_address(request, historian, caplog):
    caplog.set_level(logging.INFO)
    browser = serve(request, historian, login_attempts=3, login_window_s=60.0, trusted_proxies=1)
    assert [attempt(browser, "otto", "wrong-1234", "10.0.0.1") for _ in range(3)] == [401, 401, 401]
    # otto is locked, from any address and even with the right password; ada from another address is not
    assert attempt(browser, "otto", PASSWORD, "10.0.0.2") == 429
    assert attempt(browser, "ada", PASSWORD, "10.0.0.2") == 303
    # the address that failed three times is locked for every user
    assert attempt(Browser(browser.base), "ada", PASSWORD, "10.0.0.1") == 429
    page = browser.post("/login", data={"name": "otto", "password": PASSWORD, "csrf_token": browser.csrf()},
                        headers={"X-Forwarded-For": "10.0.0.3"})
    assert page.status_code == 429 and "too many failed logins: try again in" in page.text
    assert "login failed for 'otto' from 10.0.0.1" in caplog.text and "login refused for 'otto' from 10.0.0.2" in caplog.text
    assert PASSWORD not in caplog.text and "wrong-1234" not in caplog.text


def test_the_limit_lifts_when_the_failures_leave_the_window():
    now = [1000.0]
    throttle = LoginThrottle(attempts=2, window_s=60.0, clock=lambda: now[0])
    throttle.failed("otto", "a")
    now[0] += 30
    throttle.failed("otto", "b")
    assert throttle.wait_s("otto", "c") == pytest.approx(30.0) and throttle.wait_s("ada", "c") == 0
    now[0] += 30.5  # the first failure has left the window
    assert throttle.wait_s("otto", "c") == 0


def test_anonymous_visitors_may_look_but_never_change_when_the_config_allows(request, historian):
    browser = serve(request, historian, allow_anonymous=True)
    assert browser.get("/fleet").status_code == 200 and "anonymous (viewer)" in browser.get("/fleet").text
    assert browser.get("/alerts.json").status_code == 200
    response = browser.post("/alerts/x/close", data={"csrf_token": browser.csrf("/login"), "failure_mode": "other"})
    assert response.status_code == 401
    closed = serve(request, historian)  # the default: nobody without a login
    assert closed.get("/fleet").status_code == 302 and closed.get("/fleet.json").status_code == 401


def test_behind_a_tls_proxy_the_cookie_is_secure(request, historian):
    browser = serve(request, historian, secure_cookies=True, trusted_proxies=1)
    https = {"X-Forwarded-Proto": "https"}  # what the TLS proxy adds
    form = browser.get("/login", headers=https)
    first = form.headers["Set-Cookie"]
    assert "Secure" in first and "HttpOnly" in first and "SameSite=Lax" in first
    # requests, like a browser, keeps a Secure cookie off plain http: the proxy's side of the hop is sent by hand.
    cookie = {"Cookie": first.split(";", 1)[0]}
    token = CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    response = browser.post("/login", data={"name": "otto", "password": PASSWORD, "csrf_token": token}, headers=https | cookie)
    assert response.status_code == 303 and "Secure" in response.headers["Set-Cookie"]


def test_the_session_secret_file_is_checked(tmp_path):
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(FleetConfigError, match="web.secret_file: .* holds 3 bytes; expected at least 16"):
        session_secret(WebConfig(secret_file=str(short)))
    with pytest.raises(FleetConfigError, match="web.secret_file: cannot read"):
        session_secret(WebConfig(secret_file=str(tmp_path / "missing")))
    good = tmp_path / "secret"
    good.write_text("0123456789abcdef0123\n")
    assert session_secret(WebConfig(secret_file=str(good))) == b"0123456789abcdef0123"


def test_passwords_are_salted_scrypt_and_checked_in_constant_time():
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$16384$8$1$")  # a salt of its own each time
    assert check_password(PASSWORD, first) and not check_password(PASSWORD + "x", first)
    assert not check_password(PASSWORD, None) and not check_password(PASSWORD, "garbage")
    with pytest.raises(ValueError, match="password: expected at least 8 characters"):
        hash_password("short")
