"""The MQTT payloads the agent publishes (their JSON Schemas are in edge/mqtt/schemas/).

Every timestamp is the snapshot's capture time from the frames, not the time of publishing, so a replay
reproduces the original timeline and a delayed alert still says when the machine was in that state.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.ingest.clock import iso_time
from edge.scoring.detector import Transition
from edge.scoring.reading import Reading


@dataclass(frozen=True)
class ModelRef:
    id: str
    sha256: str

    def payload(self) -> dict[str, str]:
        return {"id": self.id, "sha256": self.sha256}


# Alert ids are UUID5s of the transition in this namespace: the same transition (device, new and previous
# state, capture time) always gets the same id, so an alert sent again after a lost checkpoint or a
# restart is recognised as a duplicate by consumers that de-duplicate by id.
ALERT_NAMESPACE = uuid.UUID("6f0c1f4e-8a4b-4d55-9a86-3f5d2c7b9e10")


def alert_id(device_id: str, transition: Transition, capture_time_us: int) -> str:
    name = f"{device_id}/{transition.state}/{transition.previous_state}/{capture_time_us}"
    return str(uuid.uuid5(ALERT_NAMESPACE, name))


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


def _channel_features(reading: Reading, channels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every feature of every channel: {channel: {feature: value}} from the channel-major row."""
    assert reading.features is not None
    per_channel = len(reading.feature_names)
    return {name: {feature: round(float(reading.features[c * per_channel + f]), 6)
                   for f, feature in enumerate(reading.feature_names)} for c, name in enumerate(channels)}


def _diagnosis(reading: Reading) -> dict[str, Any]:
    """The optional diagnosis fields: present only when the feature set provides them."""
    extra: dict[str, Any] = {}
    if reading.defect is not None:
        extra["defect"] = reading.defect.payload()
    if reading.iso_zones is not None:
        extra["iso_zones"] = dict(reading.iso_zones)
    return extra


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
        **_diagnosis(reading),
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
              time_source: str | None = None, candidate: dict[str, Any] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {} if time_source is None else {"time_source": str(time_source)}
    if candidate is not None:  # during a rollout's probation (edge.rollout): the shadow model's view, beside
        extra["candidate"] = candidate
    per_channel = len(reading.feature_names)
    # "features" keeps its meaning (one number per channel: the first feature, mean_abs in every set);
    # a set with more features per channel adds them all under "channel_features".
    first = None if reading.features is None else reading.features[::per_channel]
    if per_channel > 1 and reading.features is not None:
        extra["channel_features"] = _channel_features(reading, channels)
    return {
        **_diagnosis(reading),
        "device_id": device_id,
        "timestamp": iso_time(reading.capture_time_us),
        "snapshot": reading.snapshot,
        "features": _by_channel(first, channels),
        "score": _score(reading),
        "channel_errors": _by_channel(reading.channel_errors, channels),
        "state": str(reading.state),
        "reason": reading.reason,
        "counters": dict(counters),
        **extra,
    }


def shadow(reading: Reading, model: ModelRef, compared: int) -> dict[str, Any]:
    """A candidate model's score and state for the snapshot (telemetry's `candidate`): it alerts nobody."""
    return {"model": model.payload(), "score": _score(reading), "state": str(reading.state), "compared": compared}


def model_report(device_id: str, active: dict[str, str], previous: str | None, rollout: dict[str, Any] | None,
                 candidate: dict[str, str] | None, timestamp: str) -> dict[str, Any]:
    """The retained `{prefix}/{device_id}/model` document: what runs, what it replaced, how the last rollout went."""
    return {"device_id": device_id, "active": active, "previous": previous, "candidate": candidate,
            "rollout": rollout, "timestamp": timestamp}
