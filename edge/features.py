"""The feature contract: what one snapshot of raw samples becomes before the model sees it.

The trainer and the agent both call `snapshot_features`, so features computed from IMS files and
features computed from a replayed serial stream are equal bit for bit (no train/serve skew).
"""
from __future__ import annotations

import numpy as np

FEATURE_SET = "mean_abs"


def mean_abs(counts: np.ndarray, scale: float) -> np.ndarray:
    """Mean absolute value per channel, in physical units (g), of an (n_samples, n_channels) int16 array.

    The sum of absolute counts is an exact integer; one float multiplication turns it into g, so the
    result depends only on the counts and the scale, never on how the samples were chunked.
    """
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(f"expected a non-empty (samples, channels) array, got shape {counts.shape}")
    # int16 -32768 has no positive int16 twin: widen before abs, accumulate in int64.
    total = np.abs(counts.astype(np.int32)).sum(axis=0, dtype=np.int64)
    return total.astype(np.float64) * (float(np.float32(scale)) / counts.shape[0])


def snapshot_features(counts: np.ndarray, scale: float, feature_set: str = FEATURE_SET) -> np.ndarray:
    """Features of one snapshot for the named feature set (the model card records which)."""
    if feature_set != FEATURE_SET:
        raise ValueError(f"unknown feature set {feature_set!r}: expected {FEATURE_SET!r}")
    return mean_abs(counts, scale)
