"""The detector checkpoint: a bad one is reported, moved aside and ignored; a good one is private and exact."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edge.mqtt.health import Health
from edge.mqtt.payloads import alert_id
from edge.scoring.detector import State, Transition

MODEL = "ims1-20240101"
GOOD = {"model_id": MODEL, "state": "sensor_fault", "health": "alarm", "reason": "dropout:bearing3",
        "since_us": 1_076_582_000_000_000}


def test_a_saved_checkpoint_loads_back_exactly_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "outbox.detector.json"
    checkpoint = Checkpoint(MODEL, State.SENSOR_FAULT, State.ALARM, "dropout:bearing3", GOOD["since_us"], "bearing3",
                            State.WARNING)
    assert save_checkpoint(path, checkpoint)
    assert load_checkpoint(path, MODEL) == checkpoint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_checkpoint_from_before_the_driver_was_saved_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "outbox.detector.json"
    path.write_text(json.dumps(GOOD))
    loaded = load_checkpoint(path, MODEL)
    assert loaded is not None and loaded.health == State.ALARM and loaded.driver is None and loaded.zone is None


@pytest.mark.parametrize("text, key", [
    (json.dumps(GOOD | {"since_us": 1e20}), "since_us"),
    (json.dumps(GOOD | {"since_us": 10**20}), "since_us"),
    (json.dumps(GOOD | {"since_us": -1}), "since_us"),
    (json.dumps(GOOD | {"since_us": True}), "since_us"),
    (json.dumps(GOOD | {"health": "sensor_fault"}), "health"),
    (json.dumps(GOOD | {"state": "on_fire"}), "state"),
    (json.dumps(GOOD | {"reason": 3}), "reason"),
    (json.dumps(GOOD | {"model_id": None}), "model_id"),
    (json.dumps(GOOD | {"driver": 3}), "driver"),
    (json.dumps(GOOD | {"zone": "sensor_fault"}), "zone"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "state"}), "state: missing"),
    (json.dumps([GOOD]), "expected a JSON object"),
    ('{"model_id": "ims1-2024', "Unterminated string"),
    ("[" * 100_000 + "]" * 100_000, "recursion"),
    ('{"since_us": ' + "1" * 5000 + "}", "4300 digits"),
])
def test_a_bad_checkpoint_is_reported_moved_aside_and_ignored(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "outbox.detector.json"
    path.write_text(text)
    health = Health("pump-7")
    assert load_checkpoint(path, MODEL, health) is None
    (aside,) = tmp_path.glob("outbox.detector.json.bad-*")
    assert aside.read_text() == text and not path.exists()
    message = health.faults()["storage"].message
    assert str(path) in message and key in message and aside.name in message


def test_a_non_utf8_checkpoint_is_reported_too(tmp_path: Path) -> None:
    path = tmp_path / "outbox.detector.json"
    path.write_bytes(b"\xff\xfe{}")
    health = Health("pump-7")
    assert load_checkpoint(path, MODEL, health) is None
    assert "storage" in health.faults()


def test_a_checkpoint_that_cannot_be_written_is_reported_not_raised(tmp_path: Path) -> None:
    health = Health("pump-7")
    checkpoint = Checkpoint(MODEL, State.ALARM, State.ALARM, None, GOOD["since_us"])
    assert not save_checkpoint(tmp_path / "missing-dir" / "outbox.detector.json", checkpoint, health)
    assert "cannot save the detector checkpoint" in health.faults()["storage"].message
    assert save_checkpoint(tmp_path / "outbox.detector.json", checkpoint, health)
    assert "storage" not in health.faults()


def test_the_same_transition_always_gets_the_same_alert_id() -> None:
    transition = Transition(State.SENSOR_FAULT, State.NORMAL, "dropout:bearing3")
    first = alert_id("pump-7", transition, GOOD["since_us"])
    assert first == alert_id("pump-7", Transition(State.SENSOR_FAULT, State.NORMAL, None), GOOD["since_us"])
    others = {alert_id("pump-8", transition, GOOD["since_us"]), alert_id("pump-7", transition, GOOD["since_us"] + 1),
              alert_id("pump-7", Transition(State.ALARM, State.NORMAL, None), GOOD["since_us"]),
              alert_id("pump-7", Transition(State.SENSOR_FAULT, State.WARNING, None), GOOD["since_us"])}
    assert first not in others and len(others) == 4


def test_a_checkpoint_naming_a_channel_the_bundle_lacks_is_refused_naming_file_and_channel(tmp_path: Path) -> None:
    path = tmp_path / "outbox.detector.json"
    text = json.dumps(GOOD | {"driver": "bearing9"})
    path.write_text(text)
    health = Health("pump-7")
    channels = ("bearing1", "bearing2", "bearing3", "bearing4")
    assert load_checkpoint(path, MODEL, health, channels) is None
    (aside,) = tmp_path.glob("outbox.detector.json.bad-*")
    assert aside.read_text() == text and not path.exists()
    message = health.faults()["storage"].message
    assert str(path) in message and "'bearing9'" in message and "bearing1, bearing2, bearing3, bearing4" in message
    path.write_text(json.dumps(GOOD | {"driver": "bearing3"}))  # one of them: taken
    loaded = load_checkpoint(path, MODEL, Health("pump-7"), channels)
    assert loaded is not None and loaded.driver == "bearing3"
