"""Server time of the dashboard's pages (the Flask app's own time per request, in process, no network): the
fleet page with 10,000 machines, and a machine page over a year at one record per 10 minutes (30 days raw, the
rest folded into 600 s buckets as the compactor leaves it) and over 30 days at one record per second (all raw).

    .venv/bin/python bench/bench_fleet_web.py [--postgresql] [--repeats N] [--second-days D]

Prints median, p95, min and max per page; the historians are built once in bench/work/ (SQLite) and reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's private PostgreSQL cluster

from edge.ingest.clock import iso_time  # noqa: E402
from fleet.config import HistorianConfig, WebConfig  # noqa: E402
from fleet.historian import Historian, open_historian  # noqa: E402
from fleet.historian.series import series_names  # noqa: E402
from fleet.payloads import Accepted  # noqa: E402
from fleet.web.app import create_app  # noqa: E402
from fleet.web.credentials import new_token, token_hash  # noqa: E402

WORK = REPO / "bench" / "work" / "fleet_web"
T0_US = 1_700_000_000_000_000
MACHINES = 10_000
CHANNELS = ("bearing1", "bearing2", "bearing3", "bearing4")
COUNTERS = dict.fromkeys(("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped", "snapshots",
                          "snapshots_discarded", "alerts_pending", "telemetry_dropped"), 0)
MODEL = {"id": "bench-model", "sha256": "ab" * 32}
BATCH = 50_000


def record(device_id: str, i: int, time_us: int) -> dict:
    level = 0.05 + 0.01 * ((i * 7919) % 100) / 100
    return {"device_id": device_id, "timestamp": iso_time(time_us), "snapshot": i,
            "features": {c: round(level * (k + 1), 6) for k, c in enumerate(CHANNELS)}, "score": round(level, 6),
            "channel_errors": {c: round(level / (k + 1), 6) for k, c in enumerate(CHANNELS)}, "state": "normal",
            "reason": None, "counters": COUNTERS}


def state(device_id: str, i: int) -> dict:
    name = ("normal", "warning", "alarm", "sensor_fault")[i % 4 if i % 10 == 0 else 0]
    return {"device_id": device_id, "state": name, "since": iso_time(T0_US), "timestamp": iso_time(T0_US + i),
            "score": 0.01 * (i % 100), "top_channel": CHANNELS[i % 4], "reason": None, "model": MODEL}


def alert(device_id: str, i: int) -> dict:
    return {"id": f"{device_id}-a{i}", "device_id": device_id, "state": "alarm", "previous_state": "normal",
            "timestamp": iso_time(T0_US + i), "score": 0.5, "warning_threshold": 0.2, "alarm_threshold": 0.4,
            "channel_errors": dict.fromkeys(CHANNELS, 0.1), "top_channel": CHANNELS[0], "reason": None, "model": MODEL}


def telemetry(device_id: str, count: int, step_us: int) -> Iterator[list[Accepted]]:
    for start in range(0, count, BATCH):
        yield [Accepted("telemetry", device_id, record(device_id, i, T0_US + i * step_us))
               for i in range(start, min(start + BATCH, count))]


def load_rolled_up(historian: Historian, device_id: str, count: int, step_us: int, bucket_s: int = 600) -> None:
    """`count` records stored raw and already rolled up, as the compactor leaves them, by bulk SQL: storing 2.6
    million records one batch at a time through Historian.store and roll_up takes an hour of a shared core, and
    what the pages read is the same. Bench-only: it reaches into the historian's connection."""
    columns = "INSERT INTO telemetry (device_id, time_us, snapshot, state, score, payload, rolled_up) VALUES (?, ?, ?, ?, ?, ?, TRUE)"
    for start in range(0, count, BATCH):
        rows = []
        for i in range(start, min(start + BATCH, count)):
            payload = record(device_id, i, T0_US + i * step_us)
            rows.append((device_id, T0_US + i * step_us, i, "normal", payload["score"], json.dumps(payload, separators=(",", ":"))))
        with historian._lock, historian.dialect.transaction(historian._db):
            historian._executemany(columns, rows)
    dialect, bucket_us = historian.dialect, bucket_s * 1_000_000
    names = series_names(record(device_id, 0, T0_US))
    with historian._lock, historian.dialect.transaction(historian._db):
        for name in names:
            value = "score" if name == "score" else dialect.json_number(dialect.json_document("payload"))
            path = [] if name == "score" else [dialect.json_path(name.split("/"))]
            historian._execute(
                "INSERT INTO telemetry_buckets (device_id, name, bucket_us, bucket_s, count, value_min, value_max, value_sum) "
                "SELECT device_id, ?, b, ?, COUNT(v), MIN(v), MAX(v), SUM(v) FROM (SELECT device_id, time_us / CAST(? AS BIGINT) "
                f"* CAST(? AS BIGINT) AS b, {value} AS v FROM telemetry WHERE device_id = ?) raw WHERE TRUE GROUP BY device_id, b",
                [name, bucket_s, bucket_us, bucket_us, *path, device_id])
        historian._summarise(device_id, T0_US - T0_US % bucket_us, T0_US + count * step_us, bucket_s)


