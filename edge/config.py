"""The agent's configuration: one TOML file, validated at start-up.

Every error names the file, the key, the value and what was expected (ESPHome style), and unknown keys
are errors with a suggestion, because a typo that silently falls back to a default is a bug in the field.
"""
from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # it becomes an MQTT topic level: no '/', '+', '#'
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baudrate: int = 2_000_000  # carries 4 channels at 20 kHz (PROTOCOL.md §6); USB CDC ignores it


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
    protocol: str = "5"  # "5" or "3.1.1"
    reconnect_min: float = 1.0  # seconds; paho doubles the delay after each failed attempt up to reconnect_max
    reconnect_max: float = 60.0


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

    def given(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not None}


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
    iso_group: str = "2-rigid"  # edge.scoring.diagnosis.ISO_GROUPS: zone boundaries of the velocity RMS
    zone_alarm: bool = False  # an alarm from the ISO zone (D) beside the learned score


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device_id: str
    serial: SerialConfig
    bundle: Path
    mqtt: MqttConfig
    outbox_path: Path
    log_level: str = "INFO"
    sensor: SensorConfig = field(default_factory=SensorConfig)
    detector: DetectorOverrides = field(default_factory=DetectorOverrides)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    counters_interval_s: float = 60.0
    machine: MachineConfig = field(default_factory=MachineConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start}): save the config as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    return _Reader(path, raw).agent()


