"""The historian: machines' current picture, every alert once, telemetry raw and in buckets.

One connection, shared by the service's threads under a lock; every write is one transaction. Written once
for SQLite and PostgreSQL: the differences are in `dialect`.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet.historian.dialect import Dialect, HistorianError
from fleet.historian.schema import MIGRATIONS, SCHEMA_VERSION_TABLE, VERSION
from fleet.payloads import Accepted

ROLLBACK_SUFFIX = "-rollback"  # a rollback's desired documents name the rollout with it (fleet/historian/rollouts.py)
COMPACT_CHUNK = 20_000  # raw rows folded per transaction: bounds memory and how long the ingest waits
SUMMARY_FACTOR = 36  # a second level of buckets, 36 of the first (6 h of 600 s), for the charts of long spans


def summary_name(name: str, bucket_s: int) -> str:
    """The second level's series `name`, in the same table: `score@21600`."""
    return f"{name}@{bucket_s * SUMMARY_FACTOR}"


def parse_time(text: str) -> int:
    """Microseconds since the epoch of the agents' ISO 8601 UTC time (edge.ingest.clock.iso_time)."""
    moment = datetime.fromisoformat(text)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Rejection:
    reason: str
    topic: str
    detail: str


@dataclass(frozen=True)
class Machine:
    device_id: str
    first_seen_us: int
    last_seen_us: int
    status: str | None
    state: str | None
    state_since_us: int | None
    state_us: int | None
    score: float | None
    top_channel: str | None
    reason: str | None
    model_id: str | None
    health_problem: bool | None
    state_json: dict[str, Any] | None
    health_json: dict[str, Any] | None


@dataclass(frozen=True)
class Bucket:
    bucket_us: int
    count: int
    min: float
    max: float
    mean: float


