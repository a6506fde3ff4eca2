"""Sensor checks on raw snapshots and on feature tables."""
from __future__ import annotations

import numpy as np

from edge.scoring.sensor import SensorLimits, check_counts, check_features

NAMES = ["bearing1", "bearing2", "bearing3", "bearing4"]


def healthy(rng, n=20480):
    return rng.normal(0, 80, size=(n, 4)).astype(np.int16)


def test_healthy_snapshot_passes():
    assert check_counts(healthy(np.random.default_rng(1)), NAMES) is None


def test_flat_channel_is_named():
    counts = healthy(np.random.default_rng(2))
    counts[:, 2] = np.random.default_rng(3).integers(-1, 2, size=counts.shape[0])  # +-1 count of noise
    assert check_counts(counts, NAMES) == "flatline:bearing3"


def test_clipped_channel_is_named():
    counts = healthy(np.random.default_rng(4))
    counts[::100, 0] = 32767
    assert check_counts(counts, NAMES) == "clipping:bearing1"


def test_feature_far_below_healthy_minimum_is_a_dropout():
    healthy_min = [0.06, 0.07, 0.08, 0.06]
    assert check_features(np.array([0.07, 0.08, 0.09, 0.07]), healthy_min, NAMES) is None
    assert check_features(np.array([0.07, 0.002, 0.09, 0.07]), healthy_min, NAMES) == "dropout:bearing2"


def test_signed_features_never_drop_out():
    # A table's signed feature (healthy minimum below zero) near zero is an ordinary reading.
    assert check_features(np.array([0.0, -3.0]), [-2.5, -4.0], NAMES[:2]) is None


def test_clipping_is_judged_against_the_sensors_full_scale():
    # A +-2 g accelerometer at 1 mg per count saturates at 2,000 counts, far below the int16 limit.
    rng = np.random.default_rng(1)
    counts = rng.integers(-1500, 1500, size=(4096, 2), dtype=np.int16)
    counts[::50, 1] = 2000  # 2 % of channel b sits at the sensor's range
    assert check_counts(counts, ["a", "b"]) is None  # the int16 limit alone misses it
    limits = SensorLimits(full_scale_g=2.0)
    assert check_counts(counts, ["a", "b"], limits, scale=0.001) == "clipping:b"
    assert check_counts(counts, ["a", "b"], limits, scale=0.0001) is None  # 2 g is 20,000 counts of 0.1 mg
