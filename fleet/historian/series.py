"""A machine's telemetry as charts read it: any span in at most MAX_POINTS buckets of min / max / mean.

The point width is the span over MAX_POINTS. The compactor rolls raw telemetry up into telemetry_buckets
(bucket_s, 600 s by default) while keeping it raw for the retention, then deletes it. So:
- a long span (at least COARSE_BUCKETS buckets) reads the buckets, regrouped to the width, plus the few raw rows
  not rolled up yet: 30 days at one record a second cost 4,320 bucket rows per series; a span of more than
  MAX_POINTS / 2 buckets of the second level (6 h, store.SUMMARY_FACTOR) reads those: a year is 1,460;
- a short span groups the raw rows in SQL (one scan for every series at once), plus the buckets from before
  the oldest raw row (a span reaching past the retention).
Each row is counted once either way. A series is named as the buckets name it: `score`, `features/<channel>`,
`channel_errors/<channel>`, `channel_features/<channel>/<feature>`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.historian.store import SUMMARY_FACTOR, Historian, summary_name

MAX_POINTS = 1000
COARSE_BUCKETS = MAX_POINTS // 10  # a span of this many buckets or more is charted from the buckets


@dataclass(frozen=True)
class Point:
    time_us: int  # the bucket's start
    count: int
    min: float
    max: float
    mean: float


@dataclass(frozen=True)
class Span:
    start_us: int
    end_us: int  # exclusive

    @property
    def width_us(self) -> int:
        return max(math.ceil((self.end_us - self.start_us) / MAX_POINTS), 1)


def telemetry_extent(historian: Historian, device_id: str, names: Sequence[str]) -> tuple[int, int] | None:
    """The first and last time this machine has telemetry for, raw or in buckets; None if it has none."""
    per_name = " UNION ALL ".join("SELECT MIN(bucket_us) FROM telemetry_buckets WHERE device_id = ? AND name = ?" for _ in names)
    rows = historian.read(f"SELECT MIN(t), MAX(t) FROM (SELECT MIN(time_us) AS t FROM telemetry WHERE device_id = ? "
                          f"UNION ALL SELECT MAX(time_us) FROM telemetry WHERE device_id = ? UNION ALL {per_name}) extent",
                          [device_id, device_id, *(v for name in names for v in (device_id, name))])
    first, last = rows[0]
    return None if first is None else (int(first), int(last))


def latest_record(historian: Historian, device_id: str) -> dict[str, Any] | None:
    rows = historian.read("SELECT payload FROM telemetry WHERE device_id = ? ORDER BY time_us DESC LIMIT 1", (device_id,))
    return json.loads(rows[0][0]) if rows else None


def series_names(record: dict[str, Any] | None) -> list[str]:
    """The series one telemetry record has: the score, each channel's error and features."""
    if record is None:
        return ["score"]
    names = ["score"] + [f"channel_errors/{c}" for c in record.get("channel_errors", {})]
    names += [f"features/{c}" for c in record.get("features", {})]
    for channel, features in record.get("channel_features", {}).items():
        names += [f"channel_features/{channel}/{feature}" for feature in features]
    return names


def _raw(historian: Historian, device_id: str, names: Sequence[str], span: Span,
         not_rolled_up: bool) -> dict[str, dict[int, list[float]]]:
    dialect = historian.dialect
    values, paths = [], []
    for i, name in enumerate(names):
        if name == "score":
            values.append(f"score AS v{i}")
        else:
            values.append(f"{dialect.json_number('doc')} AS v{i}")
            paths.append(dialect.json_path(name.split("/")))
    aggregates = ", ".join(f"COUNT(v{i}), MIN(v{i}), MAX(v{i}), SUM(v{i})" for i in range(len(names)))
    # vals MATERIALIZED: each value is extracted once per row, not once per aggregate that reads it (3x faster).
    sql = (f"WITH docs AS {dialect.document_cte} (SELECT time_us, score, {dialect.json_document('payload')} AS doc "
           f"FROM telemetry WHERE device_id = ? AND time_us >= ? AND time_us < ?{' AND NOT rolled_up' if not_rolled_up else ''}), "
           f"vals AS MATERIALIZED (SELECT (time_us - CAST(? AS BIGINT)) / CAST(? AS BIGINT) AS b, {', '.join(values)} FROM docs) "
           f"SELECT b, {aggregates} FROM vals GROUP BY b")
    params = [device_id, span.start_us, span.end_us, span.start_us, span.width_us, *paths]
    found: dict[str, dict[int, list[float]]] = {name: {} for name in names}
    for row in historian.read(sql, params):
        for i, name in enumerate(names):
            count = row[1 + 4 * i]
            if count:
                found[name][int(row[0])] = [int(count), *(float(v) for v in row[2 + 4 * i:5 + 4 * i])]
    return found


