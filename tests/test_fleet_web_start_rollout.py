"""An admin starts a staged rollout from the dashboard of a real `cm-fleet serve` (real Mosquitto, waitress on a
real port, SQLite): in a real headless chromium through the /rollouts form, and through its JSON twin with an API
token. The form offers the signed bundles of `[rollout] bundles` (model id, created, signing key) and lists the
others with the reason; what is posted goes through fleet.rollout's own checks, whose errors name the field and
the value and keep what was typed. A name leading out of the bundles directory (../, a link) is refused, as is a
bundle not signed by `[rollout] trusted_keys`; a viewer and an operator get 403, a form post without its CSRF
token is refused. Leaves docs' screenshot dashboard-rollouts.png in artifacts/screenshots/."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import Mosquitto
from browser import browser, page, screenshot  # noqa: F401  (fixtures)
from chain import BIN
from fleet_helpers import FleetService, contract_state
from trained import shared_bundle
from waiting import eventually
from web_helpers import Browser, dashboard_url, sign_in

from fleet.config import FleetConfigError, HistorianConfig, RolloutConfig, load_config, parse_config
from fleet.historian import Historian, open_historian
from fleet.historian.accounts import Accounts
from fleet.historian.rollouts import RolloutError
from fleet.offers import bundle_path, offers
from fleet.payloads import Accepted
from fleet.signing import KeyPair, keygen, sign
from fleet.web.credentials import hash_password, new_token, token_hash

pytestmark = pytest.mark.waits  # on a real cm-fleet serve and a real browser
PASSWORDS = {"vera": ("viewer", "viewer-pass-1"), "otto": ("operator", "operator-pass-2"), "ada": ("admin", "admin-pass-3")}
DEVICES = ("pump-0", "pump-1", "pump-2")


def bundle(directory: Path, name: str, signer: KeyPair | None) -> Path:
    """A copy of the shared bundle whose card says `name`, signed by `signer` (None: unsigned)."""
    shutil.copytree(shared_bundle(), directory)
    card = json.loads((directory / "model_card.json").read_text())
    card["id"] = name
    (directory / "model_card.json").write_text(json.dumps(card, indent=2))
    if signer is not None:
        sign(directory, signer.private)
    return directory


@dataclass
class Fleet:
    base: str
    historian: Historian
    bundles: Path
    keys: KeyPair
    admin_token: str
    viewer_token: str
    config: Path  # the service's fleet.toml

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([BIN / "cm-fleet", "rollout", *args, "--config", self.config],
                              capture_output=True, text=True, timeout=60)

    def rollouts(self) -> list[tuple]:
        return self.historian.read("SELECT id, bundle_id, selector, canary_percent, created_by FROM rollouts ORDER BY created_us")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("start-rollout")
    keys, other = keygen(directory / "keys"), keygen(directory / "other-keys")
    bundles = directory / "bundles"
    bundle(bundles / "good", "good-model", keys)
    bundle(bundles / "unsigned", "unsigned-model", None)
    bundle(bundles / "foreign", "foreign-model", other)
    bundle(directory / "elsewhere" / "outside", "outside-model", keys)  # signed, but not in the bundles directory
    (bundles / "escape").symlink_to(directory / "elsewhere" / "outside", target_is_directory=True)
    url = f"sqlite://{directory / 'historian.sqlite'}"
    historian = open_historian(HistorianConfig(url=url))
    accounts = Accounts(historian)
    for name, (role, password) in PASSWORDS.items():
        accounts.add(name, role, hash_password(password))
    admin_token, viewer_token = new_token(), new_token()
    accounts.add_token("ada", token_hash(admin_token))
    accounts.add_token("vera", token_hash(viewer_token))
    historian.store([Accepted("state", d, contract_state(d, 1)) for d in DEVICES], [], 1)  # three known machines
    broker = Mosquitto(directory / "broker").start()
    service = FleetService(directory, broker.port, url, f'[web]\nport = 0\n[rollout]\nbundles = "{bundles}"\n'
                                                        f'trusted_keys = ["{keys.public}"]\n')
    try:
        service.start()
        assert eventually(lambda: "dashboard on http://" in service.read_log()), service.read_log()
        yield Fleet(dashboard_url(service.read_log()), historian, bundles, keys, admin_token, viewer_token, service.config)
        assert service.stop() == 0
    finally:
        if service.running():
            service.kill()
        historian.close()
        broker.stop()


def test_an_admin_starts_a_rollout_in_the_browser_and_a_wrong_value_is_named_and_kept(fleet, page) -> None:  # noqa: F811
    sign_in(page, fleet.base, "ada", PASSWORDS["ada"][1])
    page.get_by_test_id("nav-rollouts").click()
    page.wait_for_url(re.compile(r"/rollouts$"))
    rows = {row.get_attribute("data-bundle"): row for row in page.get_by_test_id("offer").all()}
    assert set(rows) == {"good", "unsigned", "foreign"}  # the link out of the directory is not offered
    assert rows["good"].get_attribute("data-offerable") == "yes" and "good-model" in rows["good"].inner_text()
    assert fleet.keys.key_id in rows["good"].inner_text()
    assert rows["unsigned"].get_attribute("data-offerable") == "no" and "unsigned" in rows["unsigned"].inner_text()
    assert "not trusted" in rows["foreign"].inner_text()
    choices = page.get_by_test_id("start-bundle").locator("option").all()
    assert [o.get_attribute("value") for o in choices] == ["good"]  # only what may be rolled out is offered
    assert page.get_by_test_id("start-canary").input_value() == "5%"  # fleet.rollout's defaults

    page.get_by_test_id("start-devices").fill("pump-*")
    page.get_by_test_id("start-canary").fill("lots")
    page.get_by_test_id("start-probation-snapshots").fill("4")
    page.get_by_test_id("start-submit").click()
    error = page.get_by_test_id("start-error")
    assert "--canary 'lots'" in error.inner_text() and error.get_attribute("data-field") == "canary"
    assert page.get_by_test_id("start-devices").input_value() == "pump-*"  # what was typed is kept
    assert page.get_by_test_id("start-canary").input_value() == "lots"
    assert page.get_by_test_id("start-probation-snapshots").input_value() == "4"
    assert fleet.rollouts() == []

    page.get_by_test_id("start-canary").fill("34%")
    page.get_by_test_id("start-submit").click()
    page.wait_for_url(re.compile(r"/rollouts#r-[0-9a-f]+$"))
    rollout_id = page.url.rsplit("#", 1)[1]
    section = page.locator(f'[data-testid="rollout"][data-rollout="{rollout_id}"]')
    assert section.get_attribute("data-state") == "running"
    assert len(section.get_by_test_id("rollout-device").all()) == len(DEVICES)
    assert fleet.rollouts() == [(rollout_id, "good-model", "pump-*", 34.0, "ada")]
    probation = fleet.historian.read("SELECT probation FROM rollouts WHERE id = ?", (rollout_id,))[0][0]
    assert json.loads(probation) == {"snapshots": 4}
    screenshot(page, "dashboard-rollouts")


def test_the_json_twin_starts_a_rollout_and_refuses_what_is_not_offered(fleet) -> None:
    api = Browser(fleet.base)
    bearer = {"Authorization": f"Bearer {fleet.admin_token}"}
    before = fleet.rollouts()
    body = {"bundle": "good", "devices": "pump-1", "canary": "100%", "wave_wait": "10m", "probation_seconds": 60}
    created = api.post("/rollouts.json", json=body, headers=bearer)
    assert created.status_code == 201, created.text
    detail = created.json()
    assert detail["rollout"]["bundle_id"] == "good-model" and detail["rollout"]["created_by"] == "ada"
    assert detail["rollout"]["wave_wait_s"] == 600 and detail["rollout"]["probation"] == {"seconds": 60.0}
    assert [d["device_id"] for d in detail["devices"]] == ["pump-1"] and "archive" not in detail["rollout"]
    after = fleet.rollouts()
    assert len(after) == len(before) + 1

    refused = {
        "../elsewhere/outside": ("bundle", "'../elsewhere/outside'"),
        "escape": ("bundle", "a link"),
        "unsigned": ("bundle", "unsigned bundle"),
        "foreign": ("bundle", "not trusted"),
        "missing": ("bundle", "no such bundle directory"),
    }
    for name, (field, reason) in refused.items():
        answer = api.post("/rollouts.json", json={"bundle": name, "devices": "all"}, headers=bearer)
        assert answer.status_code == 400 and answer.json()["field"] == field and reason in answer.json()["error"], (name, answer.text)
    wrong = {"devices": ("nothing-*", "matches none"), "max_failed": ("200%", "between 0% and 100%"),
             "probation_snapshots": ("many", "expected a whole number"), "device_timeout": ("soon", "a duration")}
    for field, (value, reason) in wrong.items():
        answer = api.post("/rollouts.json", json={"bundle": "good", "devices": "all", field: value}, headers=bearer)
        assert answer.status_code == 400 and answer.json()["field"] == field, (field, answer.text)
        assert f"{value!r}" in answer.json()["error"] and reason in answer.json()["error"], answer.text
    # The CLI reads the same [rollout] trusted_keys: what the dashboard does not offer, `create` does not take.
    foreign = fleet.cli("create", fleet.bundles / "foreign", "--devices", "all")
    assert foreign.returncode == 2 and "not trusted" in foreign.stderr, foreign.stderr
    assert fleet.rollouts() == after  # nothing refused was written

    admin_view = Browser(fleet.base).get("/rollouts.json", headers=bearer).json()
    assert [o["name"] for o in admin_view["offers"] if o["problem"] is None] == ["good"]
    assert admin_view["defaults"] == {"canary": "5%", "wave_wait": "1h", "max_failed": "10%", "device_timeout": "2d"}


def test_viewers_operators_the_anonymous_and_a_post_without_its_csrf_token_start_nothing(fleet) -> None:
    before = fleet.rollouts()
    form = {"bundle": "good", "devices": "all"}
    for name in ("vera", "otto"):
        other = Browser(fleet.base)
        assert other.login(name, PASSWORDS[name][1]).status_code == 303
        shown = other.get("/rollouts")
        assert shown.status_code == 200 and "start-form" not in shown.text  # no form offered
        assert "offers" not in other.get("/rollouts.json").json()
        refused = other.post("/rollouts", data={**form, "csrf_token": other.csrf("/rollouts")})
        assert refused.status_code == 403 and f"{name} is a" in refused.text
    by_token = Browser(fleet.base).post("/rollouts.json", json=form, headers={"Authorization": f"Bearer {fleet.viewer_token}"})
    assert by_token.status_code == 403
    assert Browser(fleet.base).post("/rollouts.json", json=form).status_code == 401
    admin = Browser(fleet.base)
    assert admin.login("ada", PASSWORDS["ada"][1]).status_code == 303
    assert "start-form" in admin.get("/rollouts").text
    for sent in ({}, {"csrf_token": "forged"}):
        answer = admin.post("/rollouts", data={**form, **sent})
        assert answer.status_code == 403 and "CSRF" in answer.text
    assert fleet.rollouts() == before


def test_bundle_names_cannot_lead_out_of_the_bundles_directory(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys")
    root = tmp_path / "bundles"
    bundle(root / "good", "good-model", keys)
    bundle(tmp_path / "outside", "outside-model", keys)
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inner-link").symlink_to(root / "good", target_is_directory=True)
    (root / "notes.txt").write_text("not a bundle")
    config = RolloutConfig(bundles=str(root))
    assert bundle_path(config, "good") == root / "good"
    for name in ("", ".", "..", "../outside", "good/../../outside", str(tmp_path / "outside"), ".hidden", "a\\b",
                 "escape", "inner-link", "notes.txt", "nothing"):
        with pytest.raises(RolloutError, match=re.escape(repr(name))):
            bundle_path(config, name)
    assert [o.name for o in offers(config)] == ["good"]
    assert offers(RolloutConfig(bundles=str(tmp_path / "none-yet"))) == []


def test_the_rollout_section_of_fleet_toml(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    assert parse_config({}, path).rollout == RolloutConfig()
    example = load_config(Path(__file__).resolve().parents[1] / "deploy" / "fleet.example.toml")
    assert example.rollout == RolloutConfig() and example.rollout.bundles == "/var/lib/cm-fleet/bundles"  # shows the defaults
    keys = parse_config({"rollout": {"bundles": "/srv/bundles", "trusted_keys": ["/etc/cm/a.pem", "/etc/cm/b.pem"]}}, path)
    assert keys.rollout == RolloutConfig("/srv/bundles", ("/etc/cm/a.pem", "/etc/cm/b.pem"))
    for table, message in (({"trusted_keys": "/etc/cm/a.pem"}, "rollout.trusted_keys: expected list, got '/etc/cm/a.pem'"),
                           ({"trusted_keys": [1]}, "rollout.trusted_keys: expected a list of strings, got [1]"),
                           ({"bundles": ""}, "rollout.bundles: expected a directory, got ''"),
                           ({"bundle": "x"}, "rollout.bundle: unknown key")):
        with pytest.raises(FleetConfigError, match=re.escape(f"{path}: {message}")):
            parse_config({"rollout": table}, path)
