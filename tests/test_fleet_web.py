"""The dashboard of a real `cm-fleet serve` (real Mosquitto, waitress on a real port), on SQLite and on a
private PostgreSQL cluster: every route of the app's route table refuses the anonymous, the viewer changes
nothing, no change passes without its CSRF token, tokens and sessions and roles work, alerts are acknowledged
and closed, the exports read back with the trainer's table reader, and no secret leaves the server."""
from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest
from broker import Mosquitto
from fleet_helpers import (
    T0_US,
    FleetService,
    contract_telemetry,
    historian_url,
    postgres_cluster,  # noqa: F401  (fixture)
)
from waiting import eventually
from web_helpers import PUMP_ALERTS, TELEMETRY, Browser, raised_alert_ids, seed

from fleet.config import HistorianConfig, WebConfig
from fleet.historian import Historian, open_historian
from fleet.historian.accounts import Accounts
from fleet.historian.series import MAX_POINTS
from fleet.web.app import create_app
from fleet.web.auth import PUBLIC
from fleet.web.credentials import hash_password, new_token, token_hash
from trainer.dataset import load_table

pytestmark = pytest.mark.waits  # on a real cm-fleet serve, its broker and a PostgreSQL cluster
PASSWORDS = {"vera": ("viewer", "viewer-pass-1"), "otto": ("operator", "operator-pass-2"), "ada": ("admin", "admin-pass-3")}
WEB = "[web]\nport = 0\nlogin_attempts = 50\n"  # the rate limit has a test of its own (test_fleet_web_login.py)
SAMPLE = {"device_id": "pump-1", "filename": "style.css"}  # a value for each route argument; alert_id is per test


