"""`fleet.toml`: the fleet service's settings, read into frozen dataclasses.

Every default is the dataclass field's; the reader takes it from there. An error names the file, the key
and the value, as the agent's config does.

    [mqtt]        where the agents' broker is, and how this service's session is kept
    [historian]   url = "sqlite:///var/lib/cm-fleet/historian.sqlite" or "postgresql://cm@db/cm_fleet"
    [ingest]      what a payload may be, and how often rejections are logged
    [web]         the dashboard and its JSON API (served only when the section is there)
    [rollout]     the signed bundles the dashboard offers for a staged rollout, and the keys they must be signed by
    [commissioning]  machines' baselines checked, trained, signed and rolled out (only when the section is there)
"""
from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge.config import MqttConfig as _AgentMqtt

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")  # no wildcards, no empty levels
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a share name may not contain / + #
DEFAULT_TOPIC_PREFIX = _AgentMqtt.topic_prefix  # the agents' default: one home for it


class FleetConfigError(ValueError):
    """fleet.toml cannot be used; the message names the file, the key and the value."""


@dataclass(frozen=True)
class FleetMqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    # "": one instance, a plain subscription. Several instances split the load by setting one group on each
    # ($share/<group>/...), kept secret (deploy/README.md). Plain is the default because Debian's Mosquitto 2.0.11
    # restores a persistent session's plain subscription after its own restart but not a shared one: alerts
    # published before a shared group resubscribes are dropped (deploy/plant-group.md).
    group: str = ""
    client_id: str = ""  # default: cm-fleet-{hostname}; must stay the same across restarts (the session is kept)
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps this service's queued alerts while it is down
    keepalive: int = 30
    username: str | None = None
    password_file: str | None = None  # the secret is read from this file, never from the config itself
    tls_ca: str | None = None  # TLS is on when tls_ca or tls_cert is set
    tls_cert: str | None = None
    tls_key: str | None = None
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0

    @property
    def session_id(self) -> str:
        return self.client_id or f"cm-fleet-{socket.gethostname()}"


@dataclass(frozen=True)
class HistorianConfig:
    url: str = "sqlite:///var/lib/cm-fleet/historian.sqlite"
    password_file: str | None = None  # PostgreSQL's password, never written in the url
    raw_retention_days: float = 30.0  # telemetry kept raw this long, then only as bucket aggregates
    bucket_s: int = 600  # the aggregates' bucket
    compact_interval_s: float = 3600.0  # how often raw telemetry past the retention is folded into buckets


@dataclass(frozen=True)
class IngestConfig:
    max_payload_bytes: int = 65536  # larger payloads are rejected unread (an agent's are < 4 KiB)
    batch_size: int = 500  # messages committed (and then acknowledged) in one transaction
    reject_log_interval_s: float = 60.0  # each rejection reason is logged at most once per interval


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"  # behind a TLS reverse proxy on the same host; 0.0.0.0 to serve other hosts directly
    port: int = 8080  # 0: any free port (the log says which)
    secret_file: str | None = None  # signs the session cookies; none: a new secret per start (logs everyone out)
    session_hours: float = 12.0  # a login lasts this long
    allow_anonymous: bool = False  # true: visitors see the pages without logging in (never change anything)
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For / -Proto are believed (TLS proxy: 1)
    secure_cookies: bool = False  # the session cookie only over HTTPS: set it when a TLS proxy is in front
    login_attempts: int = 5  # failed logins allowed per user and per address within login_window_s
    login_window_s: float = 300.0


@dataclass(frozen=True)
class RolloutConfig:
    bundles: str = "/var/lib/cm-fleet/bundles"  # one signed bundle directory each, offered on the dashboard's /rollouts
    # Public keys (PEM files, cm-fleet keygen) a bundle must be signed by to be offered or rolled out, as the agents'
    # model.trusted_keys; empty: any signature is offered, and the agents alone judge the key.
    trusted_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommissioningConfig:
    """A machine on a baseline card learns its baseline; cm-fleet trains it a model (deploy/README.md)."""

    baseline_cards: str = ""  # a directory of the cards the agents run (cm-train baseline --out DIR/NAME), found by id
    signing_key: str = ""  # the private key (cm-fleet keygen) the trained bundles are signed with
    auto: bool = True  # train as soon as a learning machine's baseline passes; false: only on request
    min_days: float = 14.0  # the baseline spans at least this long (capture times) ...
    min_snapshots: int = 1000  # ... and holds at least this many snapshots
    max_shift: float = 6.0  # a feature's level in the last third this many spreads off the first third's: changed state
    check_interval_s: float = 60.0  # how often the worker looks at the learning machines
    work_dir: str = "/var/lib/cm-fleet/commissioning"  # tables, bundles and reports of each training, kept
    trainer: str = "cm-train"  # the trainer's command (the fleet host needs the trainer extra); beside python if there
    fit_epochs: int = 0  # 0: cm-train fit's own default
    train_timeout_s: float = 3600.0  # fit and evaluate each, beyond which the attempt is refused
    probation_snapshots: int = 0  # 0: the agent's own default (edge.probation)
    probation_seconds: float = 0.0  # 0: the agent's own default


@dataclass(frozen=True)
class FleetConfig:
    mqtt: FleetMqttConfig = FleetMqttConfig()
    historian: HistorianConfig = HistorianConfig()
    ingest: IngestConfig = IngestConfig()
    web: WebConfig | None = None  # no [web] section: ingest only, nothing listens
    rollout: RolloutConfig = RolloutConfig()
    commissioning: CommissioningConfig | None = None  # no [commissioning] section: nothing is trained


Section = TypeVar("Section")


