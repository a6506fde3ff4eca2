"""The publisher against a real Mosquitto: availability, retained state, alerts that survive broker outages
and agent crashes (in order, at least once), telemetry that is dropped while offline, and quiet, secret-free
logs."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, Subscriber, write_password_file
from waiting import eventually

from edge.config import MqttConfig
from edge.mqtt import payloads as messages
from edge.mqtt.health import Health
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher, PublisherError, ReconnectDelay, topics
from edge.mqtt.schemas import validate
from edge.scoring.detector import State, Transition

pytestmark = pytest.mark.waits

DEVICE = "pi-1"
T = topics("cm", DEVICE)
CHANNELS = ("bearing1", "bearing2", "bearing3", "bearing4")
MODEL = messages.ModelRef("ims1-20240101", "ab" * 32)
PROTOCOLS = ["5", "3.1.1"]


def reading(n: int, state: State = State.ALARM, reason: str | None = None) -> messages.Reading:
    errors = np.array([0.01, 0.02, 0.9, 0.03]) * (n + 1)
    return messages.Reading(capture_time_us=1_066_824_384_000_000 + n * 600_000_000, snapshot=n,
                            features=np.array([0.061, 0.072, 0.083, 0.064]), score=float(errors.mean()),
                            channel_errors=errors, state=state, reason=reason)


def alert(n: int) -> dict:
    transition = Transition(State.ALARM if n % 2 == 0 else State.NORMAL,
                            State.NORMAL if n % 2 == 0 else State.ALARM, None)
    return messages.alert(DEVICE, transition, reading(n, transition.state), CHANNELS, (0.1, 0.2), MODEL)


def state(n: int) -> dict:
    return messages.state(DEVICE, reading(n), reading(0).capture_time_us, CHANNELS, MODEL)


def telemetry(n: int) -> dict:
    counters = dict.fromkeys(["frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped",
                              "snapshots", "snapshots_discarded", "alerts_pending", "telemetry_dropped"], 0)
    return messages.telemetry(DEVICE, reading(n), CHANNELS, counters)


def config(broker: Mosquitto, protocol: str = "5", **overrides: object) -> MqttConfig:
    settings = dict(host="127.0.0.1", port=broker.port, device_id=DEVICE, protocol=protocol, keepalive=5,
                    reconnect_min=0.2, reconnect_max=0.2)
    return MqttConfig(**(settings | overrides))


def alert_ids(subscriber: Subscriber) -> list[str]:
    return [json.loads(payload)["id"] for payload in subscriber.on(T.alert)]


def first_occurrences(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def mqtt_protocol(protocol: str) -> int:
    return mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", persistence=True) as running:
        yield running


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite") as store:
        yield store


@pytest.fixture
def started() -> Iterator[Callable[[Publisher], Publisher]]:
    """Start publishers and make sure each one is stopped, whatever the test's outcome."""
    publishers: list[Publisher] = []

    def start(publisher: Publisher) -> Publisher:
        publishers.append(publisher)
        publisher.start()
        return publisher

    yield start
    for publisher in publishers:
        publisher.stop(timeout=1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_reach_subscribers_and_match_their_schemas(broker: Mosquitto, outbox: Outbox, started,
                                                            protocol: str) -> None:
    with Subscriber(broker.port, "cm/#") as subscriber:
        publisher = started(Publisher(config(broker, protocol), outbox))
        assert eventually(lambda: publisher.connected)
        publisher.publish_state(state(1))
        publisher.publish_alert(alert(1))
        assert publisher.publish_telemetry(telemetry(1))
        assert subscriber.wait_for(lambda s: s.on(T.state) and s.on(T.alert) and s.on(T.telemetry))
        assert publisher.wait_for_flush(10) and publisher.pending() == 0
        validate("status", subscriber.on(T.status)[0].decode())
        for name, topic in (("alert", T.alert), ("state", T.state), ("telemetry", T.telemetry)):
            validate(name, json.loads(subscriber.on(topic)[0]))
        publisher.stop()
        assert subscriber.wait_for(lambda s: s.on(T.status) == [b"online", b"offline"])
    with Subscriber(broker.port, "cm/#") as late:  # what Home Assistant sees when it starts later
        assert late.wait_for(lambda s: s.on(T.status) == [b"offline"] and len(s.on(T.state)) == 1)
        assert all(m.retain for m in late.messages) and not late.on(T.alert)


def test_an_alert_stays_in_the_outbox_until_the_broker_acknowledges_it(broker: Mosquitto, outbox: Outbox,
                                                                       started) -> None:
    with Subscriber(broker.port, T.alert) as subscriber:
        publisher = started(Publisher(config(broker), outbox))
        assert eventually(lambda: publisher.connected)
        broker.pause()  # connection open, nothing acknowledged
        try:
            publisher.publish_alert(alert(1))
            assert publisher.pending() == 1 and [i.topic for i in outbox.pending()] == [T.alert]
        finally:
            broker.resume()
        assert publisher.wait_for_flush(10)
        assert subscriber.wait_for(lambda s: len(s.on(T.alert)) == 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_alerts_raised_during_a_broker_outage_arrive_after_it_in_order(broker: Mosquitto, outbox: Outbox,
                                                                       started, protocol: str) -> None:
    alerts = [alert(n) for n in range(10)]
    expected = [a["id"] for a in alerts]
    subscriber = Subscriber(broker.port, T.alert, protocol=mqtt_protocol(protocol), persistent=True).start()
    try:
        publisher = started(Publisher(config(broker, protocol), outbox))
        assert eventually(lambda: publisher.connected)
        for payload in alerts[:3]:
            publisher.publish_alert(payload)
        assert publisher.wait_for_flush(10)
        broker.stop()
        for payload in alerts[3:]:  # the first may still go to paho before it notices the outage
            publisher.publish_alert(payload)
        assert publisher.pending() == 7
        broker.start()
        assert publisher.wait_for_flush(15)
        assert subscriber.wait_for(lambda s: set(alert_ids(s)) == set(expected))
        received = alert_ids(subscriber)
        assert first_occurrences(received) == expected  # duplicates are allowed, reordering is not
    finally:
        subscriber.stop()


def test_offline_start_drops_telemetry_but_delivers_state_and_alerts(broker: Mosquitto, outbox: Outbox,
                                                                     started) -> None:
    broker.stop()
    publisher = started(Publisher(config(broker), outbox))
    publisher.publish_state(state(1))
    publisher.publish_state(state(2))  # only the latest state matters
    publisher.publish_alert(alert(1))
    assert not publisher.publish_telemetry(telemetry(1)) and publisher.dropped_telemetry == 1
    broker.start()
    with Subscriber(broker.port, "cm/#") as subscriber:
        assert publisher.wait_for_flush(15)
        assert subscriber.wait_for(lambda s: s.on(T.state) and s.on(T.status) == [b"online"])
        assert [json.loads(p)["timestamp"] for p in subscriber.on(T.state)] == [state(2)["timestamp"]]
        assert publisher.publish_telemetry(telemetry(2))
        assert subscriber.wait_for(lambda s: len(s.on(T.telemetry)) == 1)
        assert json.loads(subscriber.on(T.telemetry)[0])["snapshot"] == 2


CHILD = """
import json, sys, time
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import MqttConfig, Publisher
port, outbox_path, protocol = int(sys.argv[1]), sys.argv[2], sys.argv[3]
publisher = Publisher(MqttConfig(host="127.0.0.1", port=port, device_id="pi-1", protocol=protocol,
                                 reconnect_min=0.2, reconnect_max=0.2), Outbox(outbox_path))
publisher.start()
for line in sys.stdin:
    command = json.loads(line)
    if command == "wait-online":
        while not publisher.connected:
            time.sleep(0.01)
    else:
        publisher.publish_alert(command)
    print("done", flush=True)
"""


class Child:
    """A publisher in its own process, to be SIGKILLed like an agent losing power."""

    def __init__(self, broker: Mosquitto, outbox_path: Path, protocol: str = "5") -> None:
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(broker.port), str(outbox_path), protocol],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command: object) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n"

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_last_will_marks_a_killed_publisher_offline(broker: Mosquitto, tmp_path: Path, protocol: str) -> None:
    with Subscriber(broker.port, T.status) as subscriber:
        child = Child(broker, tmp_path / "outbox.sqlite", protocol)
        try:
            child.send("wait-online")
            assert subscriber.wait_for(lambda s: s.on(T.status) == [b"online"])
        finally:
            child.kill()
        assert subscriber.wait_for(lambda s: s.on(T.status) == [b"online", b"offline"])
    with Subscriber(broker.port, T.status) as late:
        assert late.wait_for(lambda s: s.on(T.status) == [b"offline"]) and late.messages[0].retain


