"""The agent's memory across restarts: the detector's state, saved at every transition.

A restart (power cut, update, crash) must neither announce a false all-clear nor raise the same alarm
twice. The state is a small JSON file beside the outbox, replaced atomically; a checkpoint written for
another model is ignored, because its thresholds meant something else.

A checkpoint that cannot be trusted (garbled JSON, an unknown state, a time no clock can read, a channel
the bundle does not have) is reported, moved aside for inspection and ignored: the agent starts from
`normal` rather than crash-loop. A checkpoint that cannot be written (full or read-only disk) is reported
and retried (edge.announcer) until the disk takes it, which clears the fault.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.model import validation as v
from edge.model.validation import Optional, required
from edge.mqtt.health import LOG_ONLY, FaultSink
from edge.scoring.detector import State

log = logging.getLogger(__name__)

# Capture times the agent can print: from 1970 up to the end of year 9999, in microseconds.
MAX_TIME_US = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1_000_000
# `health` is the bearing's: never a sensor fault (learning: a baseline card's, with no model yet)
BEARING_STATES = (State.NORMAL, State.WARNING, State.ALARM, State.LEARNING)


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


_SCHEMA = v.table({
    required("model_id"): v.text(),
    required("state"): v.one_of(tuple(State)),
    required("health"): v.one_of(BEARING_STATES),
    required("reason"): v.nullable(v.text("null or a non-empty string")),
    required("since_us"): v.integer(0, MAX_TIME_US, "microseconds since 1970 up to the year 9999"),
    Optional("driver"): v.nullable(v.text("null or a channel name")),  # keys added later: absent in older files
    Optional("zone"): v.nullable(v.one_of(BEARING_STATES)),
}, kind="a JSON object", extra=True)


def parse_checkpoint(raw: Any, source: object) -> Checkpoint:
    """A checkpoint from its JSON; a CheckpointError names `source` and the key."""
    document = v.check(_SCHEMA, raw, source, CheckpointError)
    zone = document.get("zone")
    return Checkpoint(document["model_id"], State(document["state"]), State(document["health"]), document["reason"],
                      document["since_us"], document.get("driver"), None if zone is None else State(zone))


def load_checkpoint(path: Path, model_id: str, health: FaultSink = LOG_ONLY,
                    channels: Sequence[str] | None = None) -> Checkpoint | None:
    """The checkpoint of this model, or None. `channels`: the bundle's; a checkpoint whose alarm was raised
    by a channel outside them is refused (it was written for another sensor layout, or damaged)."""
    if not path.exists():  # the first start, or one after the outbox was reset
        return None
    try:
        checkpoint = parse_checkpoint(v.read_json(path, "the detector checkpoint", CheckpointError), path)
    except CheckpointError as error:
        _reject(path, str(error), health)
        return None
    if checkpoint.model_id != model_id:
        log.info("%s: checkpoint of model %s ignored: this bundle is %s", path, checkpoint.model_id, model_id)
        return None
    if channels is not None and checkpoint.driver is not None and checkpoint.driver not in channels:
        _reject(path, f"{path}: driver: expected one of the bundle's channels ({', '.join(channels)}), "
                f"got {checkpoint.driver!r}", health)
        return None
    return checkpoint


def _reject(path: Path, why: str, health: FaultSink) -> None:
    aside = path.with_name(f"{path.name}.bad-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    try:
        os.replace(path, aside)
        kept = f"moved to {aside.name}"
    except OSError as error:
        kept = f"could not be moved aside ({error.strerror})"
    message = f"unusable detector checkpoint ({why}); {kept}; starting from normal"  # (`why` names the file)
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
