"""Sensor checks: is this snapshot a reading of the machine at all?

Run before scoring. A dead or detached sensor reads near zero, a saturated one sits at full scale; both
must surface as `sensor_fault`, never as a healthy reading and never as a bearing alarm.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SensorLimits:
    flatline_counts: int = 2  # peak-to-peak (counts) at or below which a channel is flat: a stuck sensor
    full_scale_counts: int = 32767  # |count| at or beyond which a sample is clipped
    clip_fraction: float = 0.001  # share of clipped samples that makes a channel clipped
    dropout_ratio: float = 0.2  # feature below this share of the healthy minimum: a dropout
    full_scale_g: float | None = None  # the accelerometer's range ([sensor] full_scale_g); None: the int16 limit

    def clip_counts(self, scale: float | None) -> int:
        """|count| at or beyond which a sample is clipped: the sensor's range in counts, at most the int16 limit."""
        if self.full_scale_g is None or not scale or scale <= 0:
            return self.full_scale_counts
        # A hair below the range: a saturated sensor reads its last count, which may round just under it.
        return max(1, min(self.full_scale_counts, int(self.full_scale_g / scale * 0.999)))


def check_counts(counts: np.ndarray, channel_names: Sequence[str], limits: SensorLimits = SensorLimits(),
                 scale: float | None = None) -> str | None:
    """Checks on the raw (samples, channels) int16 snapshot; returns e.g. 'flatline:bearing3' or None.

    `scale` (g per count) turns `limits.full_scale_g` into counts; without it clipping means the int16 limit.
    """
    full_scale = limits.clip_counts(scale)
    # One row per channel: numpy reduces contiguous rows far faster than the columns of an (n, 4) array.
    rows = np.ascontiguousarray(counts.T)
    high = rows.max(axis=1).astype(np.int32)
    low = rows.min(axis=1).astype(np.int32)
    flat = high - low <= limits.flatline_counts
    if flat.any():
        return _reason("flatline", flat, channel_names)
    if max(high.max(), -low.min()) < full_scale:
        return None  # the clipped share is only counted when a sample reaches full scale
    clipped = (np.abs(rows.astype(np.int32)) >= full_scale).mean(axis=1) >= limits.clip_fraction
    return _reason("clipping", clipped, channel_names) if clipped.any() else None


def check_features(
    features: np.ndarray,
    healthy_min: Sequence[float] | np.ndarray,
    channel_names: Sequence[str],
    limits: SensorLimits = SensorLimits(),
) -> str | None:
    """A feature far below the healthy range (a dead sensor reads near zero) is a dropout.

    Only magnitude channels (healthy minimum above zero) can drop out: a signed feature near zero is normal.
    Columns are channel-major (C channels x F features): a channel drops out when its first feature
    (the mean absolute value in both feature sets) does; ratios such as kurtosis say nothing about level.
    """
    per_channel = len(features) // max(1, len(channel_names))
    floor = np.asarray(healthy_min, dtype=np.float64)[::per_channel]
    level = np.asarray(features)[::per_channel]
    low = (floor > 0) & (level < limits.dropout_ratio * floor)
    return _reason("dropout", low, channel_names) if low.any() else None


class SensorCheck:
    """Every check of one snapshot in one place: the raw counts first (flatline, clipping), then the features
    (dropout against the card's healthy minimum). Callers without the raw counts (training, `cm-train
    evaluate`, which checked the counts when they loaded the files) check the features alone."""

    def __init__(self, channel_names: Sequence[str], healthy_min: Sequence[float] | np.ndarray,
                 limits: SensorLimits = SensorLimits()) -> None:
        self.channel_names = channel_names
        self.healthy_min = np.asarray(healthy_min, dtype=np.float64)
        self.limits = limits

    def snapshot(self, counts: np.ndarray, scale: float | None, features: np.ndarray) -> str | None:
        """The reason the snapshot is no reading of the machine, e.g. 'flatline:bearing3', or None."""
        return check_counts(counts, self.channel_names, self.limits, scale) or self.features(features)

    def features(self, features: np.ndarray) -> str | None:
        return check_features(features, self.healthy_min, self.channel_names, self.limits)


def _reason(kind: str, mask: np.ndarray, channel_names: Sequence[str]) -> str:
    names = ",".join(name for name, bad in zip(channel_names, mask) if bad)
    return f"{kind}:{names}"
