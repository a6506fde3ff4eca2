"""The feature contract: exact mean absolute values in g, independent of how the samples were chunked."""
from __future__ import annotations

import numpy as np
import pytest

from edge.model.features import VIBRATION_FEATURES, feature_columns, mean_abs, snapshot_features


def test_mean_abs_is_the_exact_integer_mean_times_the_scale():
    counts = np.array([[-32768, 1], [32767, -1], [0, 0], [5, -7]], dtype=np.int16)
    sums = np.abs(counts.astype(np.int64)).sum(axis=0)
    assert mean_abs(counts, 0.001).tolist() == (sums * (float(np.float32(0.001)) / 4)).tolist()


def test_extreme_snapshot_sums_stay_exact():
    counts = np.full((20480, 4), -32768, dtype=np.int16)
    assert mean_abs(counts, 1.0).tolist() == [32768.0] * 4


def test_unknown_feature_set_and_empty_snapshot_are_refused():
    with pytest.raises(ValueError, match="unknown feature set 'rms'"):
        snapshot_features(np.ones((4, 1), dtype=np.int16), 0.001, "rms")
    with pytest.raises(ValueError, match="non-empty"):
        mean_abs(np.empty((0, 4), dtype=np.int16), 0.001)


def test_feature_columns_are_channel_major_and_named_as_telemetry_names_them():
    assert feature_columns("mean_abs", ["bearing1", "bearing2"]) == ("bearing1", "bearing2")
    columns = feature_columns("vibration", ["bearing1", "bearing2"])
    assert len(columns) == 2 * len(VIBRATION_FEATURES)
    assert columns[:2] == ("bearing1.mean_abs", "bearing1.rms")
    assert columns[len(VIBRATION_FEATURES) + 5] == "bearing2.velocity_rms"
    with pytest.raises(ValueError, match="unknown feature set 'rms'"):
        feature_columns("rms", ["bearing1"])
