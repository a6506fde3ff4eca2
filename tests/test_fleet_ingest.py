"""`cm-fleet serve` with real parts: Debian's Mosquitto, the agent's own publisher and outbox (edge.mqtt) sending
alerts built by the agent's code, and the historian on SQLite and on a private PostgreSQL cluster.

- The service is stopped (SIGTERM) for a while and killed (SIGKILL) mid-run: every alert is stored exactly once.
- A few hundred malformed or hostile payloads mixed with valid alerts: the service keeps running, counts them by
  reason, logs them rate-limited, and stores every valid alert.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from fleet_helpers import (
    contract_alert,
    contract_state,
    historian_url,
    postgres_cluster,  # noqa: F401  (fixture)
    start_fleet,
)
from paho.mqtt.enums import CallbackAPIVersion
from waiting import eventually

from edge.config import MqttConfig
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher, encode
from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian

pytestmark = pytest.mark.waits


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


class Agent:
    """The agent's MQTT side as it runs on a Pi: edge's Publisher with its SQLite outbox."""

    def __init__(self, tmp_path, broker: Mosquitto, device_id: str) -> None:
        self.device_id = device_id
        config = MqttConfig(host="127.0.0.1", device_id=device_id, port=broker.port, reconnect_min=0.2, reconnect_max=0.5)
        self.publisher = Publisher(config, Outbox(tmp_path / f"{device_id}-outbox.sqlite"))
        self.published: list[str] = []

    def __enter__(self) -> Agent:
        self.publisher.start()
        assert eventually(lambda: self.publisher.connected, 15)
        return self

    def __exit__(self, *exc: object) -> None:
        self.publisher.stop()
        self.publisher.outbox.close()

    def alert(self, i: int) -> None:
        payload = contract_alert(self.device_id, i)
        self.publisher.publish_alert(payload)
        self.published.append(payload["id"])


def open_reader(url: str) -> Historian:
    return open_historian(HistorianConfig(url=url))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_alert_is_stored_exactly_once_across_a_stop_and_a_sigkill(request, backend, tmp_path, broker):
    url = historian_url(request, backend, tmp_path)
    fleet = start_fleet(request, tmp_path, broker.port, url)
    reader = open_reader(url)
    done = threading.Event()
    with Agent(tmp_path, broker, "pump-1") as pump, Agent(tmp_path, broker, "fan-2") as fan:
        def publish() -> None:
            i = 0
            while not done.is_set():
                pump.alert(i)
                fan.alert(i)
                i += 1
                time.sleep(0.01)

        sender = threading.Thread(target=publish)
        sender.start()
        try:
            # Each phase lasts until the stream has moved on by a condition, not for a fixed time.
            def stored_more() -> Callable[[], bool]:
                before = len(reader.alert_ids())
                return lambda: len(reader.alert_ids()) > before + 20

            def published_more(count: int) -> Callable[[], bool]:
                before = len(pump.published)
                return lambda: len(pump.published) > before + count

            assert eventually(stored_more(), 30), fleet.read_log()
            assert fleet.stop() == 0, fleet.read_log()
            assert eventually(published_more(50), 30)  # alerts published now wait in the service's session
            fleet.start()
            assert eventually(stored_more(), 30), fleet.read_log()
            fleet.kill()  # mid-batch, perhaps: whatever was not committed was not acknowledged either
            assert eventually(published_more(50), 30)
            fleet.start()
            assert eventually(stored_more(), 30), fleet.read_log()
        finally:
            done.set()
            sender.join()
        pump.publisher.publish_state(contract_state("pump-1", 9, since_i=8))
        assert eventually(lambda: pump.publisher.pending() == 0 and fan.publisher.pending() == 0, 20)
        published = set(pump.published) | set(fan.published)
        assert eventually(lambda: len(reader.alert_ids()) >= len(published), 30), fleet.read_log()
        stored = reader.alert_ids()
        assert len(stored) == len(set(stored)) == len(published) and set(stored) == published
        assert reader.alerts("pump-1")[-1] == contract_alert("pump-1", len(pump.published) - 1)
        assert eventually(lambda: any(m.state_json == contract_state("pump-1", 9, since_i=8) for m in reader.machines()))
        assert "session resumed" in fleet.read_log()
        assert reader.rejections() == {}
    assert fleet.stop() == 0
    reader.close()


def hostile_payloads(i: int) -> tuple[str, bytes]:
    """The i-th bad message: a rotation through every way a payload can be wrong."""
    alert = contract_alert("pump-1", 10_000 + i)
    choices = [
        ("cm/pump-1/alert", b"{\"id\": "),                                   # bad JSON
        ("cm/pump-1/alert", encode({**alert, "state": "exploded"})),         # wrong schema
        ("cm/pump-1/telemetry", b"{\"x\": [" + b"1," * 40_000 + b"1]}"),    # huge
        ("cm/fan-9/alert", encode(alert)),                                   # the topic's device is not the payload's
        ("cm/pump-1/state", b"\xff" * 10),                                   # not UTF-8
        ("cm/pump-1/status", b"sleeping"),                                   # not a status word
    ]
    return choices[i % len(choices)]


def test_malformed_payloads_are_counted_and_never_stop_the_valid_alerts(request, tmp_path, broker):
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    fleet = start_fleet(request, tmp_path, broker.port, url, extra="[ingest]\nreject_log_interval_s = 3600\n")
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    valid, bad = [], 0
    for i in range(600):
        if i % 4 == 0:
            payload = contract_alert("pump-1", i)
            valid.append(payload["id"])
            sender.publish("cm/pump-1/alert", encode(payload), qos=1)
        else:
            topic, data = hostile_payloads(bad)
            sender.publish(topic, data, qos=bad % 2)
            bad += 1
    last = contract_alert("pump-1", 9999)
    info = sender.publish("cm/pump-1/alert", encode(last), qos=1)
    info.wait_for_publish(10)
    reader = open_reader(url)
    assert eventually(lambda: sum(reader.rejections().values()) == bad and len(reader.alert_ids()) == len(valid) + 1,
                      30), (reader.rejections(), len(reader.alert_ids()), fleet.read_log())
    assert fleet.running()
    assert set(reader.alert_ids()) == {*valid, last["id"]}
    assert reader.rejections() == {"bad_json": 75, "schema": 150, "too_large": 75, "device_mismatch": 75, "not_utf8": 75}
    log = fleet.read_log()
    lines = [line for line in log.splitlines() if "rejected a payload" in line]
    assert len(lines) == 5, lines  # one per reason within the interval: a flood cannot flood the log
    assert "cm/fan-9/alert" in log and "device_mismatch" in log
    sender.loop_stop()
    sender.disconnect()
    assert fleet.stop() == 0
    assert json.dumps(reader.rejections())  # the totals outlive the process
    reader.close()


def test_a_database_outage_holds_the_alerts_back_and_loses_none(request, tmp_path, broker):
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    fleet = start_fleet(request, tmp_path, broker.port, url)
    with Agent(tmp_path, broker, "pump-1") as pump:
        for i in range(20):
            pump.alert(i)
        cluster.pause()
        try:
            for i in range(20, 120):
                pump.alert(i)  # received by cm-fleet, not storable, so not acknowledged
            assert eventually(lambda: "cannot store" in fleet.read_log(), 15), fleet.read_log()
        finally:
            cluster.resume()
        assert eventually(lambda: pump.publisher.pending() == 0, 20)
        reader = open_reader(url)
        assert eventually(lambda: len(reader.alert_ids()) >= 120, 30), fleet.read_log()
        assert sorted(reader.alert_ids()) == sorted(pump.published) and fleet.running()
        assert "storing again" in fleet.read_log()
        reader.close()
    assert fleet.stop() == 0
