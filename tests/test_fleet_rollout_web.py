"""The rollouts page of a real `cm-fleet serve` dashboard: a rollout made with `cm-fleet rollout create` is listed
with its waves and devices (page and JSON twin); an admin pauses, resumes and aborts it from there (form posts with
the CSRF token, or an API token); a viewer and an operator change nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import BIN
from fleet_helpers import contract_state, start_fleet
from trained import shared_bundle
from waiting import eventually
from web_helpers import Browser, dashboard_url

from fleet.config import HistorianConfig
from fleet.historian import open_historian
from fleet.historian.accounts import Accounts
from fleet.payloads import Accepted
from fleet.signing import keygen, sign
from fleet.web.credentials import hash_password, new_token, token_hash

pytestmark = pytest.mark.slow
PASSWORDS = {"vera": ("viewer", "viewer-pass-1"), "otto": ("operator", "operator-pass-2"), "ada": ("admin", "admin-pass-3")}
DEVICES = ("pump-0", "pump-1", "pump-2")


def test_an_admin_pauses_resumes_and_aborts_a_rollout_from_the_dashboard(request, tmp_path: Path) -> None:
    bundle = tmp_path / "new-model"
    shutil.copytree(shared_bundle(), bundle)
    sign(bundle, keygen(tmp_path / "keys").private)
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    historian = open_historian(HistorianConfig(url=url))
    request.addfinalizer(historian.close)
    accounts = Accounts(historian)
    for name, (role, password) in PASSWORDS.items():
        accounts.add(name, role, hash_password(password))
    admin_token = new_token()
    accounts.add_token("ada", token_hash(admin_token))
    historian.store([Accepted("state", d, contract_state(d, 1)) for d in DEVICES], [], 1)  # three known machines
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker.port, ["cm/_fleet/#"]) as subscriber:
        (tmp_path / "fleet").mkdir()
        service = start_fleet(request, tmp_path / "fleet", broker.port, url, "[web]\nport = 0\n")
        assert eventually(lambda: "dashboard on http://" in service.read_log()), service.read_log()
        base = dashboard_url(service.read_log())
        created = subprocess.run([BIN / "cm-fleet", "rollout", "create", bundle, "--devices", "pump-*", "--canary", "1%",
                                  "--config", service.config], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        rollout_id = created.stdout.split(":")[0].removeprefix("rollout ")
        # The scheduler publishes the archive and the canary's desired document (no agent answers here).
        assert subscriber.wait_for(lambda s: bool(s.on("cm/_fleet/desired/pump-0")), 30), service.read_log()

        admin = Browser(base)
        assert admin.login("ada", PASSWORDS["ada"][1]).status_code == 303
        page = admin.get("/rollouts")
        assert page.status_code == 200 and f'data-rollout="{rollout_id}"' in page.text
        assert 'data-device="pump-0" data-status="sent"' in page.text and 'data-status="queued"' in page.text
        twin = admin.get("/rollouts.json").json()
        (shown,) = twin["rollouts"]
        assert shown["rollout"]["id"] == rollout_id and [w["size"] for w in shown["waves"]] == [1, 2]
        archive = historian.read("SELECT archive FROM rollouts")[0][0]
        assert "archive" not in shown["rollout"] and archive[:64] not in json.dumps(twin)  # nor the bundle itself

        for name in ("vera", "otto"):
            other = Browser(base)
            assert other.login(name, PASSWORDS[name][1]).status_code == 303
            refused = other.post("/rollouts/pause", data={"rollout": rollout_id, "csrf_token": other.csrf("/rollouts")})
            assert refused.status_code == 403 and f"{name} is a" in refused.text
        assert admin.post("/rollouts/pause", data={"rollout": rollout_id}).status_code == 403  # no CSRF token

        token = admin.csrf("/rollouts")
        paused = admin.post("/rollouts/pause", data={"rollout": rollout_id, "csrf_token": token})
        assert paused.status_code == 303 and 'data-state="paused"' in admin.get("/rollouts").text
        api = Browser(base)
        bearer = {"Authorization": f"Bearer {admin_token}"}
        resumed = api.post("/rollouts/resume", json={"rollout": rollout_id}, headers=bearer)
        assert resumed.status_code == 200 and resumed.json()["state"] == "running"
        assert api.post("/rollouts/resume", json={"rollout": rollout_id}, headers=bearer).status_code == 409
        assert api.post("/rollouts/abort", json={"rollout": "r-nothing"}, headers=bearer).status_code == 404
        aborted = admin.post("/rollouts/abort", data={"rollout": rollout_id, "csrf_token": token})
        assert aborted.status_code == 303
        assert historian.read("SELECT state, reason FROM rollouts") == [("aborted", "abort by ada")]
        status = subprocess.run([BIN / "cm-fleet", "rollout", "status", "--config", service.config],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and f"{rollout_id}\taborted" in status.stdout
