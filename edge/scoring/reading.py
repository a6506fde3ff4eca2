"""What the device concluded about one snapshot: the pipeline's output, the payloads' input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.scoring.detector import State
from edge.scoring.diagnosis import Defect


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
    top_channel: int | None = None  # index of the channel that drove the state (edge.scoring.stream); None: unknown
    feature_names: tuple[str, ...] = ("mean_abs",)  # F per channel; features are channel-major (C x F)
    defect: Defect | None = None  # vibration set, in warning or alarm: what the envelope lines point to
    iso_zones: dict[str, str] | None = None  # vibration set: ISO 20816 zone of each channel's velocity RMS
