"""The agent's configuration: one TOML file, validated at start-up.

Every error names the file, the key, the value and what was expected (ESPHome style), and unknown keys
are errors with a suggestion, because a typo that silently falls back to a default is a bug in the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import voluptuous as vol

from edge.model import validation as v
from edge.model.bundle import MAX_DEBOUNCE_S, DetectorSettings
from edge.model.signature import TrustedKey, load_public_key
from edge.model.validation import Optional, required
from edge.scoring.diagnosis import DEFAULT_ISO_GROUP, ISO_GROUPS
from firmware_bridge.link import DEFAULT_BAUDRATE

DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # it becomes an MQTT topic level: no '/', '+', '#'
TOPIC_PREFIX = re.compile(r"[^+#/]([^+#]*[^+#/])?")  # one or more topic levels: no wildcards, no empty first or last
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FLEET_LEVEL = "_fleet"  # {prefix}/_fleet/...: the fleet's topics (edge.rollout), never a device's
# MQTT 5 first: over 3.1.1 a broker's refusal of an alert cannot be told from its delivery (edge.mqtt.publisher).
MQTT_PROTOCOLS = ("5", "3.1.1")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baudrate: int = DEFAULT_BAUDRATE


@dataclass(frozen=True)
class SensorConfig:
    """Optional expectations of the sensor; when given, the bundle must match them."""

    channels: tuple[str, ...] | None = None
    sample_rate_hz: int | None = None
    snapshot_samples: int | None = None
    stale_after_s: float | None = None  # no complete snapshot for this long: missing data (off when unset)
    snapshot_interval_s: float | None = None  # score one snapshot per interval of stream time; None: the card's
    full_scale_g: float | None = None  # the accelerometer's range; clipping is judged against it (None: int16)


@dataclass(frozen=True)
class MqttConfig:
    host: str
    device_id: str
    port: int = 1883
    topic_prefix: str = "cm"
    client_id: str | None = None  # default: cm-edge-{device_id}
    username: str | None = None
    password_file: str | None = None  # the secret is read from this file, never from the config itself
    tls_ca: str | None = None  # TLS is on when tls_ca or tls_cert is set
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False  # skip the host name check (self-signed broker certs addressed by IP)
    keepalive: int = 30
    protocol: str = MQTT_PROTOCOLS[0]
    # Seconds between connection attempts: doubling from reconnect_min up to reconnect_max, each drawn at
    # random below that bound (edge.mqtt.publisher.ReconnectDelay). reconnect_max is also the longest the
    # agent takes to notice that the broker is back.
    reconnect_min: float = 0.5
    reconnect_max: float = 1.5


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool = True
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class DetectorOverrides:
    warning_threshold: float | None = None
    alarm_threshold: float | None = None
    k: int | None = None
    n: int | None = None
    clear_after: int | None = None
    fault_after: int | None = None
    persist_s: float | None = None  # DetectorSettings.persist_s: k of n spans at least this long at any cadence
    clear_after_s: float | None = None  # DetectorSettings.clear_after_s: clear after this long below warning

    def given(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not None}

    def applied_to(self, settings: DetectorSettings) -> DetectorSettings:
        """The card's settings with the config's overrides on top (ValueError when they do not fit together)."""
        return replace(settings, **self.given())


@dataclass(frozen=True)
class RecorderConfig:
    enabled: bool = False
    directory: Path = Path("/var/lib/cm-edge/recordings")
    quota_mb: float = 1024.0
    interval_s: float = 600.0  # IMS cadence: one snapshot every 10 minutes is plenty for training


@dataclass(frozen=True)
class MachineConfig:
    """The machine the sensor is on (vibration feature set): speed, ISO 20816 group, optional zone alarm."""

    shaft_rpm: float | None = None  # overrides the card's shaft speed: the envelope lines move with it
    iso_group: str = DEFAULT_ISO_GROUP  # edge.scoring.diagnosis.ISO_GROUPS: zone boundaries of the velocity RMS
    zone_alarm: bool = False  # an alarm from the ISO zone (D) beside the learned score


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device_id: str
    serial: SerialConfig
    bundle: Path
    mqtt: MqttConfig
    outbox_path: Path = Path("/var/lib/cm-edge/outbox.sqlite")
    log_level: str = "INFO"
    sensor: SensorConfig = field(default_factory=SensorConfig)
    detector: DetectorOverrides = field(default_factory=DetectorOverrides)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    counters_interval_s: float = 60.0
    machine: MachineConfig = field(default_factory=MachineConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    # Public keys a bundle must be signed by (edge.model.signature); several while a key is rotated. Empty:
    # bundles are not checked for a signature (a device set up before signing, or a bench).
    trusted_keys: tuple[TrustedKey, ...] = ()


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    document = v.check(_schema(path.parent), v.read_toml(path, "the config file", ConfigError), path, ConfigError)
    return _agent(path, document)


def _schema(folder: Path) -> v.Validator:
    """The config file's layout and what each key must hold; paths are relative to the file's folder, so a
    config and its bundle can travel together. The defaults are the dataclasses' above."""
    path, file = v.relative_path(folder), v.existing_file(folder)  # (secrets are read from files, never from here)
    topic = v.matching(TOPIC_PREFIX, "a topic without wildcards or leading/trailing '/'")
    sections: dict[vol.Marker, dict[vol.Marker, v.Validator]] = {
        required("serial", section=True): {required("port"): v.text(), Optional("baudrate"): v.integer(1)},
        required("model", section=True): {required("bundle"): path, Optional("trusted_keys"): _trusted_keys(folder)},
        required("mqtt", section=True): {
            required("host"): v.text("the broker's host name or IP address"),
            Optional("port"): v.integer(1, 65535, "a TCP port between 1 and 65535"),
            Optional("topic_prefix"): topic,
            Optional("client_id"): v.text(),
            Optional("username"): v.text(),
            **{Optional(key): file for key in ("password_file", "tls_ca", "tls_cert", "tls_key")},
            Optional("tls_insecure"): v.boolean,
            Optional("keepalive"): v.integer(1, 65535, "seconds from 1 to 65535"),  # two bytes of the CONNECT packet
            Optional("protocol"): vol.All(_protocol_name, v.one_of(MQTT_PROTOCOLS)),
            **{Optional(key): v.number(positive=True) for key in ("reconnect_min", "reconnect_max")},
        },
        Optional("outbox"): {Optional("path"): path},
        Optional("telemetry"): {Optional("counters_interval_s"): v.number(positive=True)},
        Optional("sensor"): {
            Optional("channels"): v.names("a non-empty list of channel names"),
            Optional("sample_rate_hz"): v.integer(1),
            Optional("snapshot_samples"): v.integer(1),
            Optional("stale_after_s"): v.number(positive=True),
            Optional("snapshot_interval_s"): v.number(0, what="a number of seconds >= 0 (0: score every snapshot)"),
            Optional("full_scale_g"): v.number(positive=True),
        },
        Optional("detector"): {
            **{Optional(key): v.number(positive=True) for key in ("warning_threshold", "alarm_threshold")},
            **{Optional(key): v.integer(1) for key in ("k", "n", "clear_after", "fault_after")},
            **{Optional(key): _debounce_seconds for key in ("persist_s", "clear_after_s")},
        },
        Optional("recorder"): {
            Optional("enabled"): v.boolean,
            Optional("directory"): path,
            Optional("quota_mb"): v.number(positive=True),
            Optional("interval_s"): v.number(0, what="a number of seconds >= 0"),
        },
        Optional("machine"): {
            Optional("shaft_rpm"): v.number(positive=True),
            Optional("iso_group"): v.one_of(ISO_GROUPS),
            Optional("zone_alarm"): v.boolean,
        },
        Optional("homeassistant"): {Optional("enabled"): v.boolean, Optional("discovery_prefix"): topic},
    }
    return v.table({
        required("device_id"): v.matching(DEVICE_ID, "1-64 letters, digits, '-' or '_' (it is an MQTT topic level)"),
        Optional("log_level"): vol.All(v.text(), str.upper, v.one_of(LOG_LEVELS)),
        **{key: v.table(fields, name=key.schema) for key, fields in sections.items()},
    })


