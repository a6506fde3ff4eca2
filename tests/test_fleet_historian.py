"""The historian, the same tests on SQLite and on a private PostgreSQL cluster: schema versions and
migrations, alerts once by id, each machine's current picture, telemetry raw and in buckets."""
from __future__ import annotations

import json

import pytest
from fleet_helpers import (
    T0_US,
    contract_alert,
    contract_state,
    contract_telemetry,
    historian,
    historian_url,
    postgres_cluster,  # noqa: F401  (fixture)
)

from fleet.config import HistorianConfig
from fleet.historian import HistorianError, open_historian
from fleet.historian.schema import VERSION
from fleet.historian.store import Rejection
from fleet.payloads import Accepted

__all__ = ["historian"]  # the parametrised fixture
NOW = T0_US + 10**11  # a day after the records: the retention counts back from the newest record


def alerts(device: str, indices) -> list[Accepted]:
    return [Accepted("alert", device, contract_alert(device, i)) for i in indices]


def test_the_schema_is_created_once_at_its_version(historian):
    assert historian.version() == VERSION
    assert historian.migrate() == VERSION  # nothing left to do the second time


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_newer_than_the_code_is_refused(request, backend, tmp_path):
    url = historian_url(request, backend, tmp_path)
    first = open_historian(HistorianConfig(url=url))
    first.store([], [], NOW)
    with first.dialect.transaction(first._db):
        first._execute("INSERT INTO schema_version (version, applied_us) VALUES (?, ?)", (VERSION + 1, NOW))
    first.close()
    with pytest.raises(HistorianError, match=f"schema version {VERSION + 1} is newer than this cm-fleet knows"):
        open_historian(HistorianConfig(url=url))


def test_alerts_are_stored_once_by_id_whatever_arrives_twice(historian):
    historian.store(alerts("pump-1", range(5)), [], NOW)
    historian.store(alerts("pump-1", range(3, 8)) + alerts("pump-1", [7]), [], NOW + 1)
    historian.store(alerts("fan-2", range(2)), [], NOW + 2)
    stored = historian.alerts("pump-1")
    assert [a["id"] for a in stored] == [contract_alert("pump-1", i)["id"] for i in range(8)]
    assert stored[0] == contract_alert("pump-1", 0)  # as received
    assert len(historian.alert_ids()) == 10


def test_the_latest_state_wins_and_an_older_one_never_overwrites_it(historian):
    historian.store([Accepted("state", "pump-1", contract_state("pump-1", 5, since_i=4))], [], NOW)
    historian.store([Accepted("state", "pump-1", contract_state("pump-1", 3))], [], NOW + 1)  # a redelivered older one
    historian.store([Accepted("status", "pump-1", "online")], [], NOW + 2)
    (machine,) = historian.machines()
    assert machine.device_id == "pump-1" and machine.status == "online"
    assert machine.state_json == contract_state("pump-1", 5, since_i=4)
    assert (machine.state, machine.state_since_us, machine.state_us) == ("alarm", T0_US + 4_000_000, T0_US + 5_000_000)
    assert machine.model_id == "test-model" and machine.first_seen_us == NOW and machine.last_seen_us == NOW + 2
    historian.store([Accepted("status", "pump-1", "offline")], [], NOW + 3)
    assert historian.machines()[0].status == "offline"


def test_health_keeps_the_latest_report(historian):
    def report(second: int, problem: bool) -> dict:
        faults = {"clock": {"message": "not synchronised", "since": "2023-11-14T22:13:20.000Z"}} if problem else {}
        return {"device_id": "pump-1", "timestamp": f"2023-11-14T22:13:{second:02d}.000Z", "problem": problem,
                "faults": faults}

    historian.store([Accepted("health", "pump-1", report(30, True))], [], NOW)
    historian.store([Accepted("health", "pump-1", report(25, False))], [], NOW)  # older: ignored
    (machine,) = historian.machines()
    assert machine.health_problem is True and machine.health_json == report(30, True)