def test_alerts_pending_when_the_agent_is_killed_are_published_by_the_next_run(broker: Mosquitto, tmp_path: Path,
                                                                              started) -> None:
    alerts = [alert(n) for n in range(3)]
    path = tmp_path / "outbox.sqlite"
    broker.stop()
    child = Child(broker, path)
    try:
        for payload in alerts:
            child.send(payload)  # "done" comes back after publish_alert returned
    finally:
        child.kill()
    broker.start()
    with Subscriber(broker.port, T.alert) as subscriber, Outbox(path) as outbox:
        assert len(outbox) == 3
        publisher = started(Publisher(config(broker), outbox))
        assert publisher.wait_for_flush(15)
        publisher.stop()
        assert subscriber.wait_for(lambda s: len(s.on(T.alert)) == 3)
        assert alert_ids(subscriber) == [a["id"] for a in alerts]


def test_an_alert_in_flight_when_the_agent_dies_arrives_at_least_once(broker: Mosquitto, tmp_path: Path,
                                                                      started) -> None:
    path = tmp_path / "outbox.sqlite"
    payload = alert(1)
    with Subscriber(broker.port, T.alert) as subscriber:
        child = Child(broker, path)
        try:
            child.send("wait-online")
            broker.pause()  # the alert goes out but its PUBACK cannot come back
            child.send(payload)
        finally:
            child.kill()
            broker.resume()
        with Outbox(path) as outbox:
            assert len(outbox) == 1
            publisher = started(Publisher(config(broker), outbox))
            assert publisher.wait_for_flush(15)
            publisher.stop()
        assert subscriber.wait_for(lambda s: len(s.on(T.alert)) >= 1)
        assert set(alert_ids(subscriber)) == {payload["id"]}  # once or twice, never lost