def _trusted_keys(folder: Path) -> v.Validator:
    """A non-empty list of public key files (PEM, as cm-fleet keygen writes), each read and checked here."""
    listed = v.names("a non-empty list of public key files (PEM, from cm-fleet keygen)")

    def validate(value: Any) -> tuple[TrustedKey, ...]:
        keys = []
        for index, name in enumerate(listed(value)):
            try:
                keys.append(load_public_key(v.relative_path(folder)(name)))
            except ValueError as error:
                raise vol.Invalid(str(error), path=[index]) from None
        return tuple(keys)
    return validate


def _debounce_seconds(value: Any) -> float:
    """A debounce in seconds as DetectorSettings takes it: 0 (the counts alone) up to a week (beyond: a typo)."""
    what = f"a number of seconds from 0 to {MAX_DEBOUNCE_S:g} (a week)"
    seconds = v.number(0, what=what)(value)
    if seconds > MAX_DEBOUNCE_S:
        raise v.expected(what, value)
    return seconds


def _protocol_name(value: Any) -> Any:
    """`protocol = 5` is read as "5": a TOML number is the natural way to write it (3.1.1 can only be a string)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _agent(path: Path, document: dict[str, Any]) -> AgentConfig:
    """The dataclasses from a validated document; a key it leaves out keeps the field's default."""
    mqtt = document["mqtt"]
    if ("tls_cert" in mqtt) != ("tls_key" in mqtt):
        raise ConfigError(f"{path}: mqtt.tls_cert and mqtt.tls_key: expected both or neither")
    shortest, longest = (mqtt.get(key, getattr(MqttConfig, key)) for key in ("reconnect_min", "reconnect_max"))
    if longest < shortest:
        raise ConfigError(f"{path}: mqtt.reconnect_max: expected at least mqtt.reconnect_min ({shortest:g} s), "
                          f"got {longest:g}")
    if "password_file" in mqtt and "username" not in mqtt:
        raise ConfigError(f"{path}: mqtt.username: required when mqtt.password_file is set")
    given = {"log_level": document.get("log_level"), "outbox_path": document.get("outbox", {}).get("path"),
             "counters_interval_s": document.get("telemetry", {}).get("counters_interval_s")}
    sections = {"sensor": SensorConfig, "detector": DetectorOverrides, "recorder": RecorderConfig,
                "machine": MachineConfig, "homeassistant": HomeAssistantConfig}
    config = AgentConfig(
        path=path,
        device_id=document["device_id"],
        serial=SerialConfig(**document["serial"]),
        bundle=document["model"]["bundle"],
        trusted_keys=document["model"].get("trusted_keys", ()),
        mqtt=MqttConfig(device_id=document["device_id"], **mqtt),
        **{name: kind(**document.get(name, {})) for name, kind in sections.items()},
        **{key: value for key, value in given.items() if value is not None},
    )
    if config.device_id == FLEET_LEVEL:
        raise ConfigError(f"{path}: device_id: {FLEET_LEVEL!r} is reserved: {config.mqtt.topic_prefix}/{FLEET_LEVEL}/ holds the "
                          f"fleet's bundles and desired documents, which a device of that name could forge")
    if config.outbox_path.is_dir():  # (whether its directory can be written is edge.preflight's, in --check)
        raise ConfigError(f"{path}: outbox.path: expected a file path (the outbox is created there), not a directory, "
                          f"got {str(config.outbox_path)!r}")
    return config
