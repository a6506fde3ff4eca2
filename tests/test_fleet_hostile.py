"""10,000 malformed or hostile payloads on the fleet's topics, mixed with 1,000 valid alerts, into a real
`cm-fleet serve` through Debian's Mosquitto, on SQLite and on PostgreSQL: the service keeps running, counts each
bad payload once by its reason in the historian's rejections, logs each reason once (rate-limited), and stores
every valid alert exactly once.

The payloads rotate through every way a message can be wrong that the issue names (bad JSON, wrong schema, huge,
wrong device in the topic) and more: binary junk, deep nesting, wrong types, JSON that is not an object, NaN and
1e400, lone surrogates and NUL, impossible dates, a bad device id in the topic, retained junk. One paho client
sends them, the junk at QoS 0 and the valid alerts at QoS 1, as fast as it can.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from fleet_helpers import (
    contract_alert,
    contract_telemetry,
    historian_url,
    postgres_cluster,  # noqa: F401  (fixture)
    start_fleet,
)
from paho.mqtt.enums import CallbackAPIVersion
from waiting import eventually

from edge.mqtt.publisher import encode
from fleet.config import HistorianConfig, IngestConfig
from fleet.historian import open_historian

pytestmark = pytest.mark.waits
HOSTILE = 10_000
VALID_EVERY = 10  # one valid alert after every 10 bad payloads: 1,000 valid alerts among them
DEVICES = ("pump-1", "pump-2", "fan-3")
MAX_PAYLOAD = IngestConfig.max_payload_bytes
# As deploy/mosquitto/cm.conf: a client that falls behind keeps its messages queued (QoS 0 ones too, while it is
# online), instead of Mosquitto dropping them past its default of 1,000.
BROKER_CONFIG = "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_queued_bytes 0\n"


@dataclass(frozen=True)
class Hostile:
    """One kind of bad payload: what the service must count it as, and how to make the i-th of them."""

    name: str
    reason: str
    make: Callable[[int], tuple[str, bytes]]  # i -> (topic, payload)
    retain: bool = False


def _alert(i: int, device: str = "pump-1") -> dict:
    return contract_alert(device, 100_000 + i)


def _raw(document: object) -> bytes:
    """json.dumps, not the agent's encode: it writes NaN and keeps lone surrogates as escapes, as a hostile
    sender may."""
    return json.dumps(document).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILES = (
    Hostile("truncated JSON", "bad_json", lambda i: ("cm/pump-1/alert", b'{"id": "' + str(i).encode())),
    Hostile("empty", "bad_json", lambda i: ("cm/pump-2/state", b"")),
    Hostile("NaN", "bad_json", lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "score": float("nan")}))),
    Hostile("deep nesting", "bad_json", lambda i: ("cm/pump-1/telemetry", _nested(30_000).encode())),
    Hostile("binary junk", "not_utf8",
            lambda i: ("cm/pump-2/alert", b"\xff" + random.Random(i).randbytes(1 + i % 500))),
    Hostile("huge", "too_large",
            lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "reason": "x" * (MAX_PAYLOAD + i % 1000)}))),
    Hostile("wrong schema", "schema", lambda i: ("cm/pump-1/alert", encode({**_alert(i), "state": "exploded"}))),
    Hostile("wrong types", "schema", lambda i: ("cm/pump-1/alert", encode({**_alert(i), "score": "high"}))),
    Hostile("missing keys", "schema",
            lambda i: ("cm/pump-2/alert", encode({k: v for k, v in _alert(i, "pump-2").items() if k != "model"}))),
    Hostile("not an object", "schema", lambda i: ("cm/fan-3/alert", [b"[1, 2]", b'"alert"', b"null", b"7"][i % 4])),
    Hostile("nesting in a field", "schema",
            lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "reason": json.loads(_nested(500))}))),
    Hostile("impossible date", "schema",
            lambda i: ("cm/pump-1/alert", encode({**_alert(i), "timestamp": "2023-13-45T99:99:99Z"}))),
    Hostile("telemetry of wrong types", "schema",
            lambda i: ("cm/pump-1/telemetry", encode({**contract_telemetry("pump-1", i), "snapshot": "one"}))),
    Hostile("status word", "schema", lambda i: ("cm/pump-2/status", b"sleeping")),
    Hostile("wrong device in the topic", "device_mismatch", lambda i: ("cm/fan-9/alert", encode(_alert(i)))),
    Hostile("bad device id in the topic", "topic", lambda i: (f"cm/pump.{i}/alert", encode(_alert(i)))),
    Hostile("lone surrogate", "bad_value", lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "reason": "\ud800"}))),
    Hostile("NUL", "bad_value", lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "top_channel": "bearing1\0"}))),
    Hostile("integer beyond 64 bits", "bad_value",
            lambda i: ("cm/pump-1/alert", _raw({**_alert(i), "score": 10**30 + i}))),
    # Retained: the broker keeps the last one per topic for later subscribers; the service counts each it receives.
    Hostile("retained junk", "bad_json", lambda i: (f"cm/ghost-{i % 50}/state", b"<retained junk>"), retain=True),
)


def payloads() -> Iterator[tuple[Hostile | None, str, bytes]]:
    """The stream: HOSTILE bad payloads in rotation, a valid alert (None) after every VALID_EVERY of them."""
    for i in range(HOSTILE):
        hostile = HOSTILES[i % len(HOSTILES)]
        yield (hostile, *hostile.make(i))
        if (i + 1) % VALID_EVERY == 0:
            device = DEVICES[i % len(DEVICES)]
            yield None, f"cm/{device}/alert", encode(contract_alert(device, i))


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", config=BROKER_CONFIG) as running:
        yield running


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ten_thousand_hostile_payloads_are_counted_and_every_valid_alert_is_stored(request, backend, tmp_path,
                                                                                  broker):
    url = historian_url(request, backend, tmp_path)
    fleet = start_fleet(request, tmp_path, broker.port, url, extra="[ingest]\nreject_log_interval_s = 3600\n")
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.max_queued_messages_set(0)  # never refuse a publish: the client queues what the socket cannot take yet
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    expected: Counter[str] = Counter()
    valid: list[str] = []
    started = time.monotonic()
    last = None
    for hostile, topic, data in payloads():
        if hostile is None:
            valid.append(json.loads(data)["id"])
            last = sender.publish(topic, data, qos=1)
        else:
            expected[hostile.reason] += 1
            sender.publish(topic, data, qos=0, retain=hostile.retain)
    assert last is not None
    last.wait_for_publish(60)  # QoS 1 and in order: the broker has the whole stream
    reader = open_historian(HistorianConfig(url=url))
    try:
        assert eventually(lambda: sum(reader.rejections().values()) >= HOSTILE and len(reader.alert_ids()) >= len(valid),
                          60), (reader.rejections(), len(reader.alert_ids()), fleet.read_log()[-3000:])
        elapsed = time.monotonic() - started
        assert fleet.running(), fleet.read_log()[-3000:]
        stored = reader.alert_ids()
        assert len(stored) == len(set(stored)) == len(valid) == HOSTILE // VALID_EVERY
        assert set(stored) == set(valid)
        assert reader.rejections() == dict(expected)
        assert set(expected) == {"bad_json", "not_utf8", "too_large", "schema", "device_mismatch", "topic",
                                 "bad_value"}
        log = fleet.read_log()
        lines = [line for line in log.splitlines() if "rejected a payload" in line]
        assert len(lines) == len(expected), lines  # one per reason within the interval: the flood cannot flood the log
        assert "cm/fan-9/alert" in log and "Traceback" not in log
        print(f"\n{backend}: {HOSTILE} hostile + {len(valid)} valid payloads sent and counted in {elapsed:.1f} s")
    finally:
        sender.loop_stop()
        sender.disconnect()
        reader.close()
    assert fleet.stop() == 0, fleet.read_log()[-3000:]
