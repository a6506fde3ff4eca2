"""The feature contract: exact mean absolute values in g, independent of how the samples were chunked."""
from __future__ import annotations

import numpy as np
import pytest

from edge.model.features import mean_abs, snapshot_features


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
