"""MQTT publishing (paho-mqtt 2.x) with the outbox as the single source of truth for alerts.

Topics under `{prefix}/{device_id}/` follow Home Assistant's conventions: `status` is the retained
availability ("online", and "offline" as the last will), `state` the retained health state, `alert` one
QoS 1 event per state transition, `telemetry` one QoS 0 record per snapshot, `health` the retained
agent-level faults (edge/mqtt/health.py).

Why paho's own queue is not trusted with alerts: paho keeps unacknowledged QoS 1 messages in memory only
and re-sends them after a reconnect, so a restart of the agent loses them, and a message published while
the link is down but before paho noticed sits in paho's queue next to the outbox copy. So every alert is
committed to the outbox first; on each (re)connect paho's in-flight queue is dropped (`drop_out_messages`)
and the outbox is re-published in order, and an alert leaves the outbox only in `on_publish`, i.e. after
the broker's PUBACK. The session is clean on every connect (we subscribe to nothing, and a persistent
session would only make the broker hold state the outbox already holds). The price is an occasional
duplicate after a reconnect (an alert whose PUBACK was lost); consumers de-duplicate by the alert's `id`.

A refusal is not an acknowledgement. On MQTT 5 the broker answers a publish it will not deliver (e.g. its
ACL denies the topic) with a PUBACK reason code >= 0x80: the alert then stays in the outbox, a `broker`
health fault is raised, and it is re-sent with back-off (and on every reconnect) until the broker takes
it. MQTT 3.1.1 cannot tell: its PUBACK has no reason code, and Mosquitto acknowledges a denied publish as
if it had delivered it, so over 3.1.1 a refused alert is lost without a trace. Use protocol "5".
"""
from __future__ import annotations

import json
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MQTT_PROTOCOLS, MqttConfig
from edge.mqtt.health import LOG_ONLY, FaultSink
from edge.mqtt.outbox import Outbox

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
PROTOCOLS = dict(zip(MQTT_PROTOCOLS, (mqtt.MQTTv5, mqtt.MQTTv311), strict=True))  # load_config accepts no other
REFUSED_RETRY_MIN_S = 10.0  # a refused alert is re-sent after this, doubling up to REFUSED_RETRY_MAX_S
REFUSED_RETRY_MAX_S = 600.0


class PublisherError(ValueError):
    """The MQTT settings cannot be used (e.g. an unreadable password file); the message names it."""


@dataclass(frozen=True)
class Topics:
    status: str
    state: str
    alert: str
    telemetry: str
    health: str


def topics(prefix: str, device_id: str) -> Topics:
    base = f"{prefix}/{device_id}"
    return Topics(status=f"{base}/status", state=f"{base}/state", alert=f"{base}/alert",
                  telemetry=f"{base}/telemetry", health=f"{base}/health")


def drop_in_flight(client: mqtt.Client) -> None:
    """Forget paho's unacknowledged QoS >= 1 messages (the outbox re-sends the ones that matter)."""
    drop = getattr(client, "drop_out_messages", None)
    if drop is not None:  # paho >= 2.2
        drop()
        return
    # paho 2.0 and 2.1 have no public call for it: these are the two lines 2.2's drop_out_messages runs.
    with client._out_message_mutex:
        client._out_messages.clear()


class ReconnectDelay:
    """How long to wait before the next connection attempt: doubling from `shortest` up to `longest`, each
    wait drawn at random between `shortest` and that bound ("full jitter"), so a fleet that lost its
    broker at the same moment does not come back at the same moment. The bound is also the longest time
    between the broker's return and the agent's next attempt."""

    def __init__(self, shortest: float, longest: float, draw: Callable[[float, float], float] = random.uniform) -> None:
        self.shortest = shortest
        self.longest = longest
        self._draw = draw
        self._failures = 0

    def next(self) -> float:
        bound = min(self.longest, self.shortest * 2 ** min(self._failures, 32))
        self._failures += 1
        return self._draw(self.shortest, bound)

    def reset(self) -> None:
        self._failures = 0


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker connection. Without it Nagle's algorithm holds a small publish back until
    the previous one is acknowledged (an alert, then its state, then telemetry: tens of ms each)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket: nothing to tune


@dataclass
class _Refused:
    """An alert the broker refused: when to try again, and how long to wait after that."""

    due: float  # time.monotonic()
    delay: float


