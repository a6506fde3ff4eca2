"""`cm-fleet simulate`: many light virtual devices in one process, speaking the agent's MQTT contract.

Each device is a gmqtt client on one asyncio loop (10,000 of them fit in ~220 MB; one paho client per device
costs about 3x the CPU) and behaves as `edge.mqtt.publisher` does towards the broker:
- `status`: `online` retained QoS 1 on every connect, `offline` as the last will and on a clean stop;
- `state` retained QoS 1 after every transition, `health` retained QoS 1 on connect and every health interval;
- `alert` QoS 1: every transition's alert stays pending until the broker's PUBACK and is published again on
  every (re)connect until then, as the agent's outbox does: never dropped, at most sent twice;
- `telemetry` QoS 0 at the cadence; while disconnected it is dropped and counted, as the agent does.
Payloads are built by edge.mqtt.payloads, so they are the agent's own. Reconnects wait a random delay in
[reconnect_min, reconnect_max]: a broker that comes back is not stampeded by every device at once.

At the end it writes a summary (counts, time until every device was connected, each outage and how long until
every device was back) and, if asked, the ledger of every alert (id, device, created_us) for a benchmark or a
test to compare with the historian.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import resource
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gmqtt
import numpy as np
from gmqtt.storage import PersistentStorage

from edge.ingest.clock import iso_time
from edge.mqtt.health import Health
from edge.mqtt.payloads import ModelRef, alert, state, telemetry
from edge.mqtt.publisher import OFFLINE, ONLINE, encode, topics
from edge.scoring.detector import State, Transition
from edge.scoring.reading import Reading
from fleet.config import DEFAULT_TOPIC_PREFIX

log = logging.getLogger(__name__)

CHANNELS = ("bearing1", "bearing2")
THRESHOLDS = (0.2, 0.4)  # warning, alarm
MODEL = ModelRef("simulated", hashlib.sha256(b"cm-fleet simulate").hexdigest())
CYCLE = (State.NORMAL, State.WARNING, State.ALARM)  # each transition moves to the next state
SCORES = {State.NORMAL: 0.05, State.WARNING: 0.3, State.ALARM: 0.6}
COUNTERS = ("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped", "snapshots",
            "snapshots_discarded", "alerts_pending", "telemetry_dropped")
FDS_SPARE = 256  # file descriptors beyond one per device: the loop, logs, the ledger
# Where each snapshot's own values go in a device's telemetry template (built once per state by edge's code):
# building and encoding the whole payload every second is most of the simulator's CPU at 10,000 devices.
TIME_MARK, SNAPSHOT_MARK, PENDING_MARK = "@time@", -7_770_001, -7_770_002
MARKS = re.compile(rb'"@time@"|-7770001|-7770002')


class _Clock:
    """iso_time's text (edge.ingest.clock, millisecond precision), the date part formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, now_us: int) -> bytes:
        second, rest = divmod(now_us, 1_000_000)
        if second != self._second:
            self._second, self._prefix = second, iso_time(second * 1_000_000)[:-4]  # "...:05." of "...:05.000Z"
        return f'"{self._prefix}{rest // 1000:03d}Z"'.encode()


CLOCK = _Clock()


class SimulationError(ValueError):
    """The simulation cannot start (a bad option, an unreadable credentials file); the message names it."""


@dataclass(frozen=True)
class SimulationConfig:
    devices: int
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    id_prefix: str = "sim"  # device ids are {id_prefix}-{index:05d}
    telemetry_interval_s: float = 1.0
    alert_interval_s: float = 60.0  # each device's mean time between state transitions (each one alert)
    health_interval_s: float = 300.0
    duration_s: float | None = None  # None: until SIGTERM or SIGINT
    drain_timeout_s: float = 60.0  # at the end, how long to wait for pending alerts' PUBACKs
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 2.0
    connect_concurrency: int = 200  # connections being set up at once (the broker's listen backlog)
    keepalive_s: int = 60
    credentials: str | None = None  # a file of device_id:password lines; the username is the device id
    seed: int = 1


@dataclass
class Tally:
    alerts_sent: int = 0  # transitions, each one alert
    alerts_acked: int = 0
    alert_publishes: int = 0  # first sends and sends again after a reconnect
    telemetry_sent: int = 0
    telemetry_dropped: int = 0  # while disconnected
    connects: int = 0
    disconnects: int = 0


