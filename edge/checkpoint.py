"""The agent's memory across restarts: the detector's state, saved at every transition.

A restart (power cut, update, crash) must neither announce a false all-clear nor raise the same alarm
twice. The state is a small JSON file beside the outbox, replaced atomically; a checkpoint written for
another model is ignored, because its thresholds meant something else.

A checkpoint that cannot be trusted (garbled JSON, an unknown state, a time no clock can read) is
reported, moved aside for inspection and ignored: the agent starts from `normal` rather than crash-loop.
A checkpoint that cannot be written (full or read-only disk) is reported; the next transition tries again.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.mqtt.health import LOG_ONLY, FaultSink
from edge.scoring.detector import State

log = logging.getLogger(__name__)

# Capture times the agent can print: from 1970 up to the end of year 9999, in microseconds.
MAX_TIME_US = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1_000_000
BEARING_STATES = (State.NORMAL, State.WARNING, State.ALARM)  # `health` is the bearing's: never a sensor fault


@dataclass(frozen=True)
class Checkpoint:
    model_id: str
    state: State
    health: State
    reason: str | None
    since_us: int
    driver: str | None = None  # the channel that raised the warning or alarm; absent in older checkpoints
    zone: State | None = None  # [machine] zone_alarm: the zone detector's state; absent when it is off


class CheckpointError(ValueError):
    """The checkpoint's content cannot be trusted; the message names the key."""


def checkpoint_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.stem + ".detector.json")


def parse_checkpoint(raw: Any) -> Checkpoint:
    if not isinstance(raw, dict):
        raise CheckpointError(f"expected a JSON object, got {type(raw).__name__}")
    missing = [key for key in ("model_id", "state", "health", "reason", "since_us") if key not in raw]
    if missing:
        raise CheckpointError(f"{', '.join(missing)}: missing")
    if not isinstance(raw["model_id"], str) or not raw["model_id"]:
        raise CheckpointError(f"model_id: expected a non-empty string, got {raw['model_id']!r}")
    if raw["state"] not in tuple(State):
        raise CheckpointError(f"state: expected one of {', '.join(State)}, got {raw['state']!r}")
    if raw["health"] not in BEARING_STATES:
        raise CheckpointError(f"health: expected one of {', '.join(BEARING_STATES)}, got {raw['health']!r}")
    if raw["reason"] is not None and (not isinstance(raw["reason"], str) or not raw["reason"]):
        raise CheckpointError(f"reason: expected null or a non-empty string, got {raw['reason']!r}")
    since = raw["since_us"]
    if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_TIME_US:
        raise CheckpointError(f"since_us: expected microseconds since 1970 up to the year 9999, got {since!r}")
    driver = raw.get("driver")
    if driver is not None and (not isinstance(driver, str) or not driver):
        raise CheckpointError(f"driver: expected null or a channel name, got {driver!r}")
    zone = raw.get("zone")
    if zone is not None and zone not in BEARING_STATES:
        raise CheckpointError(f"zone: expected null or one of {', '.join(BEARING_STATES)}, got {zone!r}")
    return Checkpoint(raw["model_id"], State(raw["state"]), State(raw["health"]), raw["reason"], since, driver,
                      None if zone is None else State(zone))


def load_checkpoint(path: Path, model_id: str, health: FaultSink = LOG_ONLY) -> Checkpoint | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        _reject(path, str(error), health)
        return None
    try:
        checkpoint = parse_checkpoint(json.loads(text))
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError and CheckpointError are ValueErrors
        _reject(path, str(error), health)
        return None
    if checkpoint.model_id != model_id:
        log.info("%s: checkpoint of model %s ignored: this bundle is %s", path, checkpoint.model_id, model_id)
        return None
    return checkpoint


def _reject(path: Path, why: str, health: FaultSink) -> None:
    aside = path.with_name(f"{path.name}.bad-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    try:
        os.replace(path, aside)
        kept = f"moved to {aside.name}"
    except OSError as error:
        kept = f"could not be moved aside ({error.strerror})"
    message = f"{path}: unusable detector checkpoint ({why}); {kept}; starting from normal"
    health.fault("storage", message, source="checkpoint")


def save_checkpoint(path: Path, checkpoint: Checkpoint, health: FaultSink = LOG_ONLY) -> bool:
    """Write the checkpoint atomically (mode 0600). False, reported, if the disk refuses; never raises."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(asdict(checkpoint), file)
            file.flush()
            os.fsync(file.fileno())  # a power cut leaves the old checkpoint or the new one, never half of one
        os.replace(temporary, path)
    except OSError as error:
        message = (f"{path}: cannot save the detector checkpoint ({error.strerror}); a restart would begin "
                   f"from the last saved state")
        health.fault("storage", message, source="checkpoint-save")
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return False
    health.clear("storage", source="checkpoint-save")
    return True
