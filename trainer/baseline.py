"""`cm-train baseline`: a baseline card, the feature spec alone, for a machine that has no model yet.

The agent runs it (edge.model.bundle.Baseline) to check the sensor, compute the features and report
`learning` while the machine's baseline is gathered; a model trained later replaces it (edge.rollout). The
spec comes from the flags, or from a recording's header where `cm-train fit` reads it (channels, sample rate,
snapshot length, scale, cadence): no features are computed and no TensorFlow is loaded.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from edge.ingest.cadence import training_interval_s
from edge.ingest.clock import iso_time
from edge.model.bearing import BearingGeometry
from edge.model.bundle import BaselineCard, BundleError, FeatureSpec, write_baseline
from edge.model.features import FEATURE_SETS
from firmware_bridge.recording import RecordingError, RecordingSpec, open_recording

# No model reads a window of feature vectors yet; the card keeps the key every feature spec has.
BASELINE_WINDOW = 1


@dataclass(frozen=True, kw_only=True)
class BaselineOptions:
    out: Path
    feature_set: str
    recording: Path | None = None  # read channels, sample rate, snapshot length, scale and cadence from it
    reading: RecordingSpec = RecordingSpec()  # how to read `recording` (--format, --channels, ...)
    channels: tuple[str, ...] | None = None  # without a recording: the sensor's channel names, in frame order
    sample_rate_hz: int | None = None
    snapshot_samples: int | None = None
    scale: float | None = None  # g per count; None: the agent takes the first stream's
    interval_s: float | None = None  # the cadence the agent scores at; None: every snapshot
    bearing: BearingGeometry | None = None
    shaft_rpm: float | None = None
    min_level_g: float | None = None  # see edge.model.bundle.BaselineCard


def write(options: BaselineOptions) -> Path:
    """Write the baseline card into `options.out` (created); returns the card's path. Errors name the flag or key."""
    spec = _spec(options)
    draft = BaselineCard(id="baseline-draft", created=iso_time(time.time_ns() // 1000), feature_spec=spec,
                         provenance=_provenance(options), min_level_g=options.min_level_g)
    source = str(options.out / "model_card.json")
    card = BaselineCard.from_dict(draft.to_dict(), source=source)  # the agent's own checks, before anything is written
    return write_baseline(BaselineCard(id=content_id(card), created=card.created, feature_spec=card.feature_spec,
                                       provenance=card.provenance, min_level_g=card.min_level_g), options.out)


def content_id(card: BaselineCard) -> str:
    """Two baseline cards share an id only if they read and compute alike."""
    basis = {"feature_spec": card.feature_spec.to_dict(), "min_level_g": card.min_level_g}
    return f"baseline-{hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]}"


def _spec(options: BaselineOptions) -> FeatureSpec:
    if options.feature_set not in FEATURE_SETS:
        raise BundleError(f"--feature-set: expected one of {', '.join(FEATURE_SETS)}, got {options.feature_set!r}")
    channels, rate, samples, interval, scale = _stream(options)
    return FeatureSpec(feature_set=options.feature_set, channels=channels, sample_rate_hz=rate,
                       snapshot_samples=samples, window=BASELINE_WINDOW, snapshot_interval_s=interval,
                       features=FEATURE_SETS[options.feature_set], bearing=options.bearing, shaft_rpm=options.shaft_rpm,
                       scale=scale)


def _stream(options: BaselineOptions) -> tuple[tuple[str, ...], int, int, float | None, float | None]:
    """Channels, sample rate, snapshot length, cadence and scale: from the recording, else from the flags."""
    if options.recording is not None:
        try:
            recording = open_recording(options.recording, options.reading)
        except RecordingError as error:
            raise BundleError(str(error)) from None
        times = [int(moment.timestamp() * 1_000_000) for moment in recording.times]
        return (recording.channels, recording.sample_rate_hz, recording.snapshot_samples,
                options.interval_s if options.interval_s is not None else training_interval_s(times),
                options.scale if options.scale is not None else recording.scale)
    for flag, value in (("--channels", options.channels), ("--sample-rate", options.sample_rate_hz),
                        ("--snapshot-samples", options.snapshot_samples)):
        if not value:
            raise BundleError(f"{flag}: required without a recording to read it from")
    assert options.channels is not None and options.sample_rate_hz and options.snapshot_samples
    return options.channels, options.sample_rate_hz, options.snapshot_samples, options.interval_s, options.scale


def _provenance(options: BaselineOptions) -> dict[str, str]:
    return {"written_by": "cm-train baseline",
            "spec_from": "flags" if options.recording is None else f"recording {options.recording}"}
