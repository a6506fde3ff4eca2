"""Diagnosis end to end: a bundle trained with the vibration set on a synthetic machine whose fan-end bearing
develops an outer-race defect; every warning and alarm the agent's pipeline raises, and every alarm episode
in cm-train evaluate's report, names the outer race on that channel; the payloads match their schemas."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from signals import defect_signal

from edge.ingest.snapshot import Snapshot
from edge.model.bearing import PRESETS
from edge.model.bundle import load_bundle
from edge.mqtt.payloads import ModelRef, alert, telemetry
from edge.mqtt.schemas import validate
from edge.scoring.detector import State
from edge.scoring.pipeline import Pipeline
from firmware_bridge.recording import RecordingSpec, open_recording

pytestmark = pytest.mark.slow

RATE, N, RPM = 20_000, 8192, 1800.0
BEARING = PRESETS["6205-2rs"]
HEALTHY, FAULTY = 40, 16
COUNTERS = dict.fromkeys(("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped", "snapshots",
                          "snapshots_discarded", "alerts_pending", "telemetry_dropped"), 0)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of .npy snapshots (drive end, fan end) and a vibration bundle trained on its healthy half."""
    from trainer.train import FitOptions, fit

    root = tmp_path_factory.mktemp("machine")
    run = root / "run"
    run.mkdir()
    bpfo = BEARING.frequencies(RPM)["bpfo"]
    for i in range(HEALTHY + FAULTY):
        drive = defect_signal(RATE, N, None, shaft_hz=RPM / 60, seed=2 * i)
        damage = (i - HEALTHY + 1) / FAULTY if i >= HEALTHY else 0.0
        fan = defect_signal(RATE, N, bpfo if damage else None, shaft_hz=RPM / 60, impact_g=0.5 + 2.5 * damage,
                            seed=2 * i + 1)
        np.save(run / f"{i:04d}.npy", np.round(np.column_stack([drive, fan + 1.0]), 3))  # fan end: DC-coupled, 1 g
    bundle = fit(run, FitOptions(out=root / "bundle", format="csv", sample_rate_hz=RATE, feature_set="vibration",
                                 bearing=BEARING, shaft_rpm=RPM, train_fraction=HEALTHY / (HEALTHY + FAULTY) * 0.9,
                                 epochs=40, patience=8, verbose=0))
    return run, bundle


def test_card_records_features_bearing_and_speed(machine: tuple[Path, Path]) -> None:
    card = json.loads((machine[1] / "model_card.json").read_text())
    spec = card["feature_spec"]
    assert spec["feature_set"] == "vibration" and len(spec["features"]) == 10 and spec["features"][-1] == "envelope_ftf"
    assert spec["bearing"]["name"] == "6205-2rs" and spec["shaft_rpm"] == RPM
    assert len(card["scaler"]["minimum"]) == 2 * 10 and card["provenance"]["format"] == "csv"


def test_every_warning_and_alarm_names_the_outer_race_on_the_fan_end(machine: tuple[Path, Path]) -> None:
    run, bundle_path = machine
    bundle = load_bundle(bundle_path)
    pipeline = Pipeline(bundle, bundle.card.detector)
    recording = open_recording(run, RecordingSpec(format="csv", sample_rate_hz=RATE))
    raised, model = [], ModelRef(bundle.card.id, bundle.card.model_sha256)
    for index, recorded in enumerate(recording.snapshots()):
        snapshot = Snapshot(index=index, first_sample=index * N, capture_time_us=index * 1_000_000,
                            sample_rate_hz=RATE, scale=recorded.scale, counts=recorded.counts)
        reading, transition = pipeline.process(snapshot)
        payload = telemetry("pump-7", reading, pipeline.channels, COUNTERS)
        validate("telemetry", payload)
        assert set(payload["iso_zones"]) == {"ch1", "ch2"} and set(payload["channel_features"]["ch2"]) >= {"kurtosis"}
        assert payload["features"]["ch1"] == payload["channel_features"]["ch1"]["mean_abs"]
        if reading.state in (State.WARNING, State.ALARM):
            raised.append(index)
            assert payload["defect"]["kind"] == "outer_race" and payload["defect"]["channel"] == "ch2"
            assert payload["defect"]["frequency_hz"] == pytest.approx(BEARING.frequencies(RPM)["bpfo"], rel=0.02)
        else:
            assert "defect" not in payload
        if transition is not None:
            message = alert("pump-7", transition, reading, pipeline.channels, (0.1, 0.2), model)
            validate("alert", message)
            assert ("defect" in message) == (transition.state in (State.WARNING, State.ALARM))
    assert raised and min(raised) >= HEALTHY  # the defect is found, and nothing before it


