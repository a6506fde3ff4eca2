"""Commissioning's checks and phases on real historians (SQLite and PostgreSQL) holding the telemetry the agent's
own payload code builds: a baseline too short, with a sensor fault, or from a machine that changed state is
refused with its reason and the machine stays in `learning`; a good one gives the trainer's features table; a
repair when an alert is closed, or "learn again", starts a new baseline; the phase follows the rollout's reports.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from commissioning_helpers import CHANNELS, STEP_US, baseline_card, learning_messages, levels, model_message
from fleet_helpers import (
    T0_US,
    contract_alert,
    historian,
    postgres_cluster,  # noqa: F401  (fixture)
)

from edge.ingest.clock import iso_time
from edge.model.bearing import PRESETS
from edge.model.features import FEATURE_SETS, VIBRATION
from fleet.cli import main
from fleet.commissioning import Baseline, assess, baseline_of, check, write_table
from fleet.commissioning_worker import Worker
from fleet.config import CommissioningConfig, FleetConfigError, HistorianConfig, parse_config
from fleet.historian import commissioning as book
from fleet.historian import open_historian
from fleet.historian.alert_book import AlertBookError, close
from fleet.historian.rollouts import NewRollout, create
from fleet.payloads import Accepted
from trainer.dataset import load_table

__all__ = ["historian"]  # the parametrised fixture
NOW = T0_US + 10**11


@pytest.fixture
def config(tmp_path: Path) -> CommissioningConfig:
    return CommissioningConfig(baseline_cards=str(tmp_path / "cards"), signing_key=str(tmp_path / "key"), min_days=0.5,
                               min_snapshots=60, work_dir=str(tmp_path / "work"))


@pytest.fixture
def card(tmp_path: Path):
    return baseline_card(tmp_path / "cards" / "pump")


def learning(historian, card, rows: np.ndarray, device: str = "pump-1", start_us: int = T0_US, faults=None):
    historian.store(learning_messages(device, card, rows, start_us, faults), [], NOW)
    assert device in book.discover(historian)
    found = book.record(historian, device)
    assert found is not None
    return found


def test_a_learning_machine_gets_a_record_from_its_first_learning_snapshot(historian, card):
    found = learning(historian, card, levels(10), start_us=T0_US + 5 * STEP_US)
    assert (found.phase, found.baseline_start_us, found.baseline_card) == ("learning", T0_US + 5 * STEP_US, card.card.id)
    assert book.discover(historian) == []  # once


def test_a_good_baseline_passes_and_becomes_the_trainers_table(historian, card, config, tmp_path):
    record = learning(historian, card, levels(120))
    verdict = assess(historian, record, config)
    assert verdict.passed, verdict.reason
    assert verdict.progress["snapshots"] == 120 and verdict.progress["days"] == pytest.approx(119 * 600 / 86400, abs=1e-3)
    baseline = Baseline.of("pump-1", book.baseline_telemetry(historian, "pump-1", record.baseline_start_us),
                           card.card.feature_spec)
    table = load_table(write_table(baseline, tmp_path / "baseline.csv"))  # read by the trainer's own reader
    assert table.channels == CHANNELS and len(table.features) == 120
    np.testing.assert_allclose(table.features, np.round(levels(120), 6))  # the agent's published six decimals
    assert table.timestamps[1] - table.timestamps[0] == np.timedelta64(600_000, "ms")


def test_a_baseline_too_short_is_refused_with_how_far_it_got(historian, card, config):
    record = learning(historian, card, levels(30))
    verdict = assess(historian, record, config)
    assert not verdict.passed
    assert verdict.reason == "baseline too short: 0.20 of 0.5 days and 30 of 60 snapshots so far"


def test_a_sensor_fault_in_the_baseline_is_refused_naming_when_and_the_channel(historian, card, config):
    record = learning(historian, card, levels(120), faults={70: "dropout:bearing2", 71: "dropout:bearing2"})
    verdict = assess(historian, record, config)
    assert not verdict.passed
    assert verdict.reason.startswith(f"sensor fault in the baseline: 2 snapshots from {iso_time(T0_US + 70 * STEP_US)} "
                                     f"to {iso_time(T0_US + 71 * STEP_US)}, the first 'dropout:bearing2'")


def test_a_machine_that_changed_state_mid_baseline_is_refused_naming_the_column_and_the_times(historian, card, config):
    rows = levels(120)
    rows[80:, 1] *= 1.5  # bearing2's level rises a half and stays there: a new load, or a fault
    verdict = assess(historian, learning(historian, card, rows), config)
    assert not verdict.passed
    match = re.match(r"the machine changed state mid-baseline: bearing2 was ([\d.]+) from (\S+) to (\S+) and ([\d.]+) "
                     r"from (\S+) to (\S+), ([\d.]+) times its spread \(more than 6\)", verdict.reason)
    assert match, verdict.reason
    assert float(match.group(4)) / float(match.group(1)) == pytest.approx(1.5, rel=0.05)
    assert match.group(2) == iso_time(T0_US) and match.group(3) == iso_time(T0_US + 39 * STEP_US)
    assert match.group(5) == iso_time(T0_US + 80 * STEP_US) and match.group(6) == iso_time(T0_US + 119 * STEP_US)


def test_slow_healthy_drift_is_not_a_change_of_state(card, config):
    rows = levels(300, seed=3) * np.linspace(1.0, 1.05, 300)[:, None]  # 5% over the baseline: warming up
    records = [(T0_US + i * STEP_US, {"state": "learning", "features": dict(zip(CHANNELS, row))}) for i, row in enumerate(rows)]
    assert check(Baseline.of("pump-1", records, card.card.feature_spec), config).passed


def test_a_several_feature_set_gives_a_column_per_channel_and_feature(historian, tmp_path, config):
    card = baseline_card(tmp_path / "cards" / "vib", feature_set=VIBRATION, bearing=PRESETS["6205-2rs"], shaft_rpm=1800.0)
    features = FEATURE_SETS[VIBRATION]
    rows = np.abs(levels(80, channels=len(CHANNELS) * len(features))) + 0.5
    record = learning(historian, card, rows)
    _, baseline = baseline_of(historian, record, config)
    assert baseline.columns == [f"{c}.{f}" for c in CHANNELS for f in features]
    table = load_table(write_table(baseline, tmp_path / "vib.csv"))
    assert table.channels == tuple(baseline.columns)
    np.testing.assert_allclose(table.features, np.round(rows, 6))


def test_a_card_not_in_the_directory_is_refused_naming_it(historian, card, config, tmp_path):
    record = learning(historian, card, levels(80))
    verdict = assess(historian, dataclasses.replace(record, baseline_card="baseline-0000"), config)
    assert not verdict.passed and verdict.reason == (
        f"commissioning.baseline_cards: no card 'baseline-0000' in {tmp_path / 'cards'} (copy the directory "
        "cm-train baseline wrote for this machine there)")


def test_closing_an_alert_with_a_repair_starts_a_new_baseline(historian, card):
    learning(historian, card, levels(50))
    historian.store([Accepted("alert", "pump-1", contract_alert("pump-1", 0))], [], NOW)
    alert_id = contract_alert("pump-1", 0)["id"]
    with pytest.raises(AlertBookError, match="repair: expected one of bearing_replaced, realigned, rebalanced, "
                                             "lubricated, other \\(or none\\), got 'prayed'"):
        close(historian, alert_id, "otto", "outer_race", "", repair="prayed")
    book.move(historian, "pump-1", "learning", "monitoring")
    closed = close(historian, alert_id, "otto", "outer_race", "new 6205", repair="bearing_replaced")
    assert closed.repair == "bearing_replaced"
    found = book.record(historian, "pump-1")
    assert found is not None and found.phase == "learning" and found.baseline_card == card.card.id
    assert found.baseline_start_us == T0_US + 49 * STEP_US + 1  # after the newest snapshot: the agent's clock
    assert found.started_by == f"bearing replaced (alert {alert_id} closed by otto)"
    # A training of the old baseline that fails now leaves the new one alone (the worker refuses from `training`).
    book.refuse(historian, "pump-1", "training: cm-train fit failed", hold=True, expected="training")
    assert book.record(historian, "pump-1") == found


def test_learn_again_without_a_record_and_for_an_unknown_machine(historian, card):
    historian.store(learning_messages("fan-2", card, levels(5), T0_US), [], NOW)
    found = book.learn_again(historian, "fan-2", "learn again by ada")
    assert (found.phase, found.baseline_start_us, found.started_by) == ("learning", T0_US + 4 * STEP_US + 1,
                                                                        "learn again by ada")
    with pytest.raises(book.CommissioningError, match="machine 'nope': not in the historian"):
        book.learn_again(historian, "nope", "ada")


def test_the_phase_follows_the_agents_report_on_the_rollout(historian, card, config):
    learning(historian, card, levels(80))
    for device, rollout_id in (("pump-1", "r-good"), ("pump-2", "r-bad")):
        if device == "pump-2":
            learning(historian, card, levels(80), device=device)
        create(historian, NewRollout(rollout_id, "cd" * 32, "model-x", "", device, 100.0, 0.0, 10.0, 3600.0, {}, "test"),
               [device], [1])
        historian.write([("UPDATE rollout_devices SET status = 'sent' WHERE rollout_id = ?", (rollout_id,))])
        book.move(historian, device, "learning", "training")
        book.move(historian, device, "training", "probation", bundle_sha256="cd" * 32, rollout_id=rollout_id)
    outcome = {"rollout": "r-good", "bundle": "cd" * 32, "status": "active", "reason": None,
               "updated": "2023-11-16T00:00:00Z", "started": "2023-11-15T00:00:00Z"}
    historian.store([model_message("pump-1", {"id": "model-x", "bundle": "cd" * 32, "model_sha256": "ef" * 32}, outcome,
                                   "2023-11-16T00:00:00Z"),
                     model_message("pump-2", {"id": card.card.id, "bundle": "00" * 32, "model_sha256": "11" * 32},
                                   outcome | {"rollout": "r-bad", "status": "rejected", "reason": "probation: 3 alarms"},
                                   "2023-11-16T00:00:00Z")], [], NOW)
    worker = Worker(config, historian, stopping=threading.Event())
    worker.tick()
    good, bad = book.record(historian, "pump-1"), book.record(historian, "pump-2")
    assert good is not None and good.phase == "monitoring"
    assert bad is not None and (bad.phase, bad.held) == ("learning", True)
    assert bad.reason == "the trained bundle did not pass probation (rollout r-bad: rejected: probation: 3 alarms)"


def test_a_baseline_refused_for_good_is_not_read_again_until_asked(historian, card, config):
    learning(historian, card, levels(120), faults={5: "flatline:bearing1"})
    worker = Worker(config, historian, stopping=threading.Event())
    worker.tick()
    found = book.record(historian, "pump-1")
    assert found is not None and found.held and found.reason is not None and found.reason.startswith("sensor fault")
    assert not worker.busy
    book.request(historian, "pump-1", "otto")  # an operator may still ask: checked again, refused again
    worker.tick()
    again = book.record(historian, "pump-1")
    assert again is not None and again.requested_us is None and again.reason == found.reason


def test_a_request_is_checked_by_the_worker_and_a_refusal_answers_it(historian, card, config):
    learning(historian, card, levels(20))
    book.request(historian, "pump-1", "otto")
    Worker(config, historian, stopping=threading.Event()).tick()
    found = book.record(historian, "pump-1")
    assert found is not None and found.phase == "learning" and found.requested_us is None
    assert found.reason is not None and found.reason.startswith("baseline too short: ")
    assert book.summary(found).startswith("learning: 20/60 snapshots")
    assert json.loads(json.dumps(found.progress))["snapshots"] == 20


def test_the_commissioning_section_is_checked_by_key(tmp_path):
    path = tmp_path / "fleet.toml"
    good = {"baseline_cards": "/etc/cm-fleet/cards", "signing_key": "/etc/cm-fleet/key"}
    assert parse_config({"commissioning": good}, path).commissioning == CommissioningConfig(**good)
    assert parse_config({}, path).commissioning is None
    with pytest.raises(FleetConfigError, match=re.escape(f"{path}: commissioning.signing_key: expected a private key file "
                                                         "(cm-fleet keygen), got ''")):
        parse_config({"commissioning": {"baseline_cards": "/x"}}, path)
    with pytest.raises(FleetConfigError, match=re.escape(f"{path}: commissioning.min_days: expected >= 0 and below "
                                                         "historian.raw_retention_days (30: the baseline is read raw), got 40")):
        parse_config({"commissioning": good | {"min_days": 40}}, path)
    with pytest.raises(FleetConfigError, match="commissioning.auto: expected bool, got 'yes'"):
        parse_config({"commissioning": good | {"auto": "yes"}}, path)


def test_auto_trains_a_baseline_that_passes_and_a_failed_attempt_is_held_with_the_reason(historian, card, config):
    learning(historian, card, levels(120))
    worker = Worker(dataclasses.replace(config, trainer="/bin/false"), historian, stopping=threading.Event())
    worker.tick()  # the first tick looks at every baseline: this one passes, and its training starts
    assert worker._job is not None
    worker._job.join(30)
    found = book.record(historian, "pump-1")
    assert found is not None and (found.phase, found.held) == ("learning", True)
    assert found.reason is not None and found.reason.startswith("training: cm-train fit failed (exit 1; ")
    assert len(list(Path(config.work_dir, "pump-1").glob("*/baseline.csv"))) == 1  # the table it was given
    worker._checked = 0.0
    worker.tick()  # held: no automatic retry on this baseline
    assert not worker.busy and book.record(historian, "pump-1") == found


def test_a_training_cut_short_by_a_restart_is_tried_again(historian, card, config):
    learning(historian, card, levels(120))
    book.move(historian, "pump-1", "learning", "training", "training: cm-train fit")
    stopping = threading.Event()
    stopping.set()  # the worker's thread ends at once: only what start() does is looked at
    worker = Worker(dataclasses.replace(config, auto=False), historian, stopping)
    worker.start()
    worker.stop()
    found = book.record(historian, "pump-1")
    assert found is not None and (found.phase, found.held) == ("learning", False)
    assert found.reason == "training was cut short by a restart of cm-fleet; trying again"
    assert found.requested_by == "cm-fleet, after a restart"  # asked again, auto or not


def test_cm_fleet_commission_prints_the_refusal_and_the_status(tmp_path, card, capsys):
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    toml = tmp_path / "fleet.toml"
    toml.write_text(f'[historian]\nurl = "{url}"\n[commissioning]\nbaseline_cards = "{tmp_path / "cards"}"\n'
                    f'signing_key = "{tmp_path / "key"}"\nmin_days = 0.5\nmin_snapshots = 60\n')
    opened = open_historian(HistorianConfig(url=url))
    opened.store(learning_messages("pump-1", card, levels(30), T0_US), [], NOW)
    opened.close()
    assert main(["commission", "pump-1", "--config", str(toml)]) == 1
    refused = capsys.readouterr().out
    assert refused.startswith("pump-1: learning since ") and refused.rstrip().endswith(
        "30/60 snapshots, 0.20/0.5 days: baseline too short: 0.20 of 0.5 days and 30 of 60 snapshots so far")
    assert main(["commission", "status", "--json", "--config", str(toml)]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert (shown["device_id"], shown["phase"], shown["requested_us"]) == ("pump-1", "learning", None)
    assert main(["commission", "nope", "--config", str(toml)]) == 2
    assert "cm-fleet commission: machine 'nope': not in the historian" in capsys.readouterr().err
    assert main(["commission", "status", "a", "b", "--config", str(toml)]) == 2
