"""What `cm-train fit` and `cm-train evaluate` are asked to do, as frozen options objects; every default is
stated here once, and the command line's flags take theirs from these fields.

How a recording is read is firmware_bridge.recording's `RecordingSpec` (--format, --channels, --sample-rate,
--snapshot-samples, shared with cm-replay); a `DatasetSpec` adds the features to compute from it, `FitOptions`
how to train and `EvaluateOptions` what to report. Kept free of TensorFlow, so `cm-train --help` is quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.model.bearing import BearingGeometry
from edge.model.features import FEATURE_SET
from edge.scoring.diagnosis import DEFAULT_ISO_GROUP
from firmware_bridge.recording.spec import RecordingSpec
from trainer.spec_card import SpecCard

DEFAULT_WINDOW = 2  # chosen by evaluation on synthetic runs: see trainer/README.md


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(RecordingSpec):
    """A recording read as RecordingSpec says, and the features computed from it; or a features table."""

    feature_set: str = FEATURE_SET  # see edge/model/features.py
    bearing: BearingGeometry | None = None  # vibration set: --bearing
    shaft_rpm: float | None = None  # vibration set: --shaft-rpm
    label_column: str | None = None  # features tables only: the column marking anomalies
    feature_spec: SpecCard | None = None  # --feature-spec: a features table's columns are read by this card's spec


@dataclass(frozen=True, kw_only=True)
class FitOptions(DatasetSpec):
    out: Path
    train_until: np.datetime64 | None = None
    train_fraction: float = 0.5
    window: int = DEFAULT_WINDOW
    epochs: int = 100
    seed: int = 0
    threshold_rule: str = "calibration"
    target_precision: float | None = None  # labelled tables: the lowest threshold reaching this precision
    holdout_fraction: float = 0.2
    batch_size: int = 16
    patience: int = 10
    verbose: int = 2


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(RecordingSpec):
    """The recording options left None are read from the card: the input is read as the training data was."""

    failure_at: np.datetime64 | None = None  # for the lead time; None: the last snapshot
    train_until: np.datetime64 | None = None  # None: the card's training span
    iso_group: str = DEFAULT_ISO_GROUP  # edge.scoring.diagnosis.ISO_GROUPS: the vibration set's velocity zones
    label_column: str | None = None  # a features table's labels (1 = anomaly) to score against; None: the card's