def _folded(historian: Historian, device_id: str, names: Sequence[str], span: Span, end_us: int,
            level: int | None = None) -> list[tuple]:
    """Buckets that overlap [span start, end_us), regrouped to the span's width; one that began before the span
    counts in its first point. `level`: the first level's bucket_s, to read the second level's instead."""
    stored = {summary_name(name, level) if level else name: name for name in names}
    marks = ", ".join("?" for _ in stored)
    rows = historian.read(
        "SELECT name, CASE WHEN bucket_us < CAST(? AS BIGINT) THEN 0 ELSE (bucket_us - CAST(? AS BIGINT)) / CAST(? AS BIGINT) "
        "END AS b, SUM(count), MIN(value_min), MAX(value_max), SUM(value_sum) FROM telemetry_buckets WHERE device_id = ? "
        f"AND name IN ({marks}) AND bucket_us + bucket_s * 1000000 > ? AND bucket_us < ? GROUP BY name, b",
        [span.start_us, span.start_us, span.width_us, device_id, *stored, span.start_us, end_us])
    return [(stored[name], *rest) for name, *rest in rows]


def _bucket_s(historian: Historian, device_id: str) -> int | None:
    """The first level's bucket (the config's bucket_s when the compactor rolled this machine's telemetry up)."""
    rows = historian.read("SELECT bucket_s FROM telemetry_buckets WHERE device_id = ? AND name = 'score' LIMIT 1", (device_id,))
    return int(rows[0][0]) if rows else None


def _sources(historian: Historian, device_id: str, names: Sequence[str], span: Span) -> tuple[dict, list[tuple]]:
    """The raw groups and the bucket groups of a span, none counting a record the other counts."""
    bucket_s = _bucket_s(historian, device_id)
    length = span.end_us - span.start_us
    if bucket_s is not None and length >= MAX_POINTS // 2 * bucket_s * SUMMARY_FACTOR * 1_000_000:
        return (_raw(historian, device_id, names, span, not_rolled_up=True),
                _folded(historian, device_id, names, span, span.end_us, level=bucket_s))
    if bucket_s is not None and length >= COARSE_BUCKETS * bucket_s * 1_000_000:
        return (_raw(historian, device_id, names, span, not_rolled_up=True),
                _folded(historian, device_id, names, span, span.end_us))
    raw = _raw(historian, device_id, names, span, not_rolled_up=False)
    if bucket_s is None:
        return raw, []
    (oldest,) = historian.read("SELECT MIN(time_us) FROM telemetry WHERE device_id = ?", (device_id,))[0]
    # Buckets only where no raw row is left (compaction deletes whole buckets): none counted twice.
    raw_from = span.end_us if oldest is None else int(oldest) - int(oldest) % (bucket_s * 1_000_000)
    return raw, _folded(historian, device_id, names, span, min(span.end_us, raw_from))


def series(historian: Historian, device_id: str, names: Sequence[str], span: Span) -> dict[str, list[Point]]:
    """Each named series over the span, oldest first, at most MAX_POINTS points each."""
    merged, folded = _sources(historian, device_id, names, span)
    for name, b, count, low, high, total in folded:
        acc = merged[name].get(int(b))
        if acc is None:
            merged[name][int(b)] = [int(count), float(low), float(high), float(total)]
        else:  # a point's raw rows and its buckets: one point
            acc[:] = [acc[0] + int(count), min(acc[1], float(low)), max(acc[2], float(high)), acc[3] + float(total)]
    return {name: [Point(span.start_us + b * span.width_us, int(a[0]), a[1], a[2], a[3] / a[0]) for b, a in sorted(points.items())]
            for name, points in merged.items()}


def feature_rows(historian: Historian, device_id: str, start_us: int | None = None,
                 end_us: int | None = None) -> tuple[list[str], list[tuple[int, list[float | None]]]]:
    """The raw records' per-channel features (the trainer's features table): channel names, (time, values) rows."""
    rows = historian.read("SELECT time_us, payload FROM telemetry WHERE device_id = ? AND time_us >= ? AND time_us < ? "
                          "ORDER BY time_us", (device_id, -(2**62) if start_us is None else start_us,
                                               2**62 if end_us is None else end_us))
    records = [(int(t), json.loads(p)["features"]) for t, p in rows]
    channels = list(records[-1][1]) if records else []
    return channels, [(t, [features.get(c) for c in channels]) for t, features in records]
