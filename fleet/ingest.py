"""Ingest: every agent's messages from MQTT into the historian, each alert exactly once.

    agents -> broker -> $share/{group}/{prefix}/+/{kind} -> paho (network thread) -> queue -> writer thread
                                                                                    check, store, commit, PUBACK

- MQTT 5 with a persistent session (clean_start False and a session expiry): while this service is down the
  broker queues the QoS 1 messages (alerts, state, status, health) for it and delivers them when it returns.
- A shared subscription: several instances with the same `group` split the stream (each its own client id).
  `group = ""` subscribes plainly (one instance): Debian's Mosquitto 2.0.11 restores a persistent session's plain
  subscriptions after its restart, not its shared ones (deploy/plant-group.md).
- Manual acknowledgement (paho 2's `manual_ack`): a message is PUBACKed only after the transaction that stored
  it committed, so a crash or SIGKILL between receiving and storing leaves it unacknowledged and the broker
  sends it again. What arrives twice is stored once: alerts by their id, telemetry by (device, time).
- A payload that fails a check (fleet.payloads) is counted in the historian and logged, rate-limited, and
  acknowledged with its batch: it never stops the service nor holds back the messages around it.
- Receive Maximum bounds how many unacknowledged messages the broker sends ahead, and the queue is bounded:
  while the database is slow or down the broker holds the backlog, not this process's memory.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.mqtt.publisher import read_password
from fleet.config import FleetMqttConfig, IngestConfig
from fleet.historian.store import Historian, Rejection, now_us
from fleet.payloads import KINDS, Accepted, Rejected, Validator

log = logging.getLogger(__name__)

RETRY_S = 1.0  # after a failed commit, the batch is tried again this often (nothing is acknowledged meanwhile)
_paho = logging.getLogger(f"{__name__}.paho")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int


def subscriptions(config: FleetMqttConfig) -> list[tuple[str, int]]:
    share = f"$share/{config.group}/" if config.group else ""  # "": one instance, a plain subscription
    return [(f"{share}{config.topic_prefix}/+/{kind}", 1) for kind in KINDS]


class RejectLog:
    """One log line per rejection reason per interval, with how many were not logged since."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def __call__(self, rejection: Rejection) -> None:
        moment = time.monotonic()
        last = self._last.get(rejection.reason)
        if last is not None and moment - last < self.interval_s:
            self._unlogged[rejection.reason] += 1
            return
        self._last[rejection.reason] = moment
        more = self._unlogged.pop(rejection.reason, 0)
        since = f" ({more} more since the last report)" if more else ""
        log.warning("rejected a payload on %r: %s: %s%s", rejection.topic[:200], rejection.reason, rejection.detail, since)


@dataclass
class Counts:
    """What this process took in since it started (the historian keeps the rejections' totals)."""

    stored: Counter[str] = field(default_factory=Counter)  # accepted messages by kind
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    batches: int = 0


class Ingest:
    def __init__(self, mqtt_config: FleetMqttConfig, config: IngestConfig, historian: Historian) -> None:
        self.mqtt_config = mqtt_config
        self.config = config
        self.historian = historian
        self.validator = Validator(mqtt_config.topic_prefix, config.max_payload_bytes)
        self.counts = Counts()
        self.connected = threading.Event()
        # Connects on which the broker had no session of this service: the first, or a broker that lost its state
        # (and with it, likely, the retained messages): the rollout scheduler then publishes its own again.
        self.new_sessions = 0
        self._queue: queue.Queue[Received] = queue.Queue(maxsize=4 * config.batch_size)
        self._reject_log = RejectLog(config.reject_log_interval_s)
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="fleet-writer", daemon=True)
        self._client = self._make_client()

    # -- MQTT --------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        config = self.mqtt_config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.session_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        client.suppress_exceptions = True  # an exception in a callback must not kill the network thread
        if _paho.isEnabledFor(logging.DEBUG):  # paho formats every packet's line for on_log: ~10% of its thread
            client.on_log = lambda c, u, level, text: _paho.debug("%s", text)
        if config.username is not None:
            password = read_password(config.password_file) if config.password_file else None
            client.username_pw_set(config.username, password)
        if config.tls_ca or config.tls_cert:
            client.tls_set(ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key)
        client.reconnect_delay_set(config.reconnect_min, config.reconnect_max)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.mqtt_config.session_expiry_s
        properties.ReceiveMaximum = min(65535, 2 * self.config.batch_size)
        return properties

    def start(self) -> None:
        self._writer.start()
        config = self.mqtt_config
        self._client.connect_async(config.host, config.port, config.keepalive, clean_start=False,
                                   properties=self._connect_properties())
        self._client.loop_start()

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> bool:
        """Publish on this service's one connection (QoS 1, retained); true once the broker acknowledged it. One
        connection per service: under deploy/'s broker config the username is the client id, so a second
        connection with the same credentials would end this one."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):  # not queued: disconnected, or the queue is full
            return False
        return info.is_published()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch being written, then disconnect: the session (and what is not yet acknowledged) stays
        with the broker for the next start."""
        self._stopping.set()
        self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("the broker %s:%d refused the connection: %s", self.mqtt_config.host, self.mqtt_config.port, reason)
            return
        # Subscribing again on a kept session is harmless and keeps the subscriptions equal to the config.
        client.subscribe(subscriptions(self.mqtt_config))
        log.info("connected to %s:%d (session %s)", self.mqtt_config.host, self.mqtt_config.port,
                 "resumed" if flags.session_present else "new")
        if not flags.session_present:
            self.new_sessions += 1
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        item = Received(message.topic, bytes(message.payload), message.mid, message.qos)
        # A full queue holds paho's network thread, so the broker holds the backlog (TCP and Receive Maximum).
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- writing -----------------------------------------------------------------------------------------
    def _next_batch(self) -> list[Received]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self._write(batch)

    def _write(self, batch: list[Received]) -> None:
        accepted: list[Accepted] = []
        rejected: list[Rejection] = []
        for item in batch:
            outcome = self.validator.check(item.topic, item.payload)
            if isinstance(outcome, Rejected):
                rejected.append(Rejection(outcome.reason, item.topic, outcome.detail))
            else:
                accepted.append(outcome)
        if not self._commit(accepted, rejected):
            return  # stopping: nothing of this batch was acknowledged, so the broker sends it again
        for item in batch:
            if item.qos > 0:
                self._client.ack(item.mid, item.qos)
        self._count(accepted, rejected)

    def _commit(self, accepted: list[Accepted], rejected: list[Rejection]) -> bool:
        """Store the batch, retrying on a new connection until it is stored; False if stopped first."""
        failures = 0
        while True:
            try:
                self.historian.store(accepted, rejected, now_us())
                if failures:
                    log.info("%s: storing again after %d failed attempts", self.historian.where, failures)
                return True
            except Exception as error:  # the database's errors differ by driver; all mean "not stored"
                failures += 1
                if failures == 1:  # one line per outage, not one per retry
                    log.error("%s: cannot store %d messages, retrying every %.0f s: %s", self.historian.where,
                              len(accepted) + len(rejected), RETRY_S, error)
            if self._stopping.wait(RETRY_S):
                return False
            try:
                self.historian.reconnect()
            except Exception as error:  # still down: the next round tries again
                log.debug("%s: reconnect failed: %s", self.historian.where, error)

    def _count(self, accepted: list[Accepted], rejected: list[Rejection]) -> None:
        self.counts.batches += 1
        self.counts.stored.update(message.kind for message in accepted)
        self.counts.rejected.update(rejection.reason for rejection in rejected)
        for rejection in rejected:
            self._reject_log(rejection)
