"""The MQTT payloads the agent publishes (their JSON Schemas are in edge/schemas/).

Every timestamp is the snapshot's capture time from the frames, not the time of publishing, so a replay
reproduces the original timeline and a delayed alert still says when the machine was in that state.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge.detector import State, Transition


@dataclass(frozen=True)
class ModelRef:
    id: str
    sha256: str

    def payload(self) -> dict[str, str]:
        return {"id": self.id, "sha256": self.sha256}


@dataclass(frozen=True)
class Reading:
    """What the agent knows about one snapshot when it publishes."""

    capture_time_us: int
    snapshot: int
    features: np.ndarray | None  # None when the snapshot was lost (missing data)
    score: float | None
    channel_errors: np.ndarray | None
    state: State
    reason: str | None
    top_channel: int | None = None  # index of the channel that drove the state (edge.scoring); None: unknown


# Alert ids are UUID5s of the transition in this namespace: the same transition (device, new and previous
# state, capture time) always gets the same id, so an alert sent again after a lost checkpoint or a
# restart is recognised as a duplicate by consumers that de-duplicate by id.
ALERT_NAMESPACE = uuid.UUID("6f0c1f4e-8a4b-4d55-9a86-3f5d2c7b9e10")


def alert_id(device_id: str, transition: Transition, capture_time_us: int) -> str:
    name = f"{device_id}/{transition.state}/{transition.previous_state}/{capture_time_us}"
    return str(uuid.uuid5(ALERT_NAMESPACE, name))


def iso_time(capture_time_us: int) -> str:
    moment = datetime.fromtimestamp(capture_time_us / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def top_channel(reading: Reading, channels: Sequence[str]) -> str | None:
    """The channel that explains the state: the first channel a fault names, else the channel that drove
    the detector's decision, else the largest error."""
    if reading.reason and ":" in reading.reason:
        return reading.reason.split(":", 1)[1].split(",")[0]
    if reading.top_channel is not None:
        return channels[reading.top_channel]
    if reading.channel_errors is None:
        return None
    return channels[int(np.argmax(reading.channel_errors))]


def _by_channel(values: np.ndarray | None, channels: Sequence[str]) -> dict[str, float]:
    return {} if values is None else {name: round(float(v), 6) for name, v in zip(channels, values)}


def _score(reading: Reading) -> float | None:
    return None if reading.score is None else round(float(reading.score), 6)


def alert(device_id: str, transition: Transition, reading: Reading, channels: Sequence[str],
          thresholds: tuple[float, float], model: ModelRef) -> dict[str, Any]:
    return {
        "id": alert_id(device_id, transition, reading.capture_time_us),
        "device_id": device_id,
        "state": str(transition.state),
        "previous_state": str(transition.previous_state),
        "timestamp": iso_time(reading.capture_time_us),
        "score": _score(reading),
        "warning_threshold": thresholds[0],
        "alarm_threshold": thresholds[1],
        "channel_errors": _by_channel(reading.channel_errors, channels),
        "top_channel": top_channel(reading, channels),
        "reason": transition.reason,
        "model": model.payload(),
    }


def state(device_id: str, reading: Reading, since_us: int, channels: Sequence[str], model: ModelRef) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "state": str(reading.state),
        "since": iso_time(since_us),
        "timestamp": iso_time(reading.capture_time_us),
        "score": _score(reading),
        "top_channel": top_channel(reading, channels),
        "reason": reading.reason,
        "model": model.payload(),
    }


def telemetry(device_id: str, reading: Reading, channels: Sequence[str], counters: Mapping[str, int],
              time_source: str | None = None) -> dict[str, Any]:
    extra = {} if time_source is None else {"time_source": str(time_source)}
    return {
        "device_id": device_id,
        "timestamp": iso_time(reading.capture_time_us),
        "snapshot": reading.snapshot,
        "features": _by_channel(reading.features, channels),
        "score": _score(reading),
        "channel_errors": _by_channel(reading.channel_errors, channels),
        "state": str(reading.state),
        "reason": reading.reason,
        "counters": dict(counters),
        **extra,
    }