@dataclass
class Outage:
    started_s: float  # since the simulation started
    devices_lost: int = 0
    all_back_s: float | None = None  # since the outage started


@dataclass
class Summary:
    devices: int
    fd_limit: int
    tally: Tally = field(default_factory=Tally)
    all_connected_s: float | None = None  # since the start, until every device first was connected
    outages: list[Outage] = field(default_factory=list)
    alerts_pending: int = 0  # at the end: not acknowledged within the drain timeout
    duration_s: float = 0.0


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to `needed` (up to the hard limit); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    log.info("raised the open-file limit from %d to %d (%d devices need %d)", soft, target, needed - FDS_SPARE, needed)
    if target < needed:
        log.warning("the open-file hard limit %d is below the %d needed: raise it (ulimit -Hn, LimitNOFILE=) "
                    "or simulate fewer devices", hard, needed)
    return target


def read_credentials(path: str) -> dict[str, str]:
    """device_id:password lines (the plain form that `mosquitto_passwd -U` hashes in place)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SimulationError(f"{path}: cannot read the credentials: {error.strerror}") from None
    credentials: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SimulationError(f"{path}: line {number}: expected device_id:password")  # never echo a secret
        credentials[user] = password
    return credentials


class AckLedger(PersistentStorage):
    """gmqtt's store of unacknowledged QoS 1 packets, telling the device which of its alerts the broker took.

    gmqtt stores each QoS 1 PUBLISH by packet id as it sends it and removes it on the PUBACK: this store maps
    the packet id of each alert to the alert's id on the way in and reports it on the way out."""

    def __init__(self, on_ack: Callable[[str], None]) -> None:
        super().__init__()
        self.on_ack = on_ack
        self.sending: str | None = None  # the alert id being published right now (publish is synchronous)
        self._alerts: dict[int, str] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if self.sending is not None:
            self._alerts[mid] = self.sending
            self.sending = None

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        alert_id = self._alerts.pop(mid, None)
        if alert_id is not None:
            self.on_ack(alert_id)

    def clear(self) -> None:
        """A new session: what was in flight is forgotten here; the device sends its pending alerts again."""
        super().clear()
        self._alerts.clear()