class _Reader:
    """Reads typed values out of the parsed TOML, naming `section.key` in every error."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw

    def fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: expected {expected}, got {value!r}")

    def section(self, name: str, allowed: set[str], required: bool = False) -> dict[str, Any]:
        if name not in self.raw:
            if required:
                raise ConfigError(f"{self.path}: [{name}]: required section is missing")
            return {}
        table = self.raw[name]
        if not isinstance(table, dict):
            raise self.fail(name, table, "a table ([" + name + "])")
        self.reject_unknown(table, allowed, prefix=f"{name}.")
        return table

    def reject_unknown(self, table: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(sorted(allowed))}"
                raise ConfigError(f"{self.path}: {prefix}{key}: unknown key{hint}")

    def get(self, table: dict[str, Any], key: str, kind: type, default: Any = None, *, name: str,
            required: bool = False) -> Any:
        if key not in table:
            if required:
                raise ConfigError(f"{self.path}: {name}: required key is missing")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(name, value, KIND_NAMES[kind])
        if isinstance(value, float) and not math.isfinite(value):  # inf thresholds would switch alarms off silently
            raise self.fail(name, value, "a finite number")
        return value

    def text(self, table: dict[str, Any], key: str, default: str | None = None, *, name: str,
             required: bool = False) -> Any:
        """A string that must say something: an empty path, port or id is never what was meant."""
        value = self.get(table, key, str, default, name=name, required=required)
        if value is not None and not value.strip():
            raise self.fail(name, value, "a non-empty string")
        return value

    def positive(self, table: dict[str, Any], key: str, kind: type, default: Any, *, name: str) -> Any:
        value = self.get(table, key, kind, default, name=name)
        if value is not None and value <= 0:
            raise self.fail(name, value, "a positive " + KIND_NAMES[kind].split()[-1])
        return value

    def agent(self) -> AgentConfig:
        sections = {"serial", "model", "mqtt", "outbox", "sensor", "detector", "recorder", "telemetry",
                    "homeassistant", "machine"}
        self.reject_unknown(self.raw, sections | {"device_id", "log_level"})
        device_id = self.get(self.raw, "device_id", str, name="device_id", required=True)
        if not DEVICE_ID.match(device_id):
            raise self.fail("device_id", device_id, "1-64 letters, digits, '-' or '_' (it is an MQTT topic level)")
        log_level = self.get(self.raw, "log_level", str, "INFO", name="log_level").upper()
        if log_level not in LOG_LEVELS:
            raise self.fail("log_level", log_level, "one of " + ", ".join(LOG_LEVELS))
        model = self.section("model", {"bundle"}, required=True)
        outbox = self.section("outbox", {"path"})
        telemetry = self.section("telemetry", {"counters_interval_s"})
        return AgentConfig(
            path=self.path,
            device_id=device_id,
            log_level=log_level,
            serial=self.serial(),
            bundle=self.relative(self.text(model, "bundle", name="model.bundle", required=True)),
            mqtt=self.mqtt(device_id),
            outbox_path=self.outbox_path(outbox),
            sensor=self.sensor(),
            detector=self.detector(),
            recorder=self.recorder(),
            machine=self.machine(),
            counters_interval_s=self.positive(telemetry, "counters_interval_s", float, 60.0,
                                              name="telemetry.counters_interval_s"),
            homeassistant=self.homeassistant(),
        )

    def outbox_path(self, table: dict[str, Any]) -> Path:
        path = self.relative(self.text(table, "path", "/var/lib/cm-edge/outbox.sqlite", name="outbox.path"))
        assert path is not None
        if path.is_dir():  # (whether its directory can be written is edge.preflight's, in --check)
            raise self.fail("outbox.path", str(path), "a file path (the outbox is created there), not a directory")
        return path

    @overload
    def relative(self, value: str) -> Path: ...
    @overload
    def relative(self, value: None) -> None: ...
    @overload
    def relative(self, value: str | None) -> Path | None: ...

    def relative(self, value: str | None) -> Path | None:
        """Relative paths are relative to the config file, so a config and its bundle can travel together."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    def serial(self) -> SerialConfig:
        table = self.section("serial", {"port", "baudrate"}, required=True)
        return SerialConfig(
            port=self.text(table, "port", name="serial.port", required=True),
            baudrate=self.positive(table, "baudrate", int, SerialConfig.baudrate, name="serial.baudrate"),
        )

    def mqtt(self, device_id: str) -> MqttConfig:
        keys = {"host", "port", "topic_prefix", "client_id", "username", "password_file", "tls_ca", "tls_cert",
                "tls_key", "tls_insecure", "keepalive", "protocol"}
        table = self.section("mqtt", keys, required=True)
        port = self.get(table, "port", int, 1883, name="mqtt.port")
        if not 0 < port < 65536:
            raise self.fail("mqtt.port", port, "a TCP port between 1 and 65535")
        prefix = self.get(table, "topic_prefix", str, "cm", name="mqtt.topic_prefix")
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
            raise self.fail("mqtt.topic_prefix", prefix, "a topic without wildcards or leading/trailing '/'")
        protocol = str(table.get("protocol", "5"))
        if protocol not in ("5", "3.1.1"):
            raise self.fail("mqtt.protocol", table.get("protocol"), "\"5\" or \"3.1.1\"")
        files: dict[str, Any] = {}
        for key in ("password_file", "tls_ca", "tls_cert", "tls_key"):
            value = self.relative(self.get(table, key, str, name=f"mqtt.{key}"))
            if value is not None and not value.is_file():
                raise self.fail(f"mqtt.{key}", str(value), "an existing readable file")
            files[key] = str(value) if value is not None else None
        if (files["tls_cert"] is None) != (files["tls_key"] is None):
            raise ConfigError(f"{self.path}: mqtt.tls_cert and mqtt.tls_key: expected both or neither")
        if files["password_file"] and "username" not in table:
            raise ConfigError(f"{self.path}: mqtt.username: required when mqtt.password_file is set")
        host = self.get(table, "host", str, name="mqtt.host", required=True)
        if not host.strip():
            raise self.fail("mqtt.host", host, "the broker's host name or IP address")
        return MqttConfig(
            host=host,
            port=port,
            topic_prefix=prefix,
            device_id=device_id,
            client_id=self.text(table, "client_id", name="mqtt.client_id"),
            username=self.text(table, "username", name="mqtt.username"),
            tls_insecure=self.get(table, "tls_insecure", bool, False, name="mqtt.tls_insecure"),
            keepalive=self.keepalive(table),
            protocol=protocol,
            **files,
        )

    def keepalive(self, table: dict[str, Any]) -> int:
        value = self.get(table, "keepalive", int, 30, name="mqtt.keepalive")
        if not 0 < value <= 65535:  # a two-byte field in the CONNECT packet
            raise self.fail("mqtt.keepalive", value, "seconds from 1 to 65535")
        return value

    def sensor(self) -> SensorConfig:
        table = self.section("sensor", {"channels", "sample_rate_hz", "snapshot_samples", "stale_after_s",
                                        "snapshot_interval_s", "full_scale_g"})
        channels = table.get("channels")
        if channels is not None and (not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
                                     or not channels):
            raise self.fail("sensor.channels", channels, "a non-empty list of channel names")
        return SensorConfig(
            channels=tuple(channels) if channels else None,
            sample_rate_hz=self.positive(table, "sample_rate_hz", int, None, name="sensor.sample_rate_hz"),
            snapshot_samples=self.positive(table, "snapshot_samples", int, None, name="sensor.snapshot_samples"),
            stale_after_s=self.positive(table, "stale_after_s", float, None, name="sensor.stale_after_s"),
            snapshot_interval_s=self.non_negative(table, "snapshot_interval_s", name="sensor.snapshot_interval_s"),
            full_scale_g=self.positive(table, "full_scale_g", float, None, name="sensor.full_scale_g"),
        )

    def non_negative(self, table: dict[str, Any], key: str, *, name: str) -> float | None:
        value = self.get(table, key, float, None, name=name)
        if value is not None and not 0 <= value < float("inf"):
            raise self.fail(name, value, "a number of seconds >= 0 (0: score every snapshot)")
        return value

    def homeassistant(self) -> HomeAssistantConfig:
        table = self.section("homeassistant", {"enabled", "discovery_prefix"})
        defaults = HomeAssistantConfig()
        prefix = self.get(table, "discovery_prefix", str, defaults.discovery_prefix,
                          name="homeassistant.discovery_prefix")
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
            raise self.fail("homeassistant.discovery_prefix", prefix, "a topic without wildcards or leading/trailing '/'")
        return HomeAssistantConfig(
            enabled=self.get(table, "enabled", bool, defaults.enabled, name="homeassistant.enabled"),
            discovery_prefix=prefix,
        )

    def detector(self) -> DetectorOverrides:
        table = self.section("detector", {"warning_threshold", "alarm_threshold", "k", "n", "clear_after", "fault_after"})
        values = {key: self.positive(table, key, float, None, name=f"detector.{key}")
                  for key in ("warning_threshold", "alarm_threshold")}
        values |= {key: self.positive(table, key, int, None, name=f"detector.{key}")
                   for key in ("k", "n", "clear_after", "fault_after")}
        return DetectorOverrides(**values)

    def machine(self) -> MachineConfig:
        from edge.scoring.diagnosis import ISO_GROUPS  # the zone boundaries live with the diagnosis

        table = self.section("machine", {"shaft_rpm", "iso_group", "zone_alarm"})
        group = self.get(table, "iso_group", str, MachineConfig.iso_group, name="machine.iso_group")
        if group not in ISO_GROUPS:
            raise self.fail("machine.iso_group", group, "one of " + ", ".join(ISO_GROUPS))
        return MachineConfig(
            shaft_rpm=self.positive(table, "shaft_rpm", float, None, name="machine.shaft_rpm"),
            iso_group=group,
            zone_alarm=self.get(table, "zone_alarm", bool, False, name="machine.zone_alarm"),
        )

    def recorder(self) -> RecorderConfig:
        table = self.section("recorder", {"enabled", "directory", "quota_mb", "interval_s"})
        enabled = self.get(table, "enabled", bool, False, name="recorder.enabled")
        directory = self.relative(self.text(table, "directory", "/var/lib/cm-edge/recordings",
                                            name="recorder.directory"))
        assert directory is not None
        interval = self.get(table, "interval_s", float, 600.0, name="recorder.interval_s")
        if interval < 0:
            raise self.fail("recorder.interval_s", interval, "a number of seconds >= 0")
        return RecorderConfig(
            enabled=enabled,
            directory=directory,
            quota_mb=self.positive(table, "quota_mb", float, 1024.0, name="recorder.quota_mb"),
            interval_s=interval,
        )