def build(historian: Historian, second_days: float) -> None:
    if historian.read("SELECT COUNT(*) FROM machines")[0][0] >= MACHINES:
        return
    started = time.monotonic()
    fleet = [Accepted("state", f"m{i:05d}", state(f"m{i:05d}", i)) for i in range(MACHINES)]
    fleet += [Accepted("alert", f"m{i:05d}", alert(f"m{i:05d}", i)) for i in range(0, MACHINES, 5)]
    fleet += [Accepted("state", "month-1s", state("month-1s", 0))]
    historian.store(fleet, [], T0_US)
    for batch in telemetry("year-10min", 365 * 144, 600_000_000):  # through the service's own path
        historian.store(batch, [], T0_US)
    rolled = historian.roll_up(600)  # as the service's compactor leaves it: rolled up, then past 30 days deleted
    folded = historian.compact(raw_retention_us=30 * 86400 * 1_000_000, bucket_s=600)
    stored = time.monotonic()
    load_rolled_up(historian, "month-1s", int(second_days * 86400), 1_000_000)
    print(f"year: stored, rolled {rolled} records up and deleted {folded} past the retention in {stored - started:.0f} s; "
          f"{second_days:g} days at 1 s loaded in {time.monotonic() - stored:.0f} s", file=sys.stderr)


def timed(client, path: str, headers: dict, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:200])
    return samples


def row(name: str, samples: list[float]) -> str:
    p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) > 1 else samples[0]
    return (f"{name:<50} {statistics.median(samples):>9.1f} {p95:>9.1f} {min(samples):>9.1f} {max(samples):>9.1f}  ms"
            f"  ({len(samples)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgresql", action="store_true", help="a private PostgreSQL cluster instead of SQLite")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--second-days", type=float, default=30.0, help="days of one-per-second telemetry")
    args = parser.parse_args()
    cluster = None
    if args.postgresql:
        from postgres import PostgresCluster

        cluster = PostgresCluster().start()
        url = cluster.create_database("bench")
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        url = f"sqlite://{WORK / f'historian-{args.second_days:g}d.sqlite'}"
    try:
        historian = open_historian(HistorianConfig(url=url))
        build(historian, args.second_days)
        from fleet.historian.accounts import Accounts

        token = new_token()
        accounts = Accounts(historian)
        if accounts.user("bench") is None:
            accounts.add("bench", "viewer", "scrypt$1$1$1$AA==$AA==")  # a token-only user
        accounts.add_token("bench", token_hash(token))
        client = create_app(WebConfig(), historian, secret=b"b" * 32).test_client()
        headers = {"Authorization": f"Bearer {token}"}
        html = headers | {"Accept": "text/html"}
        print(f"{historian.dialect.name}: {MACHINES} machines; year at 10 min; {args.second_days:g} days at 1 s")
        print(f"{'page (server time)':<50} {'median':>9} {'p95':>9} {'min':>9} {'max':>9}")
        cases = [
            ("fleet page, 10,000 machines, 1,000 shown (.json)", "/fleet.json", headers),
            ("fleet page, 10,000 machines, 1,000 shown (HTML)", "/fleet", html),
            ("fleet page, 10,000 machines, all shown (.json)", "/fleet.json?limit=10000", headers),
            ("fleet page, 10,000 machines, all shown (HTML)", "/fleet?limit=10000", html),
            ("fleet page, alarm filter (.json)", "/fleet.json?state=alarm", headers),
            ("machine page, year at 10 min, 365d (.json)", "/machines/year-10min.json?span=365d", headers),
            ("machine page, year at 10 min, 365d (HTML)", "/machines/year-10min?span=365d", html),
            (f"machine page, {args.second_days:g}d at 1 s, 30d (.json)", "/machines/month-1s.json?span=30d", headers),
            (f"machine page, {args.second_days:g}d at 1 s, 1d (.json)", "/machines/month-1s.json?span=1d", headers),
            ("alerts page, 2,000 active (.json)", "/alerts.json", headers),
        ]
        results = {}
        for name, path, sent in cases:
            samples = timed(client, path, sent, args.repeats)
            results[name] = samples
            print(row(name, samples), flush=True)
        (WORK.parent / f"fleet_web_{historian.dialect.name}.json").write_text(json.dumps(results, indent=1))
        historian.close()
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
