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
    # abs(-32768) wraps to -32768 in int16, whose uint16 view is 32768: the magnitudes are exact.
    magnitudes = np.abs(counts).view(np.uint16)
    # A float64 matrix-vector product sums integers below 2**53 exactly, whatever the order, and BLAS does
    # it several times faster than numpy's column-wise integer reduction of a (n, 4) array.
    total = np.ones(counts.shape[0]) @ magnitudes
    return total * (float(np.float32(scale)) / counts.shape[0])


def snapshot_features(counts: np.ndarray, scale: float, feature_set: str = FEATURE_SET) -> np.ndarray:
    """Features of one snapshot for the named feature set (the model card records which)."""
    if feature_set != FEATURE_SET:
        raise ValueError(f"unknown feature set {feature_set!r}: expected {FEATURE_SET!r}")
    return mean_abs(counts, scale)