def test_outages_are_logged_once_and_secrets_never(broker: Mosquitto, tmp_path: Path, outbox: Outbox, started,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-correct-horse"
    write_password_file(tmp_path / "passwd", {DEVICE: secret})
    broker.config = f"listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
    broker.stop()
    good = tmp_path / "good.secret"
    good.write_text(secret + "\n")
    bad = tmp_path / "bad.secret"
    bad.write_text("wrong-" + secret + "\n")
    caplog.set_level(logging.DEBUG)

    publisher = started(Publisher(config(broker, username=DEVICE, password_file=str(good)), outbox))
    assert eventually(lambda: publisher.failed_attempts >= 3)
    broker.start()
    assert eventually(lambda: publisher.connected)
    warnings = [r for r in caplog.records if r.name == "edge.mqtt.publisher" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0].getMessage()

    caplog.clear()
    refused = started(Publisher(config(broker, username=DEVICE, password_file=str(bad), client_id="other"), outbox))
    assert eventually(lambda: refused.failed_attempts >= 3)
    assert not refused.connected
    errors = [r for r in caplog.records if r.name == "edge.mqtt.publisher" and r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "refused" in errors[0].getMessage()

    assert any(r.name.startswith("edge.mqtt.publisher.paho") for r in caplog.records)  # paho's debug log is captured
    assert secret not in caplog.text


def test_an_unreadable_password_file_is_named(tmp_path: Path, outbox: Outbox) -> None:
    missing = tmp_path / "nope.secret"
    with pytest.raises(PublisherError, match=str(missing)):
        Publisher(MqttConfig(host="127.0.0.1", device_id=DEVICE, username=DEVICE, password_file=str(missing)), outbox)


@pytest.mark.parametrize("name, payload, change", [
    ("alert", alert(1), {"state": "broken"}),
    ("alert", alert(1), {"timestamp": "2003-10-22T12:06:24+02:00"}),
    ("alert", alert(1), {"unexpected": 1}),
    ("state", state(1), {"model": {"id": "m"}}),
    ("telemetry", telemetry(1), {"counters": {"frames": -1}}),
])
def test_the_schemas_reject_payloads_consumers_could_not_rely_on(name: str, payload: dict, change: dict) -> None:
    import jsonschema

    validate(name, payload)
    with pytest.raises(jsonschema.ValidationError):
        validate(name, payload | change)
    with pytest.raises(jsonschema.ValidationError):
        validate("status", "maybe")


def refusing_broker(broker: Mosquitto, tmp_path: Path, alerts_allowed: bool) -> None:
    """Anonymous clients may publish below cm/pi-1/, but the ACL denies the alert topic unless allowed."""
    acl = tmp_path / f"acl-{alerts_allowed}"
    grants = ["status", "state", "telemetry", "health", "probe"] + (["alert"] if alerts_allowed else [])
    acl.write_text("".join(f"topic readwrite cm/{DEVICE}/{name}\n" for name in grants))
    broker.config = f"listener {{port}} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n"


def test_a_refused_alert_stays_stored_raises_a_health_fault_and_is_delivered_once_allowed(
        broker: Mosquitto, tmp_path: Path, outbox: Outbox, started) -> None:
    broker.stop()
    refusing_broker(broker, tmp_path, alerts_allowed=False)
    broker.start()
    reports: list[dict] = []
    health = Health(DEVICE, on_change=reports.append)
    payloads = [alert(n) for n in range(3)]
    publisher = started(Publisher(config(broker), outbox, health=health))
    health.on_change = lambda report: (reports.append(report), publisher.publish_health(report))
    assert eventually(lambda: publisher.connected)
    with Subscriber(broker.port, f"cm/{DEVICE}/#") as subscriber:
        for payload in payloads:
            publisher.publish_alert(payload)
        assert eventually(lambda: "broker" in health.faults())
        # The fault reaches consumers on the retained health topic; the alerts stay in the outbox.
        assert subscriber.wait_for(lambda s: any(json.loads(p)["problem"] for p in s.on(T.health)))
        report = json.loads(subscriber.on(T.health)[-1])
        validate("health", report)
        assert "refused" in report["faults"]["broker"]["message"] and "Not authorized" in report["faults"]["broker"]["message"]
        assert publisher.pending() == 3 and [json.loads(i.payload)["id"] for i in outbox.pending()] == \
            [p["id"] for p in payloads]
        assert not subscriber.on(T.alert)
    # The operator fixes the ACL and restarts the broker: the kept alerts go out, the fault clears.
    broker.stop()
    refusing_broker(broker, tmp_path, alerts_allowed=True)
    broker.start()
    with Subscriber(broker.port, T.alert) as subscriber:
        assert publisher.wait_for_flush(20)
        assert subscriber.wait_for(lambda s: set(alert_ids(s)) == {p["id"] for p in payloads})
        assert first_occurrences(alert_ids(subscriber)) == [p["id"] for p in payloads]
    assert eventually(lambda: "broker" not in health.faults())
    assert reports[-1]["problem"] is False


def test_over_mqtt_3_1_1_a_refusal_looks_like_a_delivery(broker: Mosquitto, tmp_path: Path, outbox: Outbox,
                                                         started) -> None:
    """Why the docs say to use MQTT 5: a 3.1.1 PUBACK carries no reason code, so nothing can be kept."""
    broker.stop()
    refusing_broker(broker, tmp_path, alerts_allowed=False)
    broker.start()
    with Subscriber(broker.port, f"cm/{DEVICE}/#") as subscriber:
        publisher = started(Publisher(config(broker, "3.1.1"), outbox, health=Health(DEVICE)))
        assert eventually(lambda: publisher.connected)
        publisher.publish_alert(alert(1))
        assert publisher.wait_for_flush(10)  # "acknowledged"
        assert subscriber.publish_acked(f"cm/{DEVICE}/probe", b"")
        assert not subscriber.on(T.alert) and not publisher.health.faults()


def test_the_health_report_is_retained_and_sent_again_after_a_reconnect(broker: Mosquitto, outbox: Outbox,
                                                                        started) -> None:
    health = Health(DEVICE)
    publisher = started(Publisher(config(broker), outbox, health=health))
    health.on_change = publisher.publish_health
    health.fault("clock", "the wall clock reads 1970-01-01: not synchronised")
    broker.stop()  # the report raised while offline is sent on connect
    health.fault("storage", "outbox.sqlite: cannot store (database or disk is full)", source="outbox")
    broker.start()
    with Subscriber(broker.port, T.health) as subscriber:
        assert subscriber.wait_for(lambda s: s.on(T.health) and
                                   set(json.loads(s.on(T.health)[-1])["faults"]) == {"clock", "storage"})
        validate("health", json.loads(subscriber.on(T.health)[-1]))
    with Subscriber(broker.port, T.health) as late:  # Home Assistant starting later still sees it
        assert late.wait_for(lambda s: len(s.messages) == 1) and late.messages[0].retain
        assert json.loads(late.messages[0].payload)["problem"] is True


def test_reconnect_delays_double_up_to_the_cap_each_drawn_at_random_below_it() -> None:
    bounds: list[tuple[float, float]] = []
    delay = ReconnectDelay(0.5, 3.0, draw=lambda low, high: bounds.append((low, high)) or high)
    waits = [delay.next() for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert all(low == 0.5 for low, _ in bounds)
    delay.reset()  # connected: the next outage starts from the shortest wait again
    assert delay.next() == 0.5
    drawn = ReconnectDelay(0.5, 3.0)
    spread = [drawn.next() for _ in range(400)][4:]  # past the doubling: all at the cap's bound
    assert all(0.5 <= wait <= 3.0 for wait in spread)
    assert max(spread) - min(spread) > 1.5  # jittered: a fleet that lost its broker together spreads out


def test_the_broker_connection_sends_small_messages_without_delay(broker: Mosquitto, outbox: Outbox,
                                                                  started) -> None:
    """Nagle's algorithm would hold telemetry back behind the unacknowledged state before it (tens of ms)."""
    publisher = started(Publisher(config(broker), outbox))
    assert eventually(lambda: publisher.connected, 10)
    sock = publisher._client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
