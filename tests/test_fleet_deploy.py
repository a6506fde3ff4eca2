"""The fleet's deploy files do what their comments promise: deploy/cm-fleet.service passes systemd's own checks
and is sandboxed, deploy/fleet.example.toml is what cm-fleet reads, and under deploy/mosquitto's cm.conf and ACL
(Debian's Mosquitto, the exact files) a real `cm-fleet serve` logging in as the `cm-fleet` user stores a device's
alert, while it cannot publish as a device and a device can neither read the others' topics nor take the
fleet's messages by joining its shared subscription."""
from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, Subscriber, TlsFiles, free_port, make_test_ca, write_password_file
from fleet_helpers import BIN, contract_alert, start_fleet
from paho.mqtt.enums import CallbackAPIVersion
from test_security import deploy_config
from waiting import eventually

from edge.mqtt.publisher import encode
from fleet.config import FleetConfig, HistorianConfig, load_config
from fleet.historian import open_historian

pytestmark = pytest.mark.waits
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
USERS = {"pi-1": "pi-1 secret", "pi-2": "pi-2 secret", "cm-fleet": "fleet secret", "homeassistant": "ha secret"}
UNIT = DEPLOY / "cm-fleet.service"
INSTALLED_BINARY = "/opt/cm-fleet/venv/bin/cm-fleet"