def telemetry_values(payload: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The numbers of one telemetry record that the buckets aggregate, by name."""
    if payload.get("score") is not None:
        yield "score", float(payload["score"])
    for group in ("features", "channel_errors"):
        for channel, value in payload.get(group, {}).items():
            yield f"{group}/{channel}", float(value)
    for channel, features in payload.get("channel_features", {}).items():
        for feature, value in features.items():
            yield f"channel_features/{channel}/{feature}", float(value)


class Historian:
    def __init__(self, connect: Callable[[], Any], dialect: Dialect, where: str) -> None:
        self._connect = connect
        self._db = connect()
        self.dialect = dialect
        self.where = where  # the database, for messages (never with a password)
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(self.dialect.sql(sql), params)

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self._db.cursor().executemany(self.dialect.sql(sql), rows)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return list(self._execute(sql, params).fetchall())

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one query (SQL with `?` markers): the dashboard's queries (fleet/historian/views.py)."""
        return self._query(sql, params)

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Statements in one transaction; returns each one's changed row count."""
        with self._lock, self.dialect.transaction(self._db):
            return [self._execute(sql, params).rowcount for sql, params in statements]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reconnect(self) -> None:
        """A new connection after a failure (a restarted PostgreSQL, a dropped socket); raises if it cannot."""
        with self._lock:
            try:
                self._db.close()
            except Exception:  # the old connection is already broken; closing it is only tidying up
                pass
            self._db = self._connect()

    # -- schema ------------------------------------------------------------------------------------------
    def version(self) -> int:
        self._execute(SCHEMA_VERSION_TABLE)
        row = self._execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Bring the schema to VERSION, one transaction per migration. Returns the version found before."""
        with self._lock, self.dialect.transaction(self._db):
            self.dialect.lock_schema(self._db)
            found = self.version()
            if found > VERSION:
                raise HistorianError(f"{self.where}: schema version {found} is newer than this cm-fleet knows "
                                     f"({VERSION}); upgrade cm-fleet")
            for version in range(found + 1, VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._execute(statement)
                self._execute("INSERT INTO schema_version (version, applied_us) VALUES (?, ?)", (version, now_us()))
        return found

    # -- ingest ------------------------------------------------------------------------------------------
    def store(self, accepted: Sequence[Accepted], rejected: Sequence[Rejection], received_us: int) -> None:
        """One batch in one transaction: when this returns, every message of it is durable."""
        with self._lock, self.dialect.transaction(self._db):
            devices = {message.device_id for message in accepted}
            self._executemany("INSERT INTO machines (device_id, first_seen_us, last_seen_us) VALUES (?, ?, ?) "
                              "ON CONFLICT (device_id) DO NOTHING", [(d, received_us, received_us) for d in devices])
            self._executemany("UPDATE machines SET last_seen_us = ? WHERE device_id = ? AND last_seen_us < ?",
                              [(received_us, d, received_us) for d in devices])
            by_kind: dict[str, list[Accepted]] = {}
            for message in accepted:
                by_kind.setdefault(message.kind, []).append(message)
            self._store_alerts(by_kind.get("alert", []), received_us)
            self._store_telemetry(by_kind.get("telemetry", []))
            self._store_states(by_kind.get("state", []))
            self._store_health(by_kind.get("health", []))
            self._store_models(by_kind.get("model", []))
            self._executemany("UPDATE machines SET status = ?, status_us = ? WHERE device_id = ?",
                              [(m.payload, received_us, m.device_id) for m in by_kind.get("status", [])])
            self._count_rejections(rejected, received_us)

    def _store_alerts(self, alerts: list[Accepted], received_us: int) -> None:
        def row(alert: dict[str, Any]) -> tuple:
            defect = alert.get("defect", {}).get("kind")
            return (alert["id"], alert["device_id"], parse_time(alert["timestamp"]), alert["state"],
                    alert["previous_state"], alert["score"], alert["warning_threshold"], alert["alarm_threshold"],
                    alert["top_channel"], alert["reason"], alert["model"]["id"], alert["model"]["sha256"], defect,
                    json.dumps(alert, separators=(",", ":")), received_us)

        self._executemany(
            "INSERT INTO alerts (id, device_id, time_us, state, previous_state, score, warning_threshold, "
            "alarm_threshold, top_channel, reason, model_id, model_sha256, defect, payload, received_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            [row(m.payload) for m in alerts])

    def _store_telemetry(self, records: list[Accepted]) -> None:
        self._executemany(
            "INSERT INTO telemetry (device_id, time_us, snapshot, state, score, payload) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, time_us) DO NOTHING",
            [(t["device_id"], parse_time(t["timestamp"]), t["snapshot"], t["state"], t["score"],
              json.dumps(t, separators=(",", ":"))) for t in (m.payload for m in records)])

    def _store_states(self, states: list[Accepted]) -> None:
        # Retained states arrive again after every reconnect, possibly after a newer one: the older never wins.
        self._executemany(
            "UPDATE machines SET state = ?, state_since_us = ?, state_us = ?, score = ?, top_channel = ?, reason = ?, "
            "model_id = ?, model_sha256 = ?, state_json = ? WHERE device_id = ? AND (state_us IS NULL OR state_us <= ?)",
            [(s["state"], parse_time(s["since"]), parse_time(s["timestamp"]), s["score"], s["top_channel"],
              s["reason"], s["model"]["id"], s["model"]["sha256"], json.dumps(s, separators=(",", ":")),
              s["device_id"], parse_time(s["timestamp"])) for s in (m.payload for m in states)])

    def _store_health(self, reports: list[Accepted]) -> None:
        self._executemany(
            "UPDATE machines SET health_problem = ?, health_us = ?, health_json = ? "
            "WHERE device_id = ? AND (health_us IS NULL OR health_us <= ?)",
            [(h["problem"], parse_time(h["timestamp"]), json.dumps(h, separators=(",", ":")), h["device_id"],
              parse_time(h["timestamp"])) for h in (m.payload for m in reports)])

    def _store_models(self, reports: list[Accepted]) -> None:
        """The agents' retained model reports: the machine's, and the status of the rollout the report names
        (fleet/historian/rollouts.py). Retained, they arrive again after every reconnect: the older never wins."""
        self._executemany(
            "UPDATE machines SET model_json = ?, model_us = ? WHERE device_id = ? AND (model_us IS NULL OR model_us <= ?)",
            [(json.dumps(r, separators=(",", ":")), parse_time(r["timestamp"]), r["device_id"], parse_time(r["timestamp"]))
             for r in (m.payload for m in reports)])
        rollouts = [(r["device_id"], r["rollout"]) for r in (m.payload for m in reports) if r["rollout"] is not None]
        back = [(d, o) for d, o in rollouts if o["rollout"].endswith(ROLLBACK_SUFFIX)]
        self._executemany(
            "UPDATE rollout_devices SET status = ?, reason = ?, report_us = ?, updated_us = ? WHERE rollout_id = ? "
            "AND device_id = ? AND status <> 'queued' AND (report_us IS NULL OR report_us <= ?)",
            [(o["status"], o["reason"], parse_time(o["updated"]), now_us(), o["rollout"], d, parse_time(o["updated"]))
             for d, o in rollouts if (d, o) not in back])
        self._executemany(
            "UPDATE rollout_devices SET rollback_status = ?, rollback_reason = ?, updated_us = ? WHERE rollout_id = ? "
            "AND device_id = ? AND rollback_status IS NOT NULL",
            [(o["status"], o["reason"], now_us(), o["rollout"].removesuffix(ROLLBACK_SUFFIX), d) for d, o in back])

    def _count_rejections(self, rejected: Sequence[Rejection], received_us: int) -> None:
        counts: dict[str, tuple[int, Rejection]] = {}
        for rejection in rejected:
            counts[rejection.reason] = (counts.get(rejection.reason, (0, rejection))[0] + 1, rejection)
        self._executemany(
            "INSERT INTO rejections (reason, count, last_topic, last_detail, last_us) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = rejections.count + excluded.count, "
            "last_topic = excluded.last_topic, last_detail = excluded.last_detail, last_us = excluded.last_us",
            [(reason, n, last.topic, last.detail, received_us) for reason, (n, last) in counts.items()])

    # -- downsampling ------------------------------------------------------------------------------------
    def roll_up(self, bucket_s: int) -> int:
        """Count every raw record not yet counted into its bucket, keeping it raw. Returns the records rolled up.

        A chart of a long span then reads the buckets alone (fleet/historian/series.py); the raw rows stay for the
        short spans and the exports until `compact` deletes them past the retention.
        """
        rolled = 0
        for (device_id,) in self._query("SELECT DISTINCT device_id FROM telemetry WHERE NOT rolled_up"):
            while (count := self._roll_up_chunk(device_id, bucket_s)) > 0:
                rolled += count
        return rolled

    def _roll_up_chunk(self, device_id: str, bucket_s: int) -> int:
        with self._lock, self.dialect.transaction(self._db):
            rows = self._execute("SELECT time_us, payload FROM telemetry WHERE device_id = ? AND NOT rolled_up "
                                 "ORDER BY time_us LIMIT ?", (device_id, COMPACT_CHUNK)).fetchall()
            if not rows:
                return 0
            self._fold(device_id, rows, bucket_s)
            self._execute("UPDATE telemetry SET rolled_up = TRUE WHERE device_id = ? AND NOT rolled_up AND time_us <= ?",
                          (device_id, int(rows[-1][0])))
            return len(rows)

    def compact(self, raw_retention_us: int, bucket_s: int, now: int | None = None) -> int:
        """Fold raw telemetry older than the retention into buckets and delete it. Returns the rows folded.

        The retention counts back from each machine's newest record (or from now, if that is later than now):
        a replayed or long-silent machine keeps its last span raw, and a clock far ahead compacts nothing early.
        Only whole buckets are folded; a record that arrives late for a folded bucket is merged into it. Rows
        already rolled up (`roll_up`) are only deleted: their bucket counts them.
        """
        now = now_us() if now is None else now
        bucket_us = bucket_s * 1_000_000
        folded = 0
        for device_id, newest in self._query("SELECT device_id, MAX(time_us) FROM telemetry GROUP BY device_id"):
            cutoff = min(now, int(newest)) - raw_retention_us
            cutoff -= cutoff % bucket_us
            while (count := self._compact_chunk(device_id, cutoff, bucket_s)) > 0:
                folded += count
        return folded

    def _compact_chunk(self, device_id: str, cutoff: int, bucket_s: int) -> int:
        with self._lock, self.dialect.transaction(self._db):
            rows = self._execute("SELECT time_us, payload, rolled_up FROM telemetry WHERE device_id = ? AND time_us < ? "
                                 "ORDER BY time_us LIMIT ?", (device_id, cutoff, COMPACT_CHUNK)).fetchall()
            if not rows:
                return 0
            self._fold(device_id, [(time_us, payload) for time_us, payload, rolled in rows if not rolled], bucket_s)
            last = int(rows[-1][0])
            self._execute("DELETE FROM telemetry WHERE device_id = ? AND time_us <= ?", (device_id, last))
            return len(rows)

    def _fold(self, device_id: str, rows: Sequence[tuple[Any, Any]], bucket_s: int) -> None:
        """Add (time_us, payload) records to their buckets (inside the caller's transaction)."""
        bucket_us = bucket_s * 1_000_000
        buckets: dict[tuple[str, int], list[float]] = {}  # (name, start) -> [count, min, max, sum]
        for time_us, payload in rows:
            start = int(time_us) - int(time_us) % bucket_us
            for name, value in telemetry_values(json.loads(payload)):
                acc = buckets.setdefault((name, start), [0, value, value, 0.0])
                acc[0] += 1
                acc[1], acc[2], acc[3] = min(acc[1], value), max(acc[2], value), acc[3] + value
        least, greatest = self.dialect.least, self.dialect.greatest
        self._executemany(
            "INSERT INTO telemetry_buckets (device_id, name, bucket_us, bucket_s, count, value_min, value_max, "
            "value_sum) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, name, bucket_us) DO UPDATE SET "
            "count = telemetry_buckets.count + excluded.count, "
            f"value_min = {least}(telemetry_buckets.value_min, excluded.value_min), "
            f"value_max = {greatest}(telemetry_buckets.value_max, excluded.value_max), "
            "value_sum = telemetry_buckets.value_sum + excluded.value_sum",
            [(device_id, name, start, bucket_s, int(a[0]), a[1], a[2], a[3]) for (name, start), a in buckets.items()])
        if buckets:
            self._summarise(device_id, min(s for _, s in buckets), max(s for _, s in buckets), bucket_s)

    def _summarise(self, device_id: str, first_us: int, last_us: int, bucket_s: int) -> None:
        """Recompute the second level's buckets over [first, last] from the first level's (same transaction)."""
        summary_us = bucket_s * SUMMARY_FACTOR * 1_000_000
        start, end = first_us - first_us % summary_us, last_us - last_us % summary_us + summary_us
        self._execute(
            "INSERT INTO telemetry_buckets (device_id, name, bucket_us, bucket_s, count, value_min, value_max, value_sum) "
            "SELECT device_id, name || CAST(? AS TEXT), b, CAST(? AS BIGINT), SUM(count), MIN(value_min), MAX(value_max), "
            "SUM(value_sum) FROM (SELECT device_id, name, bucket_us / CAST(? AS BIGINT) * CAST(? AS BIGINT) AS b, count, "
            "value_min, value_max, value_sum FROM telemetry_buckets WHERE device_id = ? AND bucket_s = ? AND name NOT LIKE ? "
            "AND bucket_us >= ? AND bucket_us < ?) first_level WHERE TRUE GROUP BY device_id, name, b "
            "ON CONFLICT (device_id, name, bucket_us) DO UPDATE SET bucket_s = excluded.bucket_s, count = excluded.count, "
            "value_min = excluded.value_min, value_max = excluded.value_max, value_sum = excluded.value_sum",
            (f"@{bucket_s * SUMMARY_FACTOR}", bucket_s * SUMMARY_FACTOR, summary_us, summary_us, device_id, bucket_s,
             "%@%", start, end))  # `/ x * x`, not `% x`: a % in the SQL would be psycopg's placeholder

    # -- reading -----------------------------------------------------------------------------------------
    def alert_ids(self, device_id: str | None = None) -> list[str]:
        if device_id is None:
            return [r[0] for r in self._query("SELECT id FROM alerts ORDER BY time_us, id")]
        return [r[0] for r in self._query("SELECT id FROM alerts WHERE device_id = ? ORDER BY time_us, id", (device_id,))]

    def alerts(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """The alerts as received, oldest first."""
        where, params = ("WHERE device_id = ?", (device_id,)) if device_id is not None else ("", ())
        return [json.loads(r[0]) for r in self._query(f"SELECT payload FROM alerts {where} ORDER BY time_us, id", params)]

    def machines(self) -> list[Machine]:
        rows = self._query("SELECT device_id, first_seen_us, last_seen_us, status, state, state_since_us, state_us, "
                           "score, top_channel, reason, model_id, health_problem, state_json, health_json "
                           "FROM machines ORDER BY device_id")
        return [self._machine(row) for row in rows]

    @staticmethod
    def _machine(row: tuple) -> Machine:
        device_id, first_seen, last_seen, status, state, since, state_us, score, top_channel, reason, model_id = row[:11]
        problem, state_json, health_json = row[11:]
        return Machine(device_id, first_seen, last_seen, status, state, since, state_us, score, top_channel, reason,
                       model_id, None if problem is None else bool(problem),  # SQLite has no booleans: 0 or 1
                       None if state_json is None else json.loads(state_json),
                       None if health_json is None else json.loads(health_json))

    def telemetry(self, device_id: str, start_us: int | None = None, end_us: int | None = None) -> list[dict[str, Any]]:
        """Raw records in [start, end), oldest first."""
        rows = self._query("SELECT payload FROM telemetry WHERE device_id = ? AND time_us >= ? AND time_us < ? "
                           "ORDER BY time_us", (device_id, start_us if start_us is not None else -(2**62),
                                                end_us if end_us is not None else 2**62))
        return [json.loads(r[0]) for r in rows]

    def buckets(self, device_id: str, name: str) -> list[Bucket]:
        rows = self._query("SELECT bucket_us, count, value_min, value_max, value_sum FROM telemetry_buckets "
                           "WHERE device_id = ? AND name = ? ORDER BY bucket_us", (device_id, name))
        return [Bucket(int(b), int(n), float(lo), float(hi), float(total) / int(n)) for b, n, lo, hi, total in rows]

    def rejections(self) -> dict[str, int]:
        return {reason: int(n) for reason, n in self._query("SELECT reason, count FROM rejections ORDER BY reason")}