def test_report_episodes_carry_the_defect_and_the_zones(machine: tuple[Path, Path], tmp_path: Path) -> None:
    from trainer.evaluate import evaluate

    run, bundle = machine
    report = evaluate(bundle, run, tmp_path / "report")
    assert report["alarm_episodes"] and report["false_alarm_episodes"] == 0
    for episode in report["alarm_episodes"]:
        assert episode["defect"]["kind"] == "outer_race" and episode["defect"]["channel"] == "ch2"
        assert set(episode["iso_zones"]) == {"ch1", "ch2"}
    assert report["iso_zones"]["group"] == "2-rigid" and set(report["iso_zones"]["worst"]) == {"ch1", "ch2"}


def test_zone_alarm_stands_beside_the_learned_score(machine: tuple[Path, Path]) -> None:
    """[machine] zone_alarm: velocity in zone D raises an alarm (debounced k of n) even when the learned
    score stays low; off by default, the same snapshots raise nothing."""
    from edge.model.bundle import DetectorSettings

    bundle = load_bundle(machine[1])
    deaf = DetectorSettings(warning_threshold=1e9, alarm_threshold=1e9)  # the learned detector never fires
    t = np.arange(N) / RATE
    shaking = np.round(np.column_stack([2.0 * np.sin(2 * np.pi * 40 * t)] * 2), 3)  # 55 mm/s: zone D anywhere
    counts = np.rint(shaking * 1000).astype(np.int16)

    def run(pipeline: Pipeline) -> list:
        out = []
        for index in range(6):
            snapshot = Snapshot(index=index, first_sample=index * N, capture_time_us=index * 1_000_000,
                                sample_rate_hz=RATE, scale=float(np.float32(0.001)), counts=counts)
            out.append(pipeline.process(snapshot))
        return out

    with_zone = run(Pipeline(bundle, deaf, iso_group="2-rigid", zone_alarm=True))
    states = [reading.state for reading, _ in with_zone]
    assert states[:2] == [State.NORMAL, State.NORMAL] and states[2:] == [State.ALARM] * 4  # k=3 of n=5
    transitions = [t for _, t in with_zone if t is not None]
    assert len(transitions) == 1 and transitions[0].state == State.ALARM
    assert transitions[0].reason == "iso_zone_d:ch1" and with_zone[-1][0].iso_zones == {"ch1": "D", "ch2": "D"}
    assert with_zone[-1][0].defect is not None  # an alarm carries a defect object, whatever raised it
    without = run(Pipeline(bundle, deaf))
    assert {reading.state for reading, _ in without} == {State.NORMAL} and all(t is None for _, t in without)
    # A lost snapshot is judged against what was announced (the zone alarm), and so is the way back from it.
    lost = Pipeline(bundle, deaf, iso_group="2-rigid", zone_alarm=True)
    run(lost)
    assert lost.missing() is None
    fault = lost.missing()
    assert fault is not None and (fault.previous_state, fault.state) == (State.ALARM, State.SENSOR_FAULT)
    back = [t for _, t in run(lost) if t is not None]
    assert [(t.previous_state, t.state) for t in back] == [(State.SENSOR_FAULT, State.ALARM)]
    # Restarted from the agent's checkpoint (learned detector normal, zone alarm): still in alarm from the first
    # snapshot, and no second alarm announced.
    resumed = Pipeline(bundle, deaf, iso_group="2-rigid", zone_alarm=True)
    resumed.resume(State.NORMAL, State.NORMAL, None, zone=State.ALARM)
    after = run(resumed)
    assert [reading.state for reading, _ in after] == [State.ALARM] * 6 and all(t is None for _, t in after)
