"""`cm-edge --check`: find whatever would stop the agent at start, before systemd starts it.

Beyond the config and the bundle (checked by loading them), it opens the serial port, connects and
authenticates to the broker (both skipped with --offline, and while the agent runs: the outbox lock says
so, and a second login with the agent's credentials would take its session), checks that every path the agent writes
(outbox and checkpoint, recorder) can be written, and explains the scoring cadence when the config's
interval differs from the one the model was trained on.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import AgentConfig, MqttConfig
from edge.ingest.clock import unsynchronised
from edge.model.bundle import Bundle, Deployable, DetectorSettings
from edge.mqtt.publisher import PROTOCOLS, PublisherError, read_password

BROKER_TIMEOUT_S = 10.0


def problems(config: AgentConfig, offline: bool = False) -> list[str]:
    """Everything that would stop the agent at start, each naming the key and what is wrong."""
    found = [p for p in (_writable(config.outbox_path.parent, "outbox.path"),) if p]
    if config.recorder.enabled:
        found += [p for p in (_writable(config.recorder.directory, "recorder.directory"),) if p]
    if offline:  # the credentials are still read: an unreadable password file or certificate stops the agent
        found += [p for p in (_client(config.mqtt)[1],) if p]
    else:
        found += [p for p in (check_serial(config), check_broker(config.mqtt)) if p]
    return found


def notes(config: AgentConfig, bundle: Deployable, interval_s: float) -> list[str]:
    """What the user should know but that does not stop the agent."""
    found = []
    clock = unsynchronised()
    if clock:
        found.append(clock)
    trained = bundle.card.feature_spec.snapshot_interval_s
    if not isinstance(bundle, Bundle):
        return found  # a baseline card: nothing was trained, so no cadence of training to differ from
    if trained is None:
        found.append("the bundle's card does not record the cadence it was trained on (an older cm-train): "
                     + (f"scoring one snapshot per {interval_s:g} s as sensor.snapshot_interval_s says" if interval_s
                        else "every snapshot is scored; set sensor.snapshot_interval_s to the training cadence"))
    elif abs(interval_s - trained) > 0.05 * trained:
        found.append(f"sensor.snapshot_interval_s is {interval_s:g} s but the model was trained on snapshots {trained:g} s "
                     f"apart: {_debounce(config.detector.applied_to(bundle.card.detector), interval_s, trained)}; "
                     "remove the key to use the card's cadence")
    return found


def _debounce(settings: DetectorSettings, interval_s: float, trained_s: float) -> str:
    """How long the detector takes to raise and to clear a state at the configured cadence against the training
    one. Stated in seconds (persist_s, clear_after_s), the debounce spans the same time at both; counted in
    snapshots, the time changes with the cadence, which is what the user must see."""
    there = settings.at_cadence(trained_s)
    trained = (f"{there.k} of {there.n} snapshots over {_span(there.n * trained_s)} and "
               f"{_span(there.clear_after * trained_s)} at the training cadence")
    if not interval_s:  # every snapshot scored: as fast as the sensor completes them, unknown here
        text = (f"the detector raises a state on {settings.k} of {settings.n} snapshots and clears it after "
                f"{settings.clear_after} below the warning threshold, however little time they span ({trained})")
    else:
        here = settings.at_cadence(interval_s)
        text = (f"the detector raises a state on {here.k} of {here.n} snapshots over {_span(here.n * interval_s)} and "
                f"clears it after {_span(here.clear_after * interval_s)} below the warning threshold ({trained})")
    unset = [key for key in ("persist_s", "clear_after_s") if getattr(settings, key) is None]
    if unset:
        text += f"; [detector] {' and '.join(unset)} would state them in seconds, the same at any cadence"
    return text


def _span(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:g} s"


def _writable(directory: Path, key: str) -> str | None:
    """The agent creates missing directories: the nearest existing ancestor must be writable then."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}: {directory}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}: {directory}: {existing} is not writable by this user (uid {os.getuid()})"
    return None


def check_serial(config: AgentConfig) -> str | None:
    try:
        port = serial.serial_for_url(config.serial.port, baudrate=config.serial.baudrate, timeout=0)
    except (serial.SerialException, OSError, ValueError) as error:
        return f"serial.port: cannot open {config.serial.port}: {error}"
    port.close()
    return None


def _client(config: MqttConfig) -> tuple[mqtt.Client, str | None]:
    """A client with the agent's credentials and TLS settings (its own client id), or why it cannot have them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{config.client_id or 'cm-edge-' + config.device_id}-check",
                         protocol=PROTOCOLS[config.protocol])
    try:
        if config.username is not None:
            client.username_pw_set(config.username, read_password(config.password_file) if config.password_file else None)
        if config.tls_ca or config.tls_cert:
            client.tls_set(ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key)
            client.tls_insecure_set(config.tls_insecure)
    except PublisherError as error:
        return client, str(error)
    except (OSError, ValueError) as error:
        return client, f"mqtt.tls_ca/tls_cert/tls_key: cannot load the TLS certificates: {error}"
    return client, None


def check_broker(config: MqttConfig, timeout: float = BROKER_TIMEOUT_S) -> str | None:
    """Connect and authenticate once, publishing nothing; None when the broker accepted us."""
    client, problem = _client(config)
    if problem:
        return problem
    where = f"mqtt.host: broker {config.host}:{config.port}"
    answer: list[str] = []
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: mqtt.ReasonCode, props: object) -> None:
        answer.append("" if not reason.is_failure else str(reason))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(config.host, config.port, keepalive=max(config.keepalive, 5))
    except (OSError, ValueError) as error:  # refused, unreachable, name not resolved, TLS handshake
        return f"{where}: cannot connect: {error}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"{where}: no answer to CONNECT within {timeout:g} s"
    finally:
        client.disconnect()
        client.loop_stop()
    if answer[0]:
        return (f"{where} refused the connection: {answer[0]}"
                + (" (check mqtt.username and mqtt.password_file)" if config.username or "auth" in answer[0].lower() else ""))
    return None