@dataclass
class Dashboard:
    base: str
    service: FleetService
    historian: Historian
    token: str
    viewer_token: str

    def browser(self, user: str | None = None) -> Browser:
        browser = Browser(self.base)
        if user is not None:
            assert browser.login(user, PASSWORDS[user][1]).status_code == 303
        return browser


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dashboard(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    directory = tmp_path_factory.mktemp(f"web-{request.param}")
    broker = Mosquitto(directory / "broker").start()
    request.addfinalizer(broker.stop)
    url = historian_url(request, request.param, directory)
    service = FleetService(directory, broker.port, url, WEB)
    historian = open_historian(HistorianConfig(url=url))
    accounts = Accounts(historian)  # as `cm-fleet user add` and `token add` do (tests/test_fleet_web_cli.py runs those)
    for name, (role, password) in PASSWORDS.items():
        accounts.add(name, role, hash_password(password))
    token, viewer_token = new_token(), new_token()
    accounts.add_token("otto", token_hash(token))
    accounts.add_token("vera", token_hash(viewer_token))
    seed(historian)
    request.addfinalizer(lambda: service.kill() if service.running() else None)
    service.start()
    assert eventually(lambda: "dashboard on http://" in service.read_log()), service.read_log()
    base = re.search(r"dashboard on (http://\S+)", service.read_log()).group(1)  # type: ignore[union-attr]
    yield Dashboard(base, service, historian, token, viewer_token)
    historian.close()
    assert service.stop() == 0  # SIGTERM: the dashboard and the ingest stop cleanly together
    assert "stopped: stored" in service.read_log()


def routes(alert_id: str) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) of every route in the app's own route table, with sample arguments."""
    app = create_app(WebConfig(), historian=None, secret=b"x" * 32)  # type: ignore[arg-type]  # only its url_map
    found = []
    for rule in app.url_map.iter_rules():
        values = {name: alert_id if name == "alert_id" else SAMPLE[name] for name in rule.arguments - set(rule.defaults or {})}
        values |= rule.defaults or {}
        path = rule.build(values, append_unknown=False)[1]  # type: ignore[index]
        found += [(rule.endpoint, method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return found


def changes(alert_id: str) -> list[tuple[str, str, str]]:
    """The routes that change something (every POST but the login form and logout)."""
    return [r for r in routes(alert_id) if r[1] != "GET" and not r[0].startswith("auth.")]


def test_every_route_refuses_the_anonymous(dashboard):
    anonymous = Browser(dashboard.base)
    alert_id = raised_alert_ids()[0]
    opened = set()
    for endpoint, method, path in routes(alert_id):
        response = anonymous.request(method, path)
        if response.status_code == 200:
            opened.add(endpoint)
        elif endpoint == "auth.login":  # the login form itself is open, and refuses a post without its CSRF token
            assert response.status_code == 403 and "CSRF" in response.text
        elif path.endswith(".json"):
            assert response.status_code == 401 and "error" in response.json(), (method, path, response.status_code)
        elif method != "GET":
            assert response.status_code == 401 and "log in first" in response.text, (method, path, response.status_code)
        else:
            assert response.status_code == 302 and response.headers["Location"].startswith("/login?next="), (method, path)
    assert opened == set(PUBLIC) == {"auth.login", "static"}
    # Starting a rollout (form and JSON twin) is among the routes swept here, as every later route will be.
    assert {("rollouts.create_rollout", "POST", "/rollouts"), ("rollouts.create_rollout", "POST", "/rollouts.json")} \
        <= set(routes(alert_id))
    assert dashboard.historian.read("SELECT acknowledged_us FROM alerts WHERE id = ?", (alert_id,)) == [(None,)]


def test_a_viewer_sees_every_page_and_changes_nothing(dashboard):
    viewer = dashboard.browser("vera")
    alert_id = raised_alert_ids()[0]
    for endpoint, method, path in routes(alert_id):
        if method == "GET" and endpoint != "auth.login":
            assert viewer.get(path).status_code == (302 if endpoint == "fleet.home" else 200), path
    token = viewer.csrf("/alerts")
    for _, _, path in changes(alert_id):
        response = viewer.post(path, data={"csrf_token": token, "failure_mode": "other", "comment": "x"})
        assert response.status_code == 403 and "vera is a viewer" in response.text, (path, response.status_code)
        by_token = Browser(dashboard.base).post(path, json={"failure_mode": "other"},
                                                headers={"Authorization": f"Bearer {dashboard.viewer_token}"})
        assert by_token.status_code == 403, path
    assert "ack-form" not in viewer.get("/alerts").text  # no form offered to a viewer either
    assert dashboard.historian.read("SELECT acknowledged_us, closed_us FROM alerts WHERE id = ?", (alert_id,)) == [(None, None)]


def test_no_change_passes_without_its_csrf_token(dashboard):
    operator = dashboard.browser("otto")
    alert_id = raised_alert_ids()[0]
    for endpoint, _, path in [r for r in routes(alert_id) if r[1] != "GET"]:
        for sent in ({}, {"csrf_token": "forged"}):
            response = operator.post(path, data={**sent, "failure_mode": "other", "name": "otto", "password": "x"})
            assert response.status_code == 403 and "CSRF" in response.text, (endpoint, sent, response.status_code)
    assert dashboard.historian.read("SELECT acknowledged_us, closed_us FROM alerts WHERE id = ?", (alert_id,)) == [(None, None)]
    assert operator.get("/fleet").status_code == 200  # the logout without a token did not log out


def test_login_wrong_password_and_logout(dashboard):
    browser = Browser(dashboard.base)
    wrong = browser.post("/login", data={"name": "otto", "password": "operator-pass-X", "csrf_token": browser.csrf()})
    assert wrong.status_code == 401 and "wrong name or password" in wrong.text
    unknown = browser.post("/login", data={"name": "nobody", "password": "whatever1", "csrf_token": browser.csrf()})
    assert unknown.status_code == 401 and "wrong name or password" in unknown.text  # the same answer: no user probing
    assert browser.get("/fleet").status_code == 302
    right = browser.login("otto", PASSWORDS["otto"][1])
    assert right.status_code == 303 and right.headers["Location"] == "/fleet"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # no TLS in this config
    page = browser.get("/fleet")
    assert page.status_code == 200 and 'data-testid="machine-row"' in page.text and "otto (operator)" in page.text
    copied = Browser(dashboard.base)
    copied.session.cookies.update(browser.session.cookies)  # the cookie, copied before the logout
    assert copied.get("/fleet.json").status_code == 200
    assert browser.post("/logout", data={"csrf_token": browser.csrf("/fleet")}).status_code == 303
    assert browser.get("/fleet").status_code == 302
    assert browser.get("/fleet.json").status_code == 401
    assert copied.get("/fleet.json").status_code == 401  # the session ended on the server, not just in the browser


def test_a_new_password_or_a_removed_user_ends_their_sessions(dashboard):
    accounts = Accounts(dashboard.historian)
    accounts.add("temp", "operator", hash_password("temporary-1"))
    first, second = Browser(dashboard.base), Browser(dashboard.base)
    assert first.login("temp", "temporary-1").status_code == 303 and first.get("/fleet.json").status_code == 200
    accounts.add("temp", "viewer", hash_password("temporary-2"))  # `cm-fleet user add` again: a new password
    assert first.get("/fleet.json").status_code == 401
    assert second.login("temp", "temporary-2").status_code == 303
    assert second.get("/fleet").text.count("temp (viewer)") == 1
    assert accounts.remove("temp")
    assert second.get("/fleet.json").status_code == 401


def test_api_tokens_read_and_change_without_a_session(dashboard):
    api = Browser(dashboard.base)
    bearer = {"Authorization": f"Bearer {dashboard.token}"}
    fleet = api.get("/fleet.json", headers=bearer)
    assert fleet.status_code == 200 and {m["device_id"] for m in fleet.json()["machines"]} == {"pump-1", "fan-2", "bare-3"}
    assert api.get("/fleet.json", headers={"Authorization": "Bearer cmf_not-a-token"}).status_code == 401
    assert api.get("/fleet.json", headers={"Authorization": "Basic b3R0bzp4"}).status_code == 401
    alert_id = raised_alert_ids()[1]
    acked = api.post(f"/alerts/{alert_id}/acknowledge", json={"comment": "from the CMMS"}, headers=bearer)
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "otto"
    assert acked.json()["ack_comment"] == "from the CMMS"
    # A token request never reads the cookie: a logged-in session sent along does not stand in for a bad token.
    browser = dashboard.browser("ada")
    assert browser.get("/fleet.json", headers={"Authorization": "Bearer cmf_wrong"}).status_code == 401


def test_alerts_are_acknowledged_then_closed_and_export_as_labels(dashboard, tmp_path):
    operator, admin = dashboard.browser("otto"), dashboard.browser("ada")
    alert_id = raised_alert_ids()[2]  # pump-1's third raising alert: warning at T0 + 3 s, normal again at T0 + 5 s
    token = operator.csrf("/alerts")
    assert [a["id"] for a in operator.get("/alerts.json?filter=unacknowledged").json()["alerts"]].count(alert_id) == 1
    acked = operator.post(f"/alerts/{alert_id}/acknowledge", data={"csrf_token": token, "comment": "vibration up",
                                                                   "back": "/alerts?filter=active"})
    assert acked.status_code == 303 and acked.headers["Location"] == "/alerts?filter=active"
    again = admin.post(f"/alerts/{alert_id}/acknowledge", data={"csrf_token": admin.csrf("/alerts")})
    assert again.status_code == 409  # the first acknowledgement stands
    assert alert_id not in [a["id"] for a in operator.get("/alerts.json?filter=unacknowledged").json()["alerts"]]
    bad = admin.post(f"/alerts/{alert_id}/close", data={"csrf_token": admin.csrf("/alerts"), "failure_mode": "gremlins"})
    assert bad.status_code == 400 and "failure_mode: expected one of outer_race" in bad.text
    closed = admin.post(f"/alerts/{alert_id}/close", data={"csrf_token": admin.csrf("/alerts"), "failure_mode": "outer_race",
                                                           "comment": "BPFO lines, replaced"})
    assert closed.status_code == 303
    (row,) = [a for a in admin.get("/alerts.json?filter=closed").json()["alerts"] if a["id"] == alert_id]
    assert (row["acknowledged_by"], row["ack_comment"], row["closed_by"], row["failure_mode"]) == \
        ("otto", "vibration up", "ada", "outer_race")
    assert alert_id not in [a["id"] for a in admin.get("/alerts.json").json()["alerts"]]  # active: not closed
    assert "outer_race by ada" in admin.get("/alerts?filter=closed").text
    assert admin.post("/alerts/no-such-alert/close", data={"csrf_token": admin.csrf("/alerts"),
                                                           "failure_mode": "other"}).status_code == 404

    labels = admin.get("/machines/pump-1/labels.csv")
    assert labels.status_code == 200 and labels.headers["Content-Type"].startswith("text/csv")
    path = tmp_path / "labels.csv"
    path.write_bytes(labels.content)
    table = load_table(path, label_column="label")
    assert table.labels is not None and table.channels == ("bearing1", "bearing2") and len(table.labels) == TELEMETRY
    seconds = (table.timestamps - table.timestamps[0]).astype("timedelta64[s]").astype(int)
    assert list(seconds[table.labels.astype(bool)]) == [3, 4]  # inside [warning at 3 s, normal at 5 s)


def test_the_telemetry_export_is_a_features_table_the_trainer_reads(dashboard, tmp_path):
    export = dashboard.browser("vera").get("/machines/pump-1/telemetry.csv")
    assert export.status_code == 200
    path = tmp_path / "pump-1.csv"
    path.write_bytes(export.content)
    table = load_table(path)
    expected = [contract_telemetry("pump-1", i)["features"] for i in range(TELEMETRY)]
    assert table.channels == ("bearing1", "bearing2") and table.features.shape == (TELEMETRY, 2)
    assert table.features.tolist() == [[f["bearing1"], f["bearing2"]] for f in expected]
    assert pd.read_csv(io.BytesIO(export.content)).columns[0] == "timestamp"
    assert dashboard.browser("vera").get("/machines/bare-3/telemetry.csv").status_code == 404


def test_the_fleet_page_filters_and_sorts(dashboard):
    viewer = dashboard.browser("vera")

    def devices(query: str) -> list[str]:
        response = viewer.get(f"/fleet.json{query}")
        assert response.status_code == 200, response.text
        return [m["device_id"] for m in response.json()["machines"]]

    assert devices("") == ["pump-1", "bare-3", "fan-2"]  # by severity: alarm, offline, normal
    assert devices("?sort=device") == ["bare-3", "fan-2", "pump-1"]
    assert devices("?state=alarm") == ["pump-1"] and devices("?state=offline") == ["bare-3"]
    assert devices("?unacknowledged=1") == ["pump-1"]
    assert devices("?site=plant-a") == devices("?tag=line-3") == ["fan-2"] and devices("?tag=line") == []
    assert viewer.get("/fleet.json?sort=colour").status_code == 400
    first = viewer.get("/fleet.json?limit=1").json()  # the most severe first; the counts are of every machine
    assert [m["device_id"] for m in first["machines"]] == ["pump-1"] and first["total"] == 3
    assert first["counts"] == {"alarm": 1, "offline": 1, "normal": 1}
    assert "3 machines, the first 1 shown" in viewer.get("/fleet?limit=1").text
    assert viewer.get("/fleet.json?limit=0").status_code == 400
    (pump,) = [m for m in viewer.get("/fleet.json").json()["machines"] if m["device_id"] == "pump-1"]
    assert (pump["state"], pump["since_us"], pump["top_channel"], pump["model_id"]) == \
        ("alarm", T0_US + 4_000_000, "bearing1", "test-model")
    page = viewer.get("/fleet?state=alarm").text
    assert page.count('data-testid="machine-row"') == 1 and 'data-device="pump-1"' in page


def test_the_machine_page_downsamples_its_charts(dashboard):
    viewer = dashboard.browser("vera")
    data = viewer.get("/machines/pump-1.json?span=all").json()
    assert set(data["series"]) == {"score", "channel_errors/bearing1", "channel_errors/bearing2", "features/bearing1",
                                   "features/bearing2"}
    score = data["series"]["score"]
    assert 0 < len(score["t"]) <= MAX_POINTS
    values = [contract_telemetry("pump-1", i)["score"] for i in range(TELEMETRY)]
    assert (min(score["min"]), max(score["max"])) == (min(values), max(values))
    assert data["thresholds"] == {"warning": 0.2, "alarm": 0.4}
    assert [m["model_id"] for m in data["models"]] == ["test-model"]
    assert len(data["alerts"]) == PUMP_ALERTS and data["counters"]["alerts_pending"] == 0
    page = viewer.get("/machines/pump-1?span=1h")
    assert page.status_code == 200 and 'id="chart-score"' in page.text and 'id="chart-velocity"' in page.text
    assert viewer.get("/machines/pump-1.json?span=2y").status_code == 400
    assert viewer.get("/machines/nobody.json").status_code == 404


def test_no_password_hash_salt_or_token_leaves_the_server(dashboard):
    """Every route as each kind of visitor, then every response of this module's tests and the service's log."""
    anyone = [Browser(dashboard.base), dashboard.browser("vera"), dashboard.browser("ada")]
    for browser in anyone:
        for _, method, path in routes(raised_alert_ids()[3]):
            if method == "GET":
                browser.get(path)
                browser.get(path, headers={"Authorization": f"Bearer {dashboard.token}"})
    anyone[0].post("/login", data={"name": "ada", "password": "admin-pass-3X", "csrf_token": anyone[0].csrf()})
    stored = [h for (h,) in dashboard.historian.read("SELECT password_hash FROM users")]
    token_hashes = [h for (h,) in dashboard.historian.read("SELECT token_hash FROM api_tokens")]
    secrets = stored + token_hashes + [dashboard.token, dashboard.viewer_token]
    secrets += [h.split("$")[4] for h in stored] + [h.split("$")[5] for h in stored]  # salts and bare hashes
    secrets += [password for _, password in PASSWORDS.values()] + ["admin-pass-3X"]
    assert len(stored) == 3 and len(token_hashes) == 2
    texts = [dashboard.service.read_log()]
    for browser in anyone:
        for response in browser.seen:
            texts.append(response.text + repr(dict(response.headers)))
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "login failed for 'ada'" in texts[0]  # the log does record the attempt, without the password


def test_the_historian_holds_hashes_only(dashboard):
    rows = dashboard.historian.read("SELECT name, role, password_hash, created_us FROM users UNION ALL "
                                    "SELECT token_hash, user_name, '', created_us FROM api_tokens")
    text = "\n".join(map(repr, rows))
    assert len(rows) == 5 and text.count("'scrypt$16384$8$1$") == 3
    sessions = dashboard.historian.read("SELECT session_hash FROM web_sessions")
    assert sessions and all(len(h) == 64 for (h,) in sessions)  # sha256 of the ids, never the ids
    assert dashboard.token not in text and dashboard.viewer_token not in text
    assert not any(password in text for _, password in PASSWORDS.values())