def read_password(path: str | Path) -> str:
    """The secret in `path`, without its trailing newline. Errors name the file, never the content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise PublisherError(f"{path}: cannot read the MQTT password file: {reason}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise PublisherError(f"{path}: the MQTT password file is empty")
    return secret


def encode(payload: dict[str, Any]) -> bytes:
    # allow_nan=False: NaN is not JSON, and a consumer choking on it is worse than a clear error here.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


_paho = logging.getLogger(f"{__name__}.paho")


def _paho_log(client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
    # paho reports every failed retry at ERROR; the outage is already logged once by the publisher, so its
    # chatter goes to DEBUG, except an exception raised in one of our callbacks, which is a bug.
    _paho.log(logging.ERROR if text.startswith("Caught exception") else logging.DEBUG, "%s", text)


class Publisher:
    """Publishes the agent's messages; alerts go through the outbox and survive outages and restarts."""

    def __init__(self, config: MqttConfig, outbox: Outbox, health: FaultSink = LOG_ONLY) -> None:
        self.config = config
        self.outbox = outbox
        self.health = health
        self.topics = topics(config.topic_prefix, config.device_id)
        # _send_lock orders alert publishing against the flush in on_connect. _ack_lock guards the mid map
        # and is never held while calling into paho: on_publish runs with paho's message mutex held.
        self._send_lock = threading.Lock()
        self._ack_lock = threading.Condition()
        # paho mid -> (outbox id, or None for a message that is not in the outbox; topic)
        self._in_flight: dict[int, tuple[int | None, str]] = {}
        self._early_acks: dict[int, mqtt.ReasonCode] = {}  # PUBACKs that beat the registration of their mid
        self._refused_topics: set[str] = set()  # non-alert topics the broker refused (logged once each)
        self._online = False
        self._last_state: bytes | None = None
        self._last_health: bytes | None = None
        self._refused: dict[int, _Refused] = {}  # outbox id -> retry plan; guarded by _ack_lock
        self._health_lock = threading.Lock()
        self._unsent_health: bytes | None = None  # the latest report, until the housekeeping thread takes it
        self._housekeeping = threading.Event()  # wakes the housekeeping thread early
        self._stopping = threading.Event()
        self._retrier: threading.Thread | None = None
        self._outage_started: float | None = None  # set while an outage is going on (it was logged once)
        self._failed_attempts = 0
        self._dropped_telemetry = 0
        self._retained: dict[str, bytes] = {}  # e.g. Home Assistant discovery: (re)sent on every connect
        self._listeners: dict[str, Callable[[bytes], None]] = {}  # subscribed on every connect
        self._reconnect = ReconnectDelay(config.reconnect_min, config.reconnect_max)
        self._client = self._make_client()

    # -- setup -------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        config = self.config
        protocol = PROTOCOLS[config.protocol]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id or f"cm-edge-{config.device_id}",
                             protocol=protocol, clean_session=True if protocol == mqtt.MQTTv311 else None)
        # An exception in a callback must not kill the network thread; paho reports it through on_log.
        client.suppress_exceptions = True
        client.on_log = _paho_log
        if config.username is not None:
            password = read_password(config.password_file) if config.password_file else None
            client.username_pw_set(config.username, password)
        if config.tls_ca or config.tls_cert:
            try:
                client.tls_set(ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key)
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                files = ", ".join(f for f in (config.tls_ca, config.tls_cert, config.tls_key) if f)
                raise PublisherError(f"{files}: cannot load the TLS certificates: {error}") from None
            client.tls_insecure_set(config.tls_insecure)
        client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        # paho's own doubling, for a wait no callback of ours precedes; ours replace it (_next_attempt).
        client.reconnect_delay_set(config.reconnect_min, config.reconnect_max)  # type: ignore[arg-type]
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background; retries forever with exponential back-off."""
        kwargs: dict[str, Any] = {"clean_start": True} if PROTOCOLS[self.config.protocol] == mqtt.MQTTv5 else {}
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive, **kwargs)
        self._client.loop_start()
        self._retrier = threading.Thread(target=self._housekeep, name="mqtt-housekeeping", daemon=True)
        self._retrier.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Give in-flight alerts `timeout` seconds, announce "offline", disconnect. Unsent alerts stay stored."""
        if self._online:
            self.wait_for_flush(timeout)
            info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                try:
                    info.wait_for_publish(timeout)
                except RuntimeError:
                    pass  # the connection went away meanwhile; the last will says "offline" instead
        with self._send_lock:
            self._online = False
        self._stopping.set()
        self._housekeeping.set()
        if self._retrier is not None:
            self._retrier.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing --------------------------------------------------------------------------------------
    def publish_alert(self, payload: dict[str, Any]) -> int:
        """Commit the alert to the outbox, then publish it (QoS 1) if connected. Returns its outbox id."""
        data = encode(payload)
        with self._send_lock:
            item_id = self.outbox.add(self.topics.alert, data, qos=1)
            if self._online:
                self._send(self.topics.alert, data, 1, False, item_id)
        return item_id

    def publish_state(self, payload: dict[str, Any]) -> None:
        """Retained QoS 1; while offline only the latest state is kept and sent on the next connect."""
        data = encode(payload)
        with self._send_lock:
            self._last_state = data
            if self._online:
                self._send(self.topics.state, data, 1, True, None)

    def publish_health(self, payload: dict[str, Any]) -> None:
        """Retained QoS 1, like the state: only the latest report matters, sent again on every connect.

        Faults are found with other locks held (the outbox's, paho's on a refusal), so this only hands the
        report to the housekeeping thread, which sends it: no lock-order inversion, no deadlock.
        """
        with self._health_lock:
            self._unsent_health = encode(payload)
        self._housekeeping.set()

    def publish_telemetry(self, payload: dict[str, Any]) -> bool:
        """QoS 0, fire and forget: dropped (and counted) while offline. Returns whether it was sent."""
        data = encode(payload)
        with self._send_lock:
            if self._online:
                self._send(self.topics.telemetry, data, 0, False, None)
                return True
        self._dropped_telemetry += 1
        return False

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 message outside the device's topics, re-sent on every (re)connect."""
        with self._send_lock:
            self._retained[topic] = payload
            if self._online:
                self._send(topic, payload, 1, True, None)

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to `topic` (on every connect); `callback(payload)` runs on paho's network thread."""
        self._listeners[topic] = callback
        if self._online:
            self._client.subscribe(topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        callback = self._listeners.get(message.topic)
        if callback is not None:
            callback(bytes(message.payload))

    def _send(self, topic: str, data: bytes, qos: int, retain: bool, item_id: int | None) -> None:
        """Hand a message to paho and remember which outbox item its mid stands for. Caller holds _send_lock."""
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        with self._ack_lock:
            early = self._early_acks.pop(info.mid, None)
            if early is not None:
                self._settle(item_id, topic, early)
            else:
                self._in_flight[info.mid] = (item_id, topic)

    def _acknowledged(self, item_id: int | None) -> None:
        """Caller holds _ack_lock."""
        if item_id is not None:
            self.outbox.remove(item_id)
            if self._refused.pop(item_id, None) is not None and not self._refused:
                self.health.clear("broker")
            self._ack_lock.notify_all()

    def _housekeep(self) -> None:
        """The publisher's own thread: sends health reports, re-sends refused alerts when due."""
        while not self._stopping.is_set():
            self._housekeeping.wait(0.5)
            self._housekeeping.clear()
            with self._health_lock:
                report, self._unsent_health = self._unsent_health, None
            if report is not None:
                with self._send_lock:
                    self._last_health = report
                    if self._online:
                        self._send(self.topics.health, report, 1, True, None)
            self._retry_refused()

    def _retry_refused(self) -> None:
        """Re-send refused alerts whose back-off expired (a reconnect re-sends them all anyway)."""
        now = time.monotonic()
        with self._ack_lock:
            due = {item_id for item_id, plan in self._refused.items() if plan.due <= now}
            for item_id in due:
                plan = self._refused[item_id]
                plan.due = now + plan.delay
                plan.delay = min(plan.delay * 2, REFUSED_RETRY_MAX_S)
        if not due:
            return
        with self._send_lock:
            if not self._online:
                return
            for item in self.outbox.pending():
                if item.id in due:
                    self._send(item.topic, item.payload, item.qos, item.retain, item.id)

    # -- state -------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._online

    def pending(self) -> int:
        """Alerts stored but not yet acknowledged by the broker."""
        return len(self.outbox)

    @property
    def failed_attempts(self) -> int:
        """Connection attempts that failed since start (diagnostics)."""
        return self._failed_attempts

    @property
    def dropped_telemetry(self) -> int:
        return self._dropped_telemetry

    def wait_for_flush(self, timeout: float) -> bool:
        """Block until the outbox is empty (every alert acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._ack_lock:
            while len(self.outbox) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ack_lock.wait(min(remaining, 0.5))
        return True

    # -- paho callbacks (network thread) -----------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._report_outage(logging.ERROR, f"MQTT broker {self._where()} refused the connection: {reason}"
                                + (" (check mqtt.username and mqtt.password_file)" if "auth" in str(reason).lower()
                                   or "password" in str(reason).lower() else ""))
            return
        with self._send_lock:
            # Whatever paho still holds from the previous connection is also in the outbox (alerts) or
            # superseded (state); re-sending it from paho too would duplicate and could reorder.
            drop_in_flight(client)
            with self._ack_lock:
                self._in_flight.clear()
                self._early_acks.clear()
            self._send(self.topics.status, ONLINE, 1, True, None)
            pending = self.outbox.pending()
            for item in pending:
                self._send(item.topic, item.payload, item.qos, item.retain, item.id)
            if self._last_state is not None:
                self._send(self.topics.state, self._last_state, 1, True, None)
            if self._last_health is not None:
                self._send(self.topics.health, self._last_health, 1, True, None)
            for topic, payload in self._retained.items():
                self._send(topic, payload, 1, True, None)
            for topic in self._listeners:
                client.subscribe(topic, qos=1)
            self._online = True
        self._reconnect.reset()
        if self._outage_started is not None:
            log.info("connected to MQTT broker %s after %.0f s; re-sending %d stored alert(s)", self._where(),
                     time.monotonic() - self._outage_started, len(pending))
        else:
            log.info("connected to MQTT broker %s as %s; %d stored alert(s) to send", self._where(),
                     self.config.username or "anonymous", len(pending))
        self._outage_started = None

    def _next_attempt(self, client: mqtt.Client) -> None:
        """Set paho's wait before its next attempt to our jittered delay. paho calls on_connect_fail and
        on_disconnect before it waits, and a wait set with min == max is exactly that long."""
        delay = self._reconnect.next()
        # paho annotates whole seconds but computes with any number.
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the exception is still the one being handled.
        error = sys.exc_info()[1]
        self._next_attempt(client)
        self._report_outage(logging.WARNING, f"cannot connect to MQTT broker {self._where()}: "
                            f"{error or 'connection failed'}")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, properties: Any) -> None:
        with self._send_lock:
            was_online, self._online = self._online, False
        self._next_attempt(client)
        if was_online and reason.is_failure:
            self._report_outage(logging.WARNING, f"lost the connection to MQTT broker {self._where()}: {reason}")

    def _report_outage(self, level: int, message: str) -> None:
        """Log the first problem of an outage at `level`, the retries at DEBUG: one line per outage."""
        self._failed_attempts += 1
        if self._outage_started is not None:
            log.debug("%s", message)
            return
        self._outage_started = time.monotonic()
        log.log(level, "%s; retrying every %g-%g s, alerts wait in the outbox (%d pending)", message,
                self.config.reconnect_min, self.config.reconnect_max, len(self.outbox))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: mqtt.ReasonCode,
                    properties: Any) -> None:
        with self._ack_lock:
            if mid not in self._in_flight:
                self._early_acks[mid] = reason
                return
            item_id, topic = self._in_flight.pop(mid)
            self._settle(item_id, topic, reason)

    def _settle(self, item_id: int | None, topic: str, reason: mqtt.ReasonCode) -> None:
        """The broker's answer to one publish. Caller holds _ack_lock."""
        if not reason.is_failure:
            self._acknowledged(item_id)
            return
        user = self.config.username or "anonymous"
        if item_id is None:  # state, health, discovery: superseded by the next one, but somebody should know
            if topic not in self._refused_topics:
                self._refused_topics.add(topic)
                log.warning("broker %s refused a publish on %s (%s): check the broker's ACL for user %s",
                            self._where(), topic, reason, user)
            return
        # A refused alert is not a delivered one: it stays in the outbox and is tried again later.
        plan = self._refused.setdefault(item_id, _Refused(0.0, REFUSED_RETRY_MIN_S))
        plan.due = time.monotonic() + plan.delay
        message = (f"broker {self._where()} refused alerts on {topic} ({reason}); {len(self._refused)} alert(s) "
                   f"kept in the outbox and retried: check the broker's ACL for user {user}")
        self.health.fault("broker", message)  # Health only hands the report over: safe under our locks

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"