def _expected(hint: Any) -> tuple[type, ...]:
    """The Python types a TOML value may have for a field annotated `hint` (None is never written in TOML)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(t for t in options if t is not type(None))
    if hint == tuple[str, ...]:
        return (list,)  # a TOML array of strings, kept as a tuple (frozen)
    return (int, float) if float in allowed else allowed


def _section(cls: type[Section], table: Any, name: str, path: Path) -> Section:
    if not isinstance(table, dict):
        raise FleetConfigError(f"{path}: [{name}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise FleetConfigError(f"{path}: {name}.{key}: unknown key; known: {', '.join(sorted(known))}")
    for key, value in table.items():
        allowed = _expected(hints[key])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            kinds = " or ".join(t.__name__ for t in allowed)
            raise FleetConfigError(f"{path}: {name}.{key}: expected {kinds}, got {value!r}")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise FleetConfigError(f"{path}: {name}.{key}: expected a list of strings, got {value!r}")
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in table.items()})


def _check(config: FleetConfig, path: Path) -> FleetConfig:
    mqtt, historian, ingest = config.mqtt, config.historian, config.ingest
    web = config.web or WebConfig()
    checks = [
        ("mqtt.topic_prefix", mqtt.topic_prefix, PREFIX_PATTERN.match(mqtt.topic_prefix), "levels of A-Z a-z 0-9 _ -"),
        ("mqtt.group", mqtt.group, mqtt.group == "" or GROUP_PATTERN.match(mqtt.group), "1-64 of A-Z a-z 0-9 _ -"),
        ("mqtt.port", mqtt.port, 0 < mqtt.port < 65536, "1-65535"),
        ("mqtt.session_expiry_s", mqtt.session_expiry_s, 0 < mqtt.session_expiry_s <= 0xFFFFFFFF, "1-4294967295"),
        ("historian.url", historian.url, historian.url.startswith(("sqlite://", "postgresql://", "postgres://")),
         "sqlite:///path or postgresql://..."),
        ("historian.raw_retention_days", historian.raw_retention_days, historian.raw_retention_days > 0, "> 0"),
        ("historian.bucket_s", historian.bucket_s, historian.bucket_s > 0, "> 0"),
        ("historian.compact_interval_s", historian.compact_interval_s, historian.compact_interval_s > 0, "> 0"),
        ("ingest.max_payload_bytes", ingest.max_payload_bytes, ingest.max_payload_bytes >= 1024, ">= 1024"),
        ("ingest.batch_size", ingest.batch_size, ingest.batch_size >= 1, ">= 1"),
        ("web.port", web.port, 0 <= web.port < 65536, "0-65535"),
        ("web.session_hours", web.session_hours, web.session_hours > 0, "> 0"),
        ("web.trusted_proxies", web.trusted_proxies, web.trusted_proxies >= 0, ">= 0"),
        ("web.login_attempts", web.login_attempts, web.login_attempts >= 1, ">= 1"),
        ("web.login_window_s", web.login_window_s, web.login_window_s > 0, "> 0"),
        ("rollout.bundles", config.rollout.bundles, config.rollout.bundles.strip() != "", "a directory"),
    ]
    for key, value, ok, expected in checks + _commissioning_checks(config):
        if not ok:
            raise FleetConfigError(f"{path}: {key}: expected {expected}, got {value!r}")
    return config


def _commissioning_checks(config: FleetConfig) -> list[tuple[str, Any, Any, str]]:
    c = config.commissioning
    if c is None:
        return []
    retention = config.historian.raw_retention_days
    return [
        ("commissioning.baseline_cards", c.baseline_cards, c.baseline_cards != "", "a directory of baseline cards"),
        ("commissioning.signing_key", c.signing_key, c.signing_key != "", "a private key file (cm-fleet keygen)"),
        ("commissioning.min_days", c.min_days, 0 <= c.min_days < retention,
         f">= 0 and below historian.raw_retention_days ({retention:g}: the baseline is read raw)"),
        ("commissioning.min_snapshots", c.min_snapshots, c.min_snapshots >= 2, ">= 2"),
        ("commissioning.max_shift", c.max_shift, c.max_shift > 0, "> 0"),
        ("commissioning.check_interval_s", c.check_interval_s, c.check_interval_s > 0, "> 0"),
        ("commissioning.fit_epochs", c.fit_epochs, c.fit_epochs >= 0, ">= 0"),
        ("commissioning.train_timeout_s", c.train_timeout_s, c.train_timeout_s > 0, "> 0"),
        ("commissioning.probation_snapshots", c.probation_snapshots, c.probation_snapshots >= 0, ">= 0"),
        ("commissioning.probation_seconds", c.probation_seconds, c.probation_seconds >= 0, ">= 0"),
    ]


SECTIONS = {"mqtt": FleetMqttConfig, "historian": HistorianConfig, "ingest": IngestConfig, "rollout": RolloutConfig}
OPTIONAL_SECTIONS = {"web": WebConfig, "commissioning": CommissioningConfig}  # absent: that part does not run


def parse_config(document: dict[str, Any], path: Path) -> FleetConfig:
    known = {**SECTIONS, **OPTIONAL_SECTIONS}
    unknown = sorted(set(document) - set(known))
    if unknown:
        raise FleetConfigError(f"{path}: {unknown[0]}: unknown section; known: {', '.join(known)}")
    sections: dict[str, Any] = {name: _section(cls, document.get(name, {}), name, path) for name, cls in SECTIONS.items()}
    sections |= {name: _section(cls, document[name], name, path) for name, cls in OPTIONAL_SECTIONS.items() if name in document}
    return _check(FleetConfig(**sections), path)


def load_config(path: str | Path) -> FleetConfig:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise FleetConfigError(f"{path}: cannot read the config: {error.strerror}") from None
    except UnicodeDecodeError:
        raise FleetConfigError(f"{path}: the config is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise FleetConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(document, path)
