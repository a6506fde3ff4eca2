"""The dashboard's historian queries, the same on SQLite and PostgreSQL: the machine page's charts downsampled
(any span in at most MAX_POINTS min / max / mean points, raw rows grouped in SQL and buckets regrouped to the same
width, nothing counted twice or lost where the two meet) and the alert book's episodes for the labels export."""
from __future__ import annotations

import numpy as np
import pytest
from fleet_helpers import (
    T0_US,
    contract_alert,
    contract_telemetry,
    historian,
    postgres_cluster,  # noqa: F401  (fixture)
)

from fleet.historian.alert_book import AlertBookError, alert_rows, close, failure_episodes
from fleet.historian.series import MAX_POINTS, Span, latest_record, series, series_names, telemetry_extent
from fleet.payloads import Accepted

__all__ = ["historian"]  # the parametrised fixture
RECORDS = 3000  # one a second: 50 minutes


def stored(historian) -> np.ndarray:
    records = [contract_telemetry("pump-1", i) for i in range(RECORDS)]
    historian.store([Accepted("telemetry", "pump-1", r) for r in records], [], T0_US)
    return np.array([r["score"] for r in records])


def check_totals(points, scores: np.ndarray) -> None:
    counts = np.array([p.count for p in points])
    assert counts.sum() == scores.size and 0 < len(points) <= MAX_POINTS
    assert min(p.min for p in points) == scores.min() and max(p.max for p in points) == scores.max()
    assert np.isclose(sum(p.mean * p.count for p in points), scores.sum())


def test_a_raw_span_is_grouped_in_sql_into_at_most_max_points(historian):
    scores = stored(historian)
    span = Span(T0_US, T0_US + RECORDS * 1_000_000)
    points = series(historian, "pump-1", ["score", "channel_errors/bearing2"], span)
    check_totals(points["score"], scores)
    assert span.width_us == 3_000_000 and len(points["score"]) == MAX_POINTS
    second = points["score"][1]  # records 3, 4 and 5
    assert (second.time_us, second.count, second.min, second.max) == (T0_US + 3_000_000, 3, 0.03, 0.05)
    assert np.isclose(second.mean, 0.04)
    assert np.isclose(points["channel_errors/bearing2"][1].max, 0.025)  # half the score, per contract_telemetry


def test_folded_buckets_and_raw_rows_meet_without_loss(historian):
    scores = stored(historian)
    newest = T0_US + (RECORDS - 1) * 1_000_000
    folded = historian.compact(raw_retention_us=1500 * 1_000_000, bucket_s=600, now=newest)
    assert 0 < folded < RECORDS
    for span in (Span(T0_US, T0_US + RECORDS * 1_000_000), Span(T0_US - 365 * 86400 * 1_000_000, newest + 1)):
        check_totals(series(historian, "pump-1", ["score"], span)["score"], scores)
    assert telemetry_extent(historian, "pump-1", ["score"]) == (T0_US - T0_US % 600_000_000, newest)  # the first bucket's start
    assert series_names(latest_record(historian, "pump-1"))[:3] == \
        ["score", "channel_errors/bearing1", "channel_errors/bearing2"]


def test_a_span_in_the_folded_past_is_the_buckets_themselves(historian):
    scores = stored(historian)
    historian.compact(raw_retention_us=1, bucket_s=600, now=T0_US + 10 * 86400 * 1_000_000)
    first_bucket = T0_US - T0_US % 600_000_000
    boundary = first_bucket + 600_000_000
    assert historian.telemetry("pump-1", end_us=boundary) == []  # folded: no raw record left before the boundary
    points = series(historian, "pump-1", ["score"], Span(T0_US, boundary))["score"]
    assert [p.count for p in points] == [(boundary - T0_US) // 1_000_000]  # one bucket, one point
    assert (points[0].min, points[0].max) == (scores[: points[0].count].min(), scores[: points[0].count].max())


def test_rolled_up_rows_are_counted_once_by_coarse_and_fine_spans_alike(historian):
    scores = stored(historian)
    assert historian.roll_up(bucket_s=60) == RECORDS and historian.roll_up(bucket_s=60) == 0
    whole = Span(T0_US, T0_US + RECORDS * 1_000_000)  # 50 buckets of 60 s: charted from the raw rows
    day = Span(T0_US - 86400 * 1_000_000, T0_US + RECORDS * 1_000_000)  # 1,490 buckets of 60 s: from those
    year = Span(T0_US - 365 * 86400 * 1_000_000, T0_US + RECORDS * 1_000_000)  # from the second level's (36 min)
    points = {span: series(historian, "pump-1", ["score"], span)["score"] for span in (whole, day, year)}
    for found in points.values():
        check_totals(found, scores)
    assert len(points[whole]) == MAX_POINTS and len(points[day]) == 34 and len(points[year]) <= 3
    late = contract_telemetry("pump-1", RECORDS, time_us=T0_US + 1500 * 1_000_000 + 500_000)  # between two records
    historian.store([Accepted("telemetry", "pump-1", late)], [], T0_US)
    with_late = np.append(scores, late["score"])
    check_totals(series(historian, "pump-1", ["score"], year)["score"], with_late)  # raw, not rolled up yet
    assert historian.roll_up(bucket_s=60) == 1
    check_totals(series(historian, "pump-1", ["score"], year)["score"], with_late)
    # past the retention the rolled-up rows are deleted, not folded again: the buckets count each once
    historian.compact(raw_retention_us=1, bucket_s=60, now=T0_US + 10 * 86400 * 1_000_000)
    check_totals(series(historian, "pump-1", ["score"], year)["score"], with_late)
    check_totals(series(historian, "pump-1", ["score"], whole)["score"], with_late)


def test_failure_episodes_run_from_a_closed_alert_to_the_return_to_normal(historian):
    # pump-1's alerts one second apart: warning, alarm, normal, warning, alarm, normal, warning
    historian.store([Accepted("alert", "pump-1", contract_alert("pump-1", i)) for i in range(7)], [], T0_US)
    modes = {0: "outer_race", 1: "false_alarm", 3: "sensor_fault", 4: "ball", 6: "other"}
    for i, mode in modes.items():
        close(historian, contract_alert("pump-1", i)["id"], "otto", mode, "")
    second = 1_000_000
    assert failure_episodes(historian, "pump-1") == [(T0_US, T0_US + 2 * second), (T0_US + 4 * second, T0_US + 5 * second),
                                                      (T0_US + 6 * second, None)]  # the last one still going
    with pytest.raises(AlertBookError, match="was already closed"):
        close(historian, contract_alert("pump-1", 0)["id"], "ada", "cage", "")
    assert [a.id for a in alert_rows(historian, "closed")] == [contract_alert("pump-1", i)["id"] for i in (6, 4, 3, 1, 0)]
    assert alert_rows(historian, "active") == []  # every raising alert closed; returns to normal are no alerts here


def test_a_return_to_learning_ends_an_episode_as_a_return_to_normal_does(historian):
    # a machine on a baseline card (issue 20): its sensor fault is an alert to act on, its return to learning is not
    fault = contract_alert("pump-1", 0) | {"state": "sensor_fault", "previous_state": "learning"}
    back = contract_alert("pump-1", 1) | {"state": "learning", "previous_state": "sensor_fault"}
    historian.store([Accepted("alert", "pump-1", alert) for alert in (fault, back)], [], T0_US)
    assert [a.id for a in alert_rows(historian, "active")] == [fault["id"]]
    assert [a.id for a in alert_rows(historian, "unacknowledged")] == [fault["id"]]
