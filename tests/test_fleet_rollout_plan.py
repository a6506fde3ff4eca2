"""A rollout's plan, on a real historian (SQLite and PostgreSQL): the waves' sizes, the options' parsing with the
option and value named, and which machines a selector chooses; the model report's ingest keeps the newest."""
from __future__ import annotations

import json
import time

import pytest
from fleet_helpers import contract_state, historian, postgres_cluster  # noqa: F401  (the fixtures)

from edge.mqtt.payloads import model_report
from edge.mqtt.schemas import validate
from fleet.historian.overview import place
from fleet.historian.rollouts import NewRollout, RolloutError, create, detail, mark_sent, select_devices, time_out
from fleet.payloads import Accepted
from fleet.rollout import parse_duration, parse_percent, wave_sizes


@pytest.mark.parametrize(("devices", "canary", "sizes"), [
    (20, 5, [1, 2, 4, 8, 5]),
    (4, 25, [1, 2, 1]),
    (1, 5, [1]),
    (100, 10, [10, 20, 40, 30]),
    (3, 100, [3]),
    (5, 0, [1, 2, 2]),  # the canary is never empty
])
def test_the_canary_then_doubling_waves_cover_every_device_once(devices, canary, sizes):
    assert wave_sizes(devices, canary) == sizes and sum(sizes) == devices


def test_options_are_parsed_or_refused_with_the_option_and_value():
    assert parse_percent("--canary", "5%") == 5.0 and parse_percent("--max-failed", "12.5") == 12.5
    assert [parse_duration("--wave-wait", t) for t in ("90", "90s", "30m", "1h", "2d")] == [90, 90, 1800, 3600, 172800]
    with pytest.raises(RolloutError, match=r"--canary '150%': expected a percentage between 0% and 100%"):
        parse_percent("--canary", "150%")
    with pytest.raises(RolloutError, match=r"--wave-wait 'soon': expected a duration such as 90s"):
        parse_duration("--wave-wait", "soon")


def test_a_selector_chooses_by_id_glob_site_and_tag(historian):  # noqa: F811
    devices = ("pump-1", "pump-2", "fan-1", "press-9")
    historian.store([Accepted("state", d, contract_state(d, 1)) for d in devices], [], 1)
    place(historian, "pump-1", "plant-a", ["pumps", "line-3"])
    place(historian, "fan-1", "plant-a", ["fans"])
    place(historian, "press-9", "plant-b", ["line-3"])
    assert select_devices(historian, "all") == sorted(devices)
    assert select_devices(historian, "pump-*") == ["pump-1", "pump-2"]
    assert select_devices(historian, "site:plant-a") == ["fan-1", "pump-1"]
    assert select_devices(historian, "tag:line-3") == ["press-9", "pump-1"]
    assert select_devices(historian, "press-9, tag:fans") == ["fan-1", "press-9"]
    with pytest.raises(RolloutError, match=r"--devices 'tag:line': matches none of the 4 machines"):
        select_devices(historian, "tag:line")  # a tag is matched whole, not as a prefix of line-3


def report(device: str, bundle: str, status: str, updated: str) -> Accepted:
    active = {"id": "m", "bundle": bundle, "model_sha256": "c" * 64}
    outcome = {"rollout": "r-1", "bundle": "b" * 64, "status": status, "reason": None, "started": updated, "updated": updated}
    document = model_report(device, active, None, outcome, None, updated)
    validate("model", document)
    return Accepted("model", device, document)


def test_the_newest_model_report_wins_however_late_an_older_one_arrives(historian):  # noqa: F811
    historian.store([Accepted("state", "pump-1", contract_state("pump-1", 1))], [], 1)
    create(historian, NewRollout("r-1", "b" * 64, "m", "", "pump-1", 5, 3600, 10, 86400, {}, "test"), ["pump-1"], [1])
    mark_sent(historian, "r-1", 1, {"pump-1": "a" * 64})
    newer, older = report("pump-1", "b" * 64, "active", "2026-12-07T01:00:02Z"), report("pump-1", "a" * 64, "probation",
                                                                                          "2026-12-07T01:00:01Z")
    historian.store([newer], [], 2)
    historian.store([older], [], 3)  # a retained report again, after a reconnect, out of order
    assert historian.read("SELECT status, previous_bundle FROM rollout_devices") == [("active", "a" * 64)]
    (model_json,) = historian.read("SELECT model_json FROM machines")[0]
    assert json.loads(model_json)["active"]["bundle"] == "b" * 64


def test_a_late_success_counts_after_the_device_timed_out(historian):  # noqa: F811
    """A device back after --device-timeout: timed out meanwhile (it counted as failed while it was away), its
    late reports are still taken, and its `active` is final: the fleet shows it as the success it is."""
    historian.store([Accepted("state", "pump-1", contract_state("pump-1", 1))], [], 1)
    create(historian, NewRollout("r-1", "b" * 64, "m", "", "pump-1", 5, 3600, 10, 60, {}, "test"), ["pump-1"], [1])
    mark_sent(historian, "r-1", 1, {"pump-1": "a" * 64})

    def status() -> str:
        return str(historian.read("SELECT status FROM rollout_devices")[0][0])

    time.sleep(0.002)
    assert time_out(historian, "r-1", 0.001) == 1 and status() == "timed_out"
    historian.store([report("pump-1", "a" * 64, "probation", "2026-12-07T01:00:01Z")], [], 2)
    assert status() == "probation"
    assert time_out(historian, "r-1", 0.001) == 1 and status() == "timed_out"  # still late, still not settled
    historian.store([report("pump-1", "b" * 64, "active", "2026-12-07T01:00:02Z")], [], 3)
    assert status() == "active"
    assert time_out(historian, "r-1", 0.001) == 0 and status() == "active"  # settled: never timed out again
    assert detail(historian, "r-1").counts() == {"active": 1}