class VirtualDevice:
    def __init__(self, index: int, fleet: Fleet) -> None:
        config = fleet.config
        self.fleet = fleet
        self.device_id = f"{config.id_prefix}-{index:05d}"
        self.topics = topics(config.topic_prefix, self.device_id)
        self.random = random.Random(config.seed * 1_000_003 + index)
        self.state = State.NORMAL
        self.since_us = time.time_ns() // 1000
        self.snapshot = 0
        self.connected = False
        self.pending: OrderedDict[str, bytes] = OrderedDict()  # alert id -> payload, until the PUBACK
        self._telemetry = self._telemetry_template()
        self.health = Health(self.device_id)
        self.ledger = AckLedger(self._acked)
        will = gmqtt.Message(self.topics.status, OFFLINE, qos=1, retain=True)
        self.client = gmqtt.Client(self.device_id, clean_session=True, will_message=will,
                                   persistent_storage=self.ledger)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        password = fleet.credentials.get(self.device_id) if fleet.credentials is not None else None
        if fleet.credentials is not None and password is None:
            raise SimulationError(f"{config.credentials}: no password for {self.device_id}")
        if password is not None:
            self.client.set_auth_credentials(self.device_id, password)

    # -- connection --------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """The first connection, tried again (with the jittered delay) until it succeeds; later ones are gmqtt's."""
        config = self.fleet.config
        while not self.fleet.stopping.is_set():
            self._jitter()
            try:
                await self.client.connect(config.host, config.port, keepalive=config.keepalive_s,
                                          version=gmqtt.constants.MQTTv50)
                return
            except Exception as error:  # refused, reset, timed out: the same answer, try again later
                log.debug("%s: connect failed: %s", self.device_id, error)
                await asyncio.sleep(self.client.reconnect_delay)

    def _jitter(self) -> None:
        config = self.fleet.config
        self.client.reconnect_delay = self.random.uniform(config.reconnect_min_s, config.reconnect_max_s)

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        self.connected = True
        self.fleet.connected(self)
        self._publish(self.topics.status, ONLINE, qos=1, retain=True)
        self._publish(self.topics.health, encode(self.health.payload()), qos=1, retain=True)
        self._publish_state(time.time_ns() // 1000)  # the current state, retained, as the agent does at start
        for alert_id, payload in list(self.pending.items()):  # not acknowledged yet: send again, same id
            self._publish_alert(alert_id, payload)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        if self.connected:
            self.connected = False
            self.fleet.disconnected(self)
        self._jitter()  # read by gmqtt's reconnect after this callback

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def _publish_alert(self, alert_id: str, payload: bytes) -> None:
        self.ledger.sending = alert_id
        try:
            self._publish(self.topics.alert, payload, qos=1)
        finally:
            self.ledger.sending = None
        self.fleet.summary.tally.alert_publishes += 1

    def _acked(self, alert_id: str) -> None:
        if self.pending.pop(alert_id, None) is not None:
            self.fleet.summary.tally.alerts_acked += 1

    # -- behaviour ---------------------------------------------------------------------------------------
    def reading(self, now_us: int) -> Reading:
        score = SCORES[self.state] * self.random.uniform(0.9, 1.1)
        return Reading(capture_time_us=now_us, snapshot=self.snapshot, features=np.array([0.08, 0.09]),
                       score=score, channel_errors=np.array([score, score / 2]), state=self.state, reason=None)

    def _telemetry_template(self) -> tuple[list[bytes], list[bytes]]:
        """The agent's telemetry for the current state, cut where each snapshot's time and counters go."""
        counters = dict.fromkeys(COUNTERS, 0) | {"snapshots": SNAPSHOT_MARK, "alerts_pending": PENDING_MARK}
        payload = telemetry(self.device_id, self.reading(0), CHANNELS, counters) | {"timestamp": TIME_MARK,
                                                                                    "snapshot": SNAPSHOT_MARK}
        text = encode(payload)
        return MARKS.split(text), MARKS.findall(text)

    def telemetry(self, now_us: int) -> bytes:
        parts, marks = self._telemetry
        values = {b'"@time@"': CLOCK.iso(now_us), b"-7770001": str(self.snapshot).encode(),
                  b"-7770002": str(len(self.pending)).encode()}
        out = [parts[0]]
        for mark, part in zip(marks, parts[1:]):
            out += (values[mark], part)
        return b"".join(out)

    def tick(self, alert_probability: float, producing: bool) -> None:
        """One snapshot: telemetry, and with the given probability a transition (an alert and a new state)."""
        now_us = time.time_ns() // 1000
        self.snapshot += 1
        tally = self.fleet.summary.tally
        if producing and self.random.random() < alert_probability:
            self.transition(now_us)
        if self.connected:
            self._publish(self.topics.telemetry, self.telemetry(now_us), qos=0)
            tally.telemetry_sent += 1
        else:
            tally.telemetry_dropped += 1

    def transition(self, now_us: int) -> None:
        previous, self.state = self.state, CYCLE[(CYCLE.index(self.state) + 1) % len(CYCLE)]
        self.since_us = now_us
        self._telemetry = self._telemetry_template()
        reading = self.reading(now_us)
        event = alert(self.device_id, Transition(self.state, previous, None), reading, CHANNELS, THRESHOLDS, MODEL)
        payload = encode(event)
        self.pending[event["id"]] = payload
        self.fleet.sent(event["id"], self.device_id, now_us)
        if self.connected:
            self._publish_alert(event["id"], payload)
            self._publish_state(now_us)

    def _publish_state(self, now_us: int) -> None:
        payload = state(self.device_id, self.reading(now_us), self.since_us, CHANNELS, MODEL)
        self._publish(self.topics.state, encode(payload), qos=1, retain=True)

    def publish_health(self) -> None:
        if self.connected:
            self._publish(self.topics.health, encode(self.health.payload()), qos=1, retain=True)

    async def run(self) -> None:
        config = self.fleet.config
        loop = asyncio.get_running_loop()
        interval = config.telemetry_interval_s
        probability = interval / config.alert_interval_s
        await asyncio.sleep(self.random.uniform(0, interval))  # spread the devices over the interval
        due = loop.time()
        health_due = due + config.health_interval_s
        while not self.fleet.stopping.is_set():
            self.tick(probability, producing=not self.fleet.draining)
            if loop.time() >= health_due:
                self.publish_health()
                health_due += config.health_interval_s
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def stop(self) -> None:
        if self.connected:
            self._publish(self.topics.status, OFFLINE, qos=1, retain=True)
        try:
            await self.client.disconnect()
        except Exception as error:  # already gone: nothing to close
            log.debug("%s: disconnect: %s", self.device_id, error)


class Fleet:
    def __init__(self, config: SimulationConfig) -> None:
        if config.devices < 1:
            raise SimulationError(f"--devices: expected >= 1, got {config.devices}")
        if not 0 <= config.reconnect_min_s <= config.reconnect_max_s:
            raise SimulationError(f"--reconnect-min/--reconnect-max: expected 0 <= min <= max, got "
                                  f"{config.reconnect_min_s}, {config.reconnect_max_s}")
        self.config = config
        self.credentials = read_credentials(config.credentials) if config.credentials else None
        self.summary = Summary(config.devices, raise_fd_limit(config.devices + FDS_SPARE))
        self.ledger: list[tuple[str, str, int]] = []  # (alert id, device, created_us)
        self.stopping = asyncio.Event()
        self.draining = False
        self._online = 0
        self._started = time.monotonic()
        self.devices = [VirtualDevice(i, self) for i in range(config.devices)]

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def sent(self, alert_id: str, device_id: str, created_us: int) -> None:
        self.summary.tally.alerts_sent += 1
        self.ledger.append((alert_id, device_id, created_us))

    def connected(self, device: VirtualDevice) -> None:
        self._online += 1
        self.summary.tally.connects += 1
        if self._online == len(self.devices):
            summary = self.summary
            if summary.all_connected_s is None:
                summary.all_connected_s = round(self._elapsed(), 3)
                log.info("all %d devices connected after %.1f s", self._online, summary.all_connected_s)
            elif summary.outages and summary.outages[-1].all_back_s is None:
                outage = summary.outages[-1]
                outage.all_back_s = round(self._elapsed() - outage.started_s, 3)
                log.info("all %d devices back %.1f s after the outage began", self._online, outage.all_back_s)

    def disconnected(self, device: VirtualDevice) -> None:
        self._online -= 1
        self.summary.tally.disconnects += 1
        outages = self.summary.outages
        if self.summary.all_connected_s is not None and not self.stopping.is_set():
            if not outages or outages[-1].all_back_s is not None:
                outages.append(Outage(round(self._elapsed(), 3)))
                log.warning("devices are losing their connection")
            outages[-1].devices_lost += 1

    @property
    def online(self) -> int:
        return self._online

    def pending(self) -> int:
        return sum(len(device.pending) for device in self.devices)

    async def run(self) -> Summary:
        config = self.config
        gate = asyncio.Semaphore(config.connect_concurrency)

        async def connect(device: VirtualDevice) -> None:
            async with gate:
                await device.connect()

        await asyncio.gather(*(connect(device) for device in self.devices))
        runs = [asyncio.create_task(device.run()) for device in self.devices]
        reporter = asyncio.create_task(self._report())
        try:
            await asyncio.wait_for(self.stopping.wait(), config.duration_s)
        except TimeoutError:
            pass
        await self._drain()
        self.stopping.set()
        reporter.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await asyncio.gather(*(device.stop() for device in self.devices), return_exceptions=True)
        self.summary.alerts_pending = self.pending()
        self.summary.duration_s = round(self._elapsed(), 3)
        return self.summary

    async def _drain(self) -> None:
        """No new alerts; wait until the pending ones are acknowledged (or the drain timeout)."""
        self.draining = True
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.pending():
            log.error("%d alerts still pending after %.0f s", self.pending(), self.config.drain_timeout_s)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(10)
            tally = self.summary.tally
            log.info("%d/%d connected; alerts sent %d, acknowledged %d; telemetry sent %d, dropped %d",
                     self._online, len(self.devices), tally.alerts_sent, tally.alerts_acked, tally.telemetry_sent,
                     tally.telemetry_dropped)


def simulate(config: SimulationConfig, summary_path: str | None = None, ledger_path: str | None = None) -> Summary:
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # one line per lost connection, times 10,000
    loop = asyncio.new_event_loop()
    fleet = Fleet(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, fleet.stopping.set)
    try:
        summary = loop.run_until_complete(fleet.run())
    finally:
        loop.close()
    if ledger_path is not None:
        with open(ledger_path, "w", encoding="utf-8") as out:
            for alert_id, device_id, created_us in fleet.ledger:
                out.write(json.dumps({"id": alert_id, "device_id": device_id, "created_us": created_us}) + "\n")
    document = json.dumps(asdict(summary), indent=2)
    if summary_path is not None:
        Path(summary_path).write_text(document + "\n", encoding="utf-8")
    log.info("summary: %s", json.dumps(asdict(summary)))
    return summary