def test_rejections_are_counted_by_reason(historian):
    historian.store([], [Rejection("bad_json", "cm/a/alert", "x")] * 3 + [Rejection("schema", "cm/a/state", "y")], NOW)
    historian.store([], [Rejection("bad_json", "cm/b/alert", "z")], NOW + 1)
    assert historian.rejections() == {"bad_json": 4, "schema": 1}


def test_telemetry_is_kept_raw_within_the_retention_and_as_buckets_beyond(historian):
    minute = 60_000_000
    # 3 hours, one record a minute; the retention is 1 hour back from the newest record, the buckets 10 minutes.
    records = [contract_telemetry("pump-1", i, T0_US + i * minute) for i in range(180)]
    historian.store([Accepted("telemetry", "pump-1", r) for r in records], [], NOW)
    historian.store([Accepted("telemetry", "pump-1", records[0])], [], NOW)  # again: stored once
    folded = historian.compact(raw_retention_us=60 * minute, bucket_s=600, now=NOW)
    newest = T0_US + 179 * minute
    cutoff = newest - 60 * minute
    cutoff -= cutoff % (600 * 1_000_000)
    kept = historian.telemetry("pump-1")
    assert folded == sum(1 for r in records if T0_US + r["snapshot"] * minute < cutoff) == 180 - len(kept)
    assert kept == records[180 - len(kept):]  # raw, exactly as received
    buckets = historian.buckets("pump-1", "score")
    assert sum(b.count for b in buckets) == folded
    for bucket in buckets:
        scores = [r["score"] for r in records if bucket.bucket_us <= T0_US + r["snapshot"] * minute < bucket.bucket_us + 600_000_000]
        assert (bucket.count, bucket.min, bucket.max) == (len(scores), min(scores), max(scores))
        assert bucket.mean == pytest.approx(sum(scores) / len(scores))
    assert len(historian.buckets("pump-1", "features/bearing1")) == len(buckets)
    assert historian.compact(raw_retention_us=60 * minute, bucket_s=600, now=NOW) == 0  # nothing more to fold


def test_a_late_record_for_a_folded_bucket_is_merged_into_it(historian):
    minute = 60_000_000
    records = [contract_telemetry("pump-1", i, T0_US + i * minute) for i in range(0, 120, 2)]
    historian.store([Accepted("telemetry", "pump-1", r) for r in records], [], NOW)
    historian.compact(raw_retention_us=30 * minute, bucket_s=600, now=NOW)
    first = historian.buckets("pump-1", "score")[0]
    late = contract_telemetry("pump-1", 1, T0_US + minute)  # arrives after its bucket was folded
    late["score"] = 9.5
    historian.store([Accepted("telemetry", "pump-1", late)], [], NOW)
    historian.compact(raw_retention_us=30 * minute, bucket_s=600, now=NOW)
    merged = historian.buckets("pump-1", "score")[0]
    assert (merged.bucket_us, merged.count, merged.max) == (first.bucket_us, first.count + 1, 9.5)
    assert merged.min == first.min


def test_stored_payloads_are_json_as_received(historian):
    record = contract_telemetry("pump-1", 3)
    historian.store([Accepted("telemetry", "pump-1", record)], [], NOW)
    assert historian.telemetry("pump-1") == [json.loads(json.dumps(record))]


def test_a_clock_ahead_of_now_folds_nothing_early(historian):
    minute = 60_000_000
    records = [contract_telemetry("pump-1", i, T0_US + i * minute) for i in range(120)]
    historian.store([Accepted("telemetry", "pump-1", r) for r in records], [], NOW)
    # "now" is an hour into the records: the retention counts back from now, not from the (future) newest record.
    folded = historian.compact(raw_retention_us=60 * minute, bucket_s=600, now=T0_US + 60 * minute)
    assert folded == 0 and len(historian.telemetry("pump-1")) == 120
