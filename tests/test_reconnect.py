"""The agent comes back within 2 s of its broker: a real cm-edge, a real Mosquitto stopped and started again on
the same port after an outage long enough for a doubling back-off to have grown past that (the agent's former
paho back-off, 1 s doubling to 60 s, came back 3.0 s after this 12 s outage, its attempts being 1, 3, 7 and
15 s into it; a 20 s outage took 10.9 s). And the reconnect settings of `[mqtt]`: settable, checked, named
in errors.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import TOPIC, Chain
from trained import dropout_cycles, shared_bundle
from waiting import eventually

from edge.config import ConfigError, MqttConfig, load_config

OUTAGE_S = 12.0  # a 1 s doubling back-off tries at 1, 3, 7 and 15 s: 3 s after the broker's return
BACK_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def two_alerts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Healthy, a sensor dropout, healthy again: two alerts (-> sensor_fault, -> normal)."""
    return dropout_cycles(tmp_path_factory.mktemp("reconnect") / "run")


def stored_alerts(outbox: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


@pytest.mark.waits
def test_the_agent_is_back_within_two_seconds_of_the_brokers_return(tmp_path: Path, two_alerts: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    chain = Chain(tmp_path / "agent", broker, shared_bundle())
    with broker, Subscriber(broker.port, f"{TOPIC}/#", persistent=True) as subscriber:
        try:
            chain.start_online(subscriber)
            broker.stop()
            down = time.monotonic()
            assert chain.replay(two_alerts).returncode == 0
            assert eventually(lambda: stored_alerts(chain.tmp_path / "outbox.sqlite") == 2, 60), chain.agent_log()
            time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))  # the outage itself
            onlines = len(subscriber.on(f"{TOPIC}/status"))
            back = time.monotonic()  # before the broker starts: its own start-up counts against the agent
            broker.start()
            # The subscriber reconnects every 0.2 s by itself: what it receives is an upper bound on when
            # the agent's messages reached the broker.
            assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[onlines:].count(b"online") >= 1, 30)
            assert subscriber.wait_for(lambda s: len({json.loads(p)["id"] for p in s.on(f"{TOPIC}/alert")}) >= 2,
                                       30), chain.agent_log()
            online_at = next(t for m, t in zip(subscriber.messages, subscriber.arrivals, strict=True)
                             if m.topic == f"{TOPIC}/status" and m.payload == b"online" and t > back)
            alerts_at = [t for m, t in zip(subscriber.messages, subscriber.arrivals, strict=True)
                         if m.topic == f"{TOPIC}/alert"]
            print(f"broker down {back - down:.1f} s; online {online_at - back:.2f} s and both stored alerts "
                  f"{max(alerts_at) - back:.2f} s after the broker was started again")
            assert online_at - back < BACK_WITHIN_S, chain.agent_log()
            assert max(alerts_at) - back < BACK_WITHIN_S, chain.agent_log()
            assert "retrying every 0.5-1.5 s" in chain.agent_log()
            assert chain.stop_agent() == 0
        finally:
            chain.kill_agent()


def write(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'device_id = "pi"\n[serial]\nport = "/dev/ttyACM0"\n[model]\nbundle = "bundle"\n'
                    f'[mqtt]\nhost = "broker"\n{mqtt}\n')
    return path


def test_the_reconnect_delays_are_settable_in_the_mqtt_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).mqtt == MqttConfig(host="broker", device_id="pi", reconnect_min=0.5,
                                                                reconnect_max=1.5)
    config = load_config(write(tmp_path, "reconnect_min = 2\nreconnect_max = 30.5")).mqtt
    assert (config.reconnect_min, config.reconnect_max) == (2.0, 30.5)


@pytest.mark.parametrize(("lines", "error"), [
    ("reconnect_min = 0", "mqtt.reconnect_min: expected a positive number, got 0"),
    ("reconnect_max = -1", "mqtt.reconnect_max: expected a positive number, got -1"),
    ('reconnect_max = "10s"', "mqtt.reconnect_max: expected a finite number, got '10s'"),
    ("reconnect_min = 5\nreconnect_max = 2", "mqtt.reconnect_max: expected at least mqtt.reconnect_min (5 s), got 2"),
    ("reconnect_max = 0.25", "mqtt.reconnect_max: expected at least mqtt.reconnect_min (0.5 s), got 0.25"),
    ("reconect_max = 1", "reconect_max"),
])
def test_bad_reconnect_delays_are_refused_naming_the_file_and_key(tmp_path: Path, lines: str, error: str) -> None:
    path = write(tmp_path, lines)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value) and error in str(raised.value)
