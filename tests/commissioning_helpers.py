"""Helpers for the commissioning tests: a baseline card written by the trainer's own code (`cm-train baseline`),
and a machine's `learning` telemetry and state built by the agent's own payload code (edge.mqtt.payloads), as
the historian receives them.

    card = baseline_card(tmp_path / "cards" / "pump", CHANNELS)
    historian.store(learning_messages("pump-1", card, levels, T0_US), [], NOW)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.model.bundle import Baseline, load_deployable
from edge.mqtt.payloads import ModelRef, model_report, state, telemetry
from edge.scoring.detector import State
from edge.scoring.reading import Reading
from fleet.payloads import Accepted
from trainer.baseline import BaselineOptions, write

CHANNELS = ("bearing1", "bearing2")
STEP_US = 600 * 1_000_000  # the IMS cadence: a snapshot every ten minutes
COUNTERS = dict.fromkeys(("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped", "snapshots",
                          "snapshots_discarded", "alerts_pending", "telemetry_dropped"), 0)


def baseline_card(directory: Path, channels: tuple[str, ...] = CHANNELS, feature_set: str = "mean_abs",
                  **options: Any) -> Baseline:
    """A baseline card as `cm-train baseline --channels ... --sample-rate 20000 --snapshot-samples 20480` writes it."""
    write(BaselineOptions(out=directory, feature_set=feature_set, channels=channels, sample_rate_hz=20000,
                          snapshot_samples=20480, interval_s=600.0, **options))
    found = load_deployable(directory)
    assert isinstance(found, Baseline)
    return found


def levels(rows: int, channels: int = len(CHANNELS), seed: int = 0, level: float = 0.08) -> np.ndarray:
    """Healthy mean |acceleration| per snapshot and channel: steady levels with a little noise."""
    rng = np.random.default_rng(seed)
    return level * (1 + 0.03 * rng.standard_normal((rows, channels))) * (1 + 0.2 * np.arange(channels))


def learning_reading(i: int, time_us: int, features: np.ndarray | None, names: tuple[str, ...] = ("mean_abs",),
                     fault: str | None = None) -> Reading:
    return Reading(capture_time_us=time_us, snapshot=i, features=features, score=None, channel_errors=None,
                   state=State.SENSOR_FAULT if fault else State.LEARNING, reason=fault, feature_names=names)


def learning_messages(device_id: str, card: Baseline, rows: np.ndarray, start_us: int,
                      faults: dict[int, str] | None = None) -> list[Accepted]:
    """The machine's retained state (learning, on the card) and one telemetry record per row of features
    (channel-major: channels x the card's features), a snapshot every STEP_US; `faults`: row -> sensor fault."""
    spec, faults = card.card.feature_spec, faults or {}
    ref = ModelRef(card.card.id, card.model_sha256)
    found = []
    for i, row in enumerate(rows):
        reading = learning_reading(i, start_us + i * STEP_US, None if i in faults else np.asarray(row, dtype=np.float64),
                                   spec.features, faults.get(i))
        found.append(Accepted("telemetry", device_id, telemetry(device_id, reading, spec.channels, COUNTERS)))
    last = learning_reading(len(rows) - 1, start_us + (len(rows) - 1) * STEP_US, np.asarray(rows[-1]), spec.features)
    found.append(Accepted("state", device_id, state(device_id, last, start_us, spec.channels, ref)))
    return found


def model_message(device_id: str, active: dict[str, str], rollout: dict[str, Any] | None, timestamp: str) -> Accepted:
    """The agent's retained model report (edge.rollout), as the ingest accepts it."""
    return Accepted("model", device_id, model_report(device_id, active, None, rollout, None, timestamp))