def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: `make system-deps` installs Debian's systemd"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this venv's cm-fleet: verify checks that it exists."""
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(BIN / "cm-fleet")))
    return copy


def test_the_unit_passes_systemd_analyze_verify(unit: Path) -> None:
    result = systemd_analyze("verify", str(unit))
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_unit_is_sandboxed_at_least_as_tightly_as_the_agents(unit: Path, tmp_path: Path) -> None:
    def exposure(path: Path) -> float:
        result = systemd_analyze("security", "--offline=true", str(path))
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert found, result.stdout + result.stderr
        return float(found.group(1))

    agent = tmp_path / "cm-edge.service"
    agent.write_text((DEPLOY / "cm-edge.service").read_text().replace("/opt/cm-edge/venv/bin/cm-edge", "/bin/true"))
    fleet = exposure(unit)
    assert fleet <= exposure(agent) and fleet < 2.0  # systemd rates below 2.0 "OK"
    text = UNIT.read_text()
    for setting in ("User=cm-fleet", "StateDirectory=cm-fleet", "ProtectSystem=strict", "PrivateDevices=yes",
                    "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"):
        assert setting in text, setting


def test_the_example_config_is_what_cm_fleet_reads() -> None:
    config = load_config(DEPLOY / "fleet.example.toml")
    assert config.historian.url == "sqlite:///var/lib/cm-fleet/historian.sqlite"  # the unit's StateDirectory
    assert config.mqtt.username == "cm-fleet" and config.mqtt.password_file == "/etc/cm/fleet-mqtt.secret"
    assert config.mqtt.client_id == "cm-fleet-1"  # fixed, so the session (and its queue) survives restarts
    assert config.ingest == FleetConfig().ingest


def test_several_instances_share_a_secret_group(tmp_path: Path) -> None:
    """deploy/README.md's `sed` line for several instances, as written (without sudo), on a copy of the example
    (one instance, a plain subscription): a random group."""
    assert load_config(DEPLOY / "fleet.example.toml").mqtt.group == ""
    line = next(line.strip() for line in (DEPLOY / "README.md").read_text().splitlines()
                if line.strip().startswith("sudo sed -i"))
    groups = set()
    for attempt in range(2):
        copy = tmp_path / f"fleet-{attempt}.toml"
        shutil.copy(DEPLOY / "fleet.example.toml", copy)
        command = line.removeprefix("sudo ").replace("/etc/cm/fleet.toml", str(copy))
        subprocess.run(["bash", "-c", command], check=True, timeout=30)
        groups.add(load_config(copy).mqtt.group)
    assert len(groups) == 2 and all(re.fullmatch(r"cm-fleet-[0-9a-f]{24}", group) for group in groups), groups


@dataclass(frozen=True)
class DeployedBroker:
    broker: Mosquitto
    tls: TlsFiles
    directory: Path

    def secret(self, user: str) -> Path:
        path = self.directory / f"{user}.secret"
        path.write_text(USERS[user] + "\n")
        return path

    def client(self, user: str, topics: str | list[str] = "cm/#") -> Subscriber:
        return Subscriber(self.broker.port, topics, username=user, password=USERS[user])


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[DeployedBroker]:
    tls = make_test_ca(tmp_path / "ca")
    passwd = write_password_file(tmp_path / "cm.passwd", USERS)
    broker = Mosquitto(tmp_path / "broker", tls_port=free_port(), config=deploy_config(passwd, tls))
    with broker:
        yield DeployedBroker(broker, tls, tmp_path)


def publish_reason(deployed: DeployedBroker, user: str, topic: str, payload: bytes) -> mqtt.ReasonCode:
    """The broker's PUBACK reason code for a QoS 1 publish by `user` (MQTT 5 says when a publish was refused)."""
    answers: list[mqtt.ReasonCode] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, USERS[user])
    client.on_publish = lambda c, u, mid, reason, properties: answers.append(reason)
    client.connect("127.0.0.1", deployed.broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert eventually(lambda: bool(answers), 10), f"no PUBACK for {user} on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def test_under_the_deploy_acl_the_fleet_reads_every_device_and_writes_as_none(request, tmp_path: Path,
                                                                              deployed: DeployedBroker) -> None:
    forged = contract_alert("pi-1", 0)
    with deployed.client("homeassistant") as witness:
        # The fleet's credentials cannot forge a device's alert or status (before cm-fleet serve logs in with
        # them: one connection per username, and a clean start would end the service's session).
        for topic, payload in (("cm/pi-1/alert", encode(forged)), ("cm/pi-1/status", b"offline")):
            assert publish_reason(deployed, "cm-fleet", topic, payload).is_failure, topic
        url = f"sqlite://{tmp_path / 'historian.sqlite'}"
        secret = deployed.secret("cm-fleet")
        # The group is a secret, as deploy/README.md has it made at install: Mosquitto's ACL file cannot refuse
        # a subscription, so a device that joined a known group would get every other message routed to it,
        # and the broker, refusing it the delivery, would drop those messages (Mosquitto 2.0's shared
        # subscriptions): a stolen device password would cost the fleet half of every alert.
        group = f"cm-fleet-{secrets.token_hex(12)}"
        fleet = start_fleet(request, tmp_path, deployed.broker.port, url,
                            mqtt=f'username = "cm-fleet"\npassword_file = "{secret}"\ngroup = "{group}"\n')
        # A device joins the shared group of the example's name and subscribes to everything: the broker must
        # neither split the alerts between it and the service nor show it another device's messages.
        thief = deployed.client("pi-2", ["$share/cm-fleet/cm/+/alert", "cm/#"])
        with thief, deployed.client("pi-1", []) as device:
            alerts = [contract_alert("pi-1", i) for i in range(1, 21)]
            for alert in alerts:
                assert device.publish_acked("cm/pi-1/alert", encode(alert))
            assert witness.wait_for(lambda s: len(s.on("cm/pi-1/alert")) == len(alerts))
            reader = open_historian(HistorianConfig(url=url))
            assert eventually(lambda: len(reader.alert_ids()) == len(alerts), 30), fleet.read_log()
            assert set(reader.alert_ids()) == {a["id"] for a in alerts}  # all of them: none went to the thief
            assert thief.publish_acked("cm/pi-2/status", b"online")  # anything routed to it has arrived by now
            assert thief.messages == []
        assert [json.loads(p) for p in witness.on("cm/pi-1/alert")] == alerts  # the forgery never got through
        assert reader.rejections() == {} and fleet.stop() == 0
        reader.close()
