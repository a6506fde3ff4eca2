"""The broker set-up in deploy/mosquitto (password file, ACL, TLS listener) does what its comments promise,
with the publisher connecting the way a deployed agent does: TLS, username and a password file."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import HOST, Mosquitto, Subscriber, TlsFiles, free_port, make_test_ca, write_password_file
from paho.mqtt.enums import CallbackAPIVersion
from waiting import eventually

from edge.config import MqttConfig
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher, PublisherError, topics
from edge.mqtt.schemas import validate

pytestmark = pytest.mark.waits

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
USERS = {"pi-1": "pi-1 secret", "pi-2": "pi-2 secret", "homeassistant": "ha secret"}
PI1 = topics("cm", "pi-1")
ALERT = {"id": "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "device_id": "pi-1", "state": "alarm",
         "previous_state": "warning", "timestamp": "2003-11-25T23:39:56.000Z", "score": 0.42,
         "warning_threshold": 0.1, "alarm_threshold": 0.2, "channel_errors": {"bearing3": 0.42},
         "top_channel": "bearing3", "reason": None, "model": {"id": "ims1", "sha256": "0" * 64}}


def deploy_config(passwd: Path, tls: TlsFiles) -> str:
    """deploy/mosquitto/cm.conf with the TLS block enabled and paths and ports pointed at the test's files."""
    text = (DEPLOY / "cm.conf").read_text()
    start, end = text.index("# --- TLS listener"), text.index("# --- end of TLS listener")
    tls_block = "\n".join(line[1:] if line.startswith("#") else line for line in text[start:end].splitlines()[1:])
    text = text[:start] + tls_block + "\n" + text[end:]
    replacements = {
        "password_file /etc/mosquitto/cm.passwd": f"password_file {passwd}",
        "acl_file /etc/mosquitto/cm.acl": f"acl_file {DEPLOY / 'acl'}",
        "\nlistener 1883\n": "\nlistener {port} 127.0.0.1\n",
        "\npersistence true\n": "\npersistence true\npersistence_location {directory}/\n",
        "listener 8883": "listener {tls_port} 127.0.0.1",
        "cafile /etc/mosquitto/certs/ca.crt": f"cafile {tls.ca}",
        "certfile /etc/mosquitto/certs/server.crt": f"certfile {tls.server_cert}",
        "keyfile /etc/mosquitto/certs/server.key": f"keyfile {tls.server_key}",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/mosquitto/cm.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Secured:
    broker: Mosquitto
    tls: TlsFiles
    secrets: dict[str, Path]  # user -> password file


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("secured")
    tls = make_test_ca(directory / "ca")
    passwd = write_password_file(directory / "cm.passwd", USERS)
    secrets = {}
    for user, password in USERS.items():
        secrets[user] = directory / f"{user}.secret"
        secrets[user].write_text(password + "\n")
    broker = Mosquitto(directory / "broker", tls_port=free_port(), config=deploy_config(passwd, tls))
    with broker:
        yield Secured(broker, tls, secrets)


def subscriber(secured: Secured, user: str, topics: str | list[str] = "cm/#") -> Subscriber:
    return Subscriber(secured.broker.tls_port, topics, username=user, password=USERS[user], tls_ca=secured.tls.ca)


def connack(port: int, *, username: str | None = None, password: str | None = None,
            tls_ca: Path | None = None) -> mqtt.ReasonCode:
    """The broker's answer to a CONNECT."""
    answers: list[mqtt.ReasonCode] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, flags, reason, props: answers.append(reason)
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    client.connect(HOST, port)
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    assert answers, f"no CONNACK from the broker on port {port}"
    return answers[0]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_agent_publishes_over_tls_with_a_password_file(secured: Secured, tmp_path: Path, protocol: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = MqttConfig(host="127.0.0.1", port=secured.broker.tls_port, device_id="pi-1", username="pi-1",
                        password_file=str(secured.secrets["pi-1"]), tls_ca=str(secured.tls.ca), protocol=protocol,
                        reconnect_min=0.2, reconnect_max=0.2)
    with subscriber(secured, "homeassistant") as reader, Outbox(tmp_path / "outbox.sqlite") as outbox:
        publisher = Publisher(config, outbox)
        publisher.start()
        try:
            assert eventually(lambda: publisher.connected)
            publisher.publish_alert(ALERT)
            assert publisher.wait_for_flush(10)
        finally:
            publisher.stop()
        assert reader.wait_for(lambda s: s.on(PI1.status)[-1:] == [b"offline"] and s.on(PI1.alert))
    validate("alert", json.loads(reader.on(PI1.alert)[0]))
    assert USERS["pi-1"] not in caplog.text


def test_a_broker_certificate_from_another_ca_is_refused(secured: Secured, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    stranger = make_test_ca(tmp_path / "other-ca", common_name="stranger")
    config = MqttConfig(host="127.0.0.1", port=secured.broker.tls_port, device_id="pi-1", username="pi-1",
                        password_file=str(secured.secrets["pi-1"]), tls_ca=str(stranger.ca),
                        reconnect_min=0.2, reconnect_max=0.2)
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        publisher = Publisher(config, outbox)
        publisher.start()
        try:
            assert eventually(lambda: publisher.failed_attempts >= 2)
            assert not publisher.connected
        finally:
            publisher.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


@pytest.mark.parametrize("username, password", [(None, None), ("pi-1", "wrong"), ("nobody", "pi-1 secret")])
def test_clients_without_valid_credentials_are_refused(secured: Secured, username: str | None,
                                                       password: str | None) -> None:
    for port, ca in ((secured.broker.port, None), (secured.broker.tls_port, secured.tls.ca)):
        reason = connack(port, username=username, password=password, tls_ca=ca)
        assert reason.is_failure and reason.getName() in ("Not authorized", "Bad user name or password")
    assert not connack(secured.broker.port, username="pi-1", password=USERS["pi-1"]).is_failure


def test_a_device_cannot_publish_under_another_devices_prefix(secured: Secured) -> None:
    with subscriber(secured, "homeassistant") as reader, subscriber(secured, "pi-2", []) as intruder:
        forged = dict(ALERT, id="0b7c9e1d-2f3a-4b5c-9d6e-7f8a9b0c1d2e")
        assert intruder.publish_acked(PI1.alert, json.dumps(forged).encode())
        assert intruder.publish_acked("cm/pi-2/alert", b"sentinel")  # allowed, and sent after the forgery
        assert reader.wait_for(lambda s: s.on("cm/pi-2/alert") == [b"sentinel"])
        assert reader.on(PI1.alert) == []


def test_a_device_cannot_read_another_devices_messages(secured: Secured) -> None:
    with subscriber(secured, "homeassistant") as reader, subscriber(secured, "pi-2", ["cm/pi-1/#", "cm/#"]) as spy, \
            subscriber(secured, "pi-1", []) as device:
        assert device.publish_acked(PI1.alert, json.dumps(ALERT).encode())
        assert reader.wait_for(lambda s: len(s.on(PI1.alert)) == 1)
        # The broker has routed the alert; anything it sent the spy before this PUBACK has arrived by now.
        assert spy.publish_acked("cm/pi-2/status", b"online")
        assert spy.messages == []


def test_a_password_file_hashed_in_python_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    passwd = write_password_file(tmp_path / "passwd", {"pi-1": "s3cret"}, use_tool=False)
    config = f"listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
    with Mosquitto(tmp_path / "broker", config=config) as broker:
        assert not connack(broker.port, username="pi-1", password="s3cret").is_failure
        assert connack(broker.port, username="pi-1", password="s3cret!").is_failure


def test_unusable_tls_files_are_named(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate\n")
    config = MqttConfig(host="127.0.0.1", device_id="pi-1", tls_ca=str(bogus))
    with Outbox(tmp_path / "outbox.sqlite") as outbox, pytest.raises(PublisherError, match=str(bogus)):
        Publisher(config, outbox)


def test_cm_edge_itself_connects_over_tls_with_its_password_file(secured: Secured, tmp_path: Path) -> None:
    """The deployed agent, not just its publisher: cm-edge reads a replay from a pty and reaches the reader."""
    import os
    import subprocess
    import sys

    from trained import shared_bundle, shared_run

    from firmware_bridge.ims import list_ims_files

    run = tmp_path / "run"
    run.mkdir()
    for ims in list_ims_files(shared_run())[:4]:
        os.symlink(ims.path, run / ims.path.name)
    tty, log = tmp_path / "tty", tmp_path / "agent.log"
    config = tmp_path / "edge.toml"
    config.write_text(f"""device_id = "pi-1"
[serial]
port = "{tty}"
[model]
bundle = "{shared_bundle()}"
[mqtt]
host = "127.0.0.1"
port = {secured.broker.tls_port}
username = "pi-1"
password_file = "{secured.secrets['pi-1']}"
tls_ca = "{secured.tls.ca}"
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
""")
    bin_dir = Path(sys.executable).parent
    with subscriber(secured, "homeassistant") as reader, log.open("wb") as out:
        agent = subprocess.Popen([bin_dir / "cm-edge", "--config", config], stdout=out, stderr=subprocess.STDOUT)
        try:
            # Telemetry is QoS 0 and not kept while offline: start the sensor once the agent is online.
            assert reader.wait_for(lambda s: s.on(PI1.status)[-1:] == [b"online"], 30), log.read_text()
            subprocess.run([bin_dir / "cm-replay", run, "--port", f"pty:{tty}", "--no-progress"], check=True,
                           capture_output=True, timeout=60)
            assert reader.wait_for(lambda s: len(s.on(PI1.telemetry)) == 4, 30), log.read_text()
        finally:
            agent.terminate()
            assert agent.wait(30) == 0
    assert reader.wait_for(lambda s: s.on(PI1.status)[-1:] == [b"offline"], 10)
    for payload in reader.on(PI1.telemetry):
        validate("telemetry", json.loads(payload))
    assert USERS["pi-1"] not in log.read_text()  # the secret never reaches the journal


def plain_publisher(secured: Secured, device: str, outbox: Outbox, **overrides: object) -> Publisher:
    settings = dict(host="127.0.0.1", port=secured.broker.port, device_id=device, username=device,
                    password_file=str(secured.secrets[device]), reconnect_min=0.2, reconnect_max=0.2)
    return Publisher(MqttConfig(**(settings | overrides)), outbox)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_another_devices_credentials_cannot_take_over_the_agents_session(secured: Secured, tmp_path: Path,
                                                                         protocol: int) -> None:
    with subscriber(secured, "homeassistant", PI1.status) as reader, Outbox(tmp_path / "outbox.sqlite") as outbox:
        agent = plain_publisher(secured, "pi-1", outbox)
        agent.start()
        try:
            assert reader.wait_for(lambda s: s.on(PI1.status)[-1:] == [b"online"])
            before = len(reader.on(PI1.status))  # (a retained "offline" of an earlier test may come first)
            for _ in range(3):  # pi-2's password, pi-1's client id: before, this kicked the agent off
                intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cm-edge-pi-1", protocol=protocol)
                intruder.username_pw_set("pi-2", USERS["pi-2"])
                connected: list[mqtt.ReasonCode] = []
                intruder.on_connect = lambda c, u, flags, reason, props: connected.append(reason)
                intruder.connect(HOST, secured.broker.port)
                intruder.loop_start()
                assert eventually(lambda: bool(connected)) and not connected[0].is_failure  # it is a valid user
                intruder.publish(PI1.status, b"offline", qos=1, retain=True).wait_for_publish(5)
                intruder.disconnect()
                intruder.loop_stop()
            # The agent's session is untouched: one connection, never dropped, its availability never flipped.
            assert reader.publish_acked("cm/homeassistant-probe", b"") is not None
            assert agent.connected and agent.failed_attempts == 0
            assert reader.on(PI1.status)[before:] == []
        finally:
            agent.stop()


def test_an_offline_consumer_gets_a_whole_backlog_of_alerts_after_an_outage(secured: Secured, tmp_path: Path) -> None:
    """3,000 alerts flushed while Home Assistant is away: the deploy config queues them all (default: 1,000)."""
    count = 3000
    consumer = Subscriber(secured.broker.port, PI1.alert, username="homeassistant", password=USERS["homeassistant"],
                          client_id="homeassistant", persistent=True).start()
    consumer.stop()  # offline, its session (and queue) kept by the broker
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        ids = []
        for n in range(count):  # the alerts an outage left in the agent's outbox
            alert = dict(ALERT, id=f"00000000-0000-4000-8000-{n:012d}")
            outbox.add(PI1.alert, json.dumps(alert).encode())
            ids.append(alert["id"])
        agent = plain_publisher(secured, "pi-1", outbox)
        agent.start()
        try:
            assert agent.wait_for_flush(120)
        finally:
            agent.stop()
    consumer = Subscriber(secured.broker.port, PI1.alert, username="homeassistant", password=USERS["homeassistant"],
                          client_id="homeassistant", persistent=True).start()
    try:
        assert consumer.wait_for(lambda s: len(s.on(PI1.alert)) >= count, 60), len(consumer.on(PI1.alert))
        assert [json.loads(p)["id"] for p in consumer.on(PI1.alert)] == ids
    finally:
        consumer.stop()


def test_under_the_deploy_acl_a_device_announces_itself_to_home_assistant(secured: Secured, tmp_path: Path) -> None:
    """Discovery configs are accepted for the device's own entities and reach Home Assistant's user."""
    from edge.mqtt.homeassistant import Discovery, entities

    config = MqttConfig(host="127.0.0.1", port=secured.broker.tls_port, device_id="pi-1", username="pi-1",
                        password_file=str(secured.secrets["pi-1"]), tls_ca=str(secured.tls.ca))
    with subscriber(secured, "homeassistant", "homeassistant/#") as ha, Outbox(tmp_path / "outbox.sqlite") as outbox:
        publisher = Publisher(config, outbox)
        found = entities("pi-1", publisher.topics, ("bearing1",), ("frames",), "m")
        Discovery(publisher, "homeassistant", "pi-1", found).start()
        publisher.start()
        ours = {f"homeassistant/{e.component}/pi-1/{e.object_id}/config" for e in found}
        # Live deliveries only (retained copies from an earlier test's cm-edge as pi-1 do not count).
        sent = lambda s: [m.topic for m in s.messages if m.topic in ours and not m.retain]  # noqa: E731
        try:
            assert ha.wait_for(lambda s: set(sent(s)) == ours)
            ha.publish_acked("homeassistant/status", b"online")  # the device may read the birth message
            assert ha.wait_for(lambda s: len(sent(s)) == 2 * len(ours))
        finally:
            publisher.stop()


def test_cm_edge_check_names_refused_credentials(secured: Secured, tmp_path: Path) -> None:
    from edge.config import load_config
    from edge.preflight import check_broker, problems

    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not the password\n")
    config = tmp_path / "edge.toml"
    config.write_text(f"""device_id = "pi-1"
[serial]
port = "loop://"
[model]
bundle = "b"
[mqtt]
host = "127.0.0.1"
port = {secured.broker.tls_port}
username = "pi-1"
password_file = "{wrong}"
tls_ca = "{secured.tls.ca}"
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
""")
    problem = check_broker(load_config(config).mqtt)
    assert problem is not None and "refused the connection" in problem and "mqtt.password_file" in problem
    assert "not the password" not in problem
    config.write_text(config.read_text().replace(str(wrong), str(secured.secrets["pi-1"])))
    assert check_broker(load_config(config).mqtt) is None
    # Offline, the credentials are still read: an empty password file would stop the agent at start.
    wrong.write_text("\n")
    config.write_text(config.read_text().replace(str(secured.secrets["pi-1"]), str(wrong)))
    assert problems(load_config(config), offline=True) == [f"{wrong}: the MQTT password file is empty"]
