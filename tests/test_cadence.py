"""The scoring cadence: one judgement per interval of stream time, whatever the stream's pace."""
from __future__ import annotations

import numpy as np

from edge.ingest.cadence import Cadence, training_interval_s

S = 1_000_000
T0 = 1_700_000_000 * S


def scored_times(cadence: Cadence, times: list[int]) -> list[int]:
    return [t for t in times if cadence.snapshot(t)[0]]


def test_a_continuous_stream_is_scored_once_per_interval_in_phase():
    # Snapshots every 1.024 s (20,480 samples at 20 kHz), interval 60 s, one hour of stream.
    times = [T0 + round(i * 1.024 * S) for i in range(3600)]
    scored = scored_times(Cadence(60), times)
    assert len(scored) == 3600 * 1.024 // 60 + 1
    spacing = np.diff(scored) / S
    assert spacing.min() >= 57 and spacing.max() <= 61.1  # no drift: the slot grid keeps its phase


def test_a_recording_every_ten_minutes_with_jitter_scores_every_snapshot():
    rng = np.random.default_rng(0)
    times = [T0 + i * 600 * S + int(rng.integers(-10, 10)) * S for i in range(50)]
    assert scored_times(Cadence(600), times) == times


def test_interval_zero_scores_everything_and_reports_every_loss():
    cadence = Cadence(0)
    assert scored_times(cadence, [T0, T0 + 1, T0 + 2]) == [T0, T0 + 1, T0 + 2]
    assert cadence.lost(T0 + 3, "missing_data") == "missing_data"


def test_a_lost_snapshot_is_forgiven_when_a_good_one_follows_in_the_same_slot():
    cadence = Cadence(10)
    assert cadence.snapshot(T0) == (True, None)
    assert cadence.lost(T0 + 10 * S, "missing_data") is None
    assert cadence.snapshot(T0 + 11 * S) == (True, None)  # same slot: scored, nothing missed
    assert cadence.snapshot(T0 + 20 * S) == (True, None)


def test_persistent_loss_costs_one_slot_per_interval():
    cadence = Cadence(10)
    cadence.snapshot(T0)
    missed = [cadence.lost(T0 + i * S, "scale_mismatch") for i in range(1, 45)]
    assert [i + 1 for i, m in enumerate(missed) if m] == [20, 30, 40]
    assert {m for m in missed if m} == {"scale_mismatch"}


def test_time_going_back_starts_a_new_schedule():
    cadence = Cadence(10)
    assert scored_times(cadence, [T0, T0 + 5 * S, T0 + 10 * S]) == [T0, T0 + 10 * S]
    assert cadence.snapshot(T0 + S)[0]  # the sensor restarted (or a replay looped): score at once
    assert cadence.skipped == 1


def test_the_training_interval_is_the_median_spacing():
    times = [T0 + i * 600 * S for i in range(10)] + [T0 + 20_000 * S]
    assert training_interval_s(times) == 600.0
    assert training_interval_s([T0]) is None
