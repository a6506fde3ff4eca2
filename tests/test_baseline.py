"""Baseline cards (issue 20): the feature spec alone, for a machine that has no model yet.

`cm-train baseline` writes one (from flags or from a recording's header) that `cm-edge --check` accepts; bad
ones are refused with the key named; model cards load as before. The agent's pipeline runs it without a
model: state `learning`, sensor faults and (with zone_alarm) ISO zone alarms, never a learned alarm; the
payloads match their schemas. Probation lets a model take over from a baseline on its own merits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.ingest.snapshot import Snapshot
from edge.model.bundle import Baseline, BundleError, load_bundle, load_deployable
from edge.mqtt.payloads import ModelRef, alert, state, telemetry
from edge.mqtt.schemas import validate
from edge.probation import Probation, ProbationSettings
from edge.scoring.detector import BASELINE_SETTINGS, ZONE_THRESHOLDS, State
from edge.scoring.pipeline import Pipeline
from edge.scoring.reading import Reading
from firmware_bridge.synth import generate

BIN = Path(sys.executable).parent
RATE, N = 20_480, 8192
CHANNELS = "bearing1,bearing2"
COUNTERS = dict.fromkeys(("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped", "snapshots",
                          "snapshots_discarded", "alerts_pending", "telemetry_dropped"), 0)


def cm_train_baseline(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "cm-train", "baseline", "--out", out, *flags], capture_output=True, text=True,
                          timeout=120)


def baseline_card(tmp_path: Path, *flags: str) -> Path:
    result = cm_train_baseline(tmp_path / "baseline", "--channels", CHANNELS, "--sample-rate", str(RATE),
                               "--snapshot-samples", str(N), *flags)
    assert result.returncode == 0, result.stderr
    return tmp_path / "baseline"


def edge_check(tmp_path: Path, bundle: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "edge.toml"
    config.write_text(f'device_id = "pump-7"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "{bundle}"\n[mqtt]\nhost = "127.0.0.1"\n'
                      f'[outbox]\npath = "{tmp_path / "state" / "outbox.sqlite"}"\n')
    return subprocess.run([BIN / "cm-edge", "--config", config, "--check", "--offline"], capture_output=True,
                          text=True, timeout=60)


def test_cm_train_baseline_writes_a_card_cm_edge_check_accepts(tmp_path: Path) -> None:
    directory = baseline_card(tmp_path, "--interval-s", "600", "--min-level-g", "0.05")
    card = json.loads((directory / "model_card.json").read_text())
    assert card["kind"] == "baseline" and card["id"].startswith("baseline-")
    assert card["feature_spec"]["channels"] == ["bearing1", "bearing2"] and card["feature_spec"]["snapshot_interval_s"] == 600
    assert not {"scaler", "detector", "model_file", "model_sha256", "healthy_min"} & set(card)
    assert sorted(p.name for p in directory.iterdir()) == ["model_card.json"]  # no model
    checked = edge_check(tmp_path, directory)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout and "a baseline card" in checked.stdout and "state learning" in checked.stdout
    loaded = load_deployable(directory)
    assert isinstance(loaded, Baseline) and loaded.card.healthy_min == (0.05, 0.05)
    with pytest.raises(BundleError, match="kind: a baseline card has no model"):
        load_bundle(directory)  # the trainer's loader (evaluate, sign) wants a model


def test_the_readme_command_writes_a_card_for_the_ims_rig(tmp_path: Path) -> None:
    result = subprocess.run(["cm-train", "baseline", "--channels", "bearing1,bearing2,bearing3,bearing4", "--sample-rate", "20000", "--snapshot-samples", "20480", "--interval-s", "600", "--min-level-g", "0.02", "--out", "bundles/pump9"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    loaded = load_deployable(tmp_path / "bundles" / "pump9")
    assert isinstance(loaded, Baseline) and loaded.card.feature_spec.sample_rate_hz == 20_000
    assert loaded.card.feature_spec.snapshot_interval_s == 600 and loaded.card.min_level_g == 0.02


def test_install_sh_accepts_a_baseline_card(tmp_path: Path) -> None:
    directory = baseline_card(tmp_path)
    install = Path(__file__).resolve().parents[1] / "deploy" / "install.sh"
    result = subprocess.run(["bash", install, "--dry-run", "--prefix", tmp_path / "cm-edge", "--arch", "arm64",
                             "--bundle", directory], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "is a baseline card: no model yet" in result.stdout and f"cp -r {directory} " in result.stdout
    (directory / "model_card.json").unlink()
    refused = subprocess.run(["bash", install, "--dry-run", "--prefix", tmp_path / "cm-edge", "--bundle", directory],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "expected a bundle directory holding model_card.json" in refused.stderr


def test_cm_train_baseline_reads_the_spec_from_a_recording_header(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, files=3, fail_bearing=1, seed=0)
    result = cm_train_baseline(tmp_path / "baseline", run, "--feature-set", "vibration", "--bearing", "za-2115",
                               "--shaft-rpm", "2000")
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "baseline" / "model_card.json").read_text())["feature_spec"]
    assert spec["channels"] == ["bearing1", "bearing2", "bearing3", "bearing4"] and spec["sample_rate_hz"] == 20_000  # IMS
    assert spec["snapshot_samples"] == 20_480 and spec["snapshot_interval_s"] == 600 and spec["scale"] > 0
    assert spec["feature_set"] == "vibration" and spec["bearing"]["name"] == "za-2115" and spec["shaft_rpm"] == 2000
    # The vibration set without its bearing cannot compute its envelope lines: refused, naming the key.
    refused = cm_train_baseline(tmp_path / "no-bearing", run, "--feature-set", "vibration")
    assert refused.returncode == 1 and "feature_spec" in refused.stderr and "bearing" in refused.stderr
    missing = cm_train_baseline(tmp_path / "no-rate", "--channels", CHANNELS, "--snapshot-samples", "1024")
    assert missing.returncode == 1 and "--sample-rate: required without a recording" in missing.stderr


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A good card from cm-train baseline, for the bad ones to be made from."""
    return json.loads((baseline_card(tmp_path_factory.mktemp("written")) / "model_card.json").read_text())


@pytest.mark.parametrize(("change", "named"), [
    ({"scaler": {"minimum": [0, 0], "maximum": [1, 1]}}, "scaler: not part of a baseline card"),
    ({"detector": {"warning_threshold": 1, "alarm_threshold": 2}}, "detector: not part of a baseline card"),
    ({"model_file": "model_int8.tflite"}, "model_file: not part of a baseline card"),
    ({"id": ""}, "id"),
    ({"kind": "sketch"}, "kind: expected one of"),
    ({"min_level_g": -1}, "min_level_g"),
    ({"feature_spec": {"sample_rate_hz": 0}}, "feature_spec.sample_rate_hz: expected a positive integer"),
    ({"feature_spec": {"channels": []}}, "feature_spec.channels"),
    ({"feature_spec": {"feature_set": "vibration", "features": None}}, "feature_spec"),
])
def test_bad_baseline_cards_are_refused_naming_the_key(written: dict, tmp_path: Path, change: dict, named: str) -> None:
    directory = tmp_path / "baseline"
    directory.mkdir()
    path = directory / "model_card.json"
    card = json.loads(json.dumps(written))
    for key, value in change.items():
        if key == "feature_spec":
            card[key] = {k: v for k, v in {**card[key], **value}.items() if v is not None}
        else:
            card[key] = value
    path.write_text(json.dumps(card))
    with pytest.raises(BundleError) as refused:
        load_deployable(directory)
    assert str(path) in str(refused.value) and named in str(refused.value)
    if "scaler" in change:  # and the agent's own check says the same (one case: a process each is slow)
        checked = edge_check(tmp_path, directory)
        assert checked.returncode == 2 and named in checked.stdout


def snapshot(index: int, counts: np.ndarray) -> Snapshot:
    return Snapshot(index=index, first_sample=index * N, capture_time_us=(index + 1) * 600_000_000, sample_rate_hz=RATE,
                    scale=float(np.float32(0.001)), counts=counts)


def signal(amplitude_g: float, seed: int = 0) -> np.ndarray:
    """Two channels of a 40 Hz sine (its velocity sets the ISO zone) with noise, in counts of 1 mg."""
    t = np.arange(N) / RATE
    rng = np.random.default_rng(seed)
    g = np.column_stack([amplitude_g * np.sin(2 * np.pi * 40 * t) + rng.normal(0, 0.05, N) for _ in range(2)])
    return np.rint(g * 1000).astype(np.int16)


def vibration_baseline(tmp_path: Path) -> Baseline:
    loaded = load_deployable(baseline_card(tmp_path, "--feature-set", "vibration", "--bearing", "6205-2rs",
                                           "--shaft-rpm", "1800", "--min-level-g", "0.02"))
    assert isinstance(loaded, Baseline)
    return loaded


def test_the_pipeline_without_a_model_learns_faults_and_zone_alarms(tmp_path: Path) -> None:
    baseline = vibration_baseline(tmp_path)
    pipeline = Pipeline(baseline, BASELINE_SETTINGS, iso_group="2-rigid", zone_alarm=True)
    model = ModelRef(baseline.card.id, baseline.model_sha256)
    quiet, dead, shaking = signal(0.05), np.rint(np.random.default_rng(1).normal(0, 3, (N, 2))).astype(np.int16), signal(2.0)
    plan = [quiet] * 3 + [dead] * 3 + [quiet] * 3 + [shaking] * 6 + [quiet] * 8
    readings, transitions = [], []
    for index, counts in enumerate(plan):
        reading, transition = pipeline.process(snapshot(index, counts))
        readings.append(reading)
        assert reading.score is None and reading.channel_errors is None  # nothing is scored: there is no model
        payload = telemetry("pump-7", reading, pipeline.channels, COUNTERS)
        validate("telemetry", payload)
        validate("state", state("pump-7", reading, reading.capture_time_us, pipeline.channels, model))
        assert set(payload["iso_zones"]) == {"bearing1", "bearing2"} and "kurtosis" in payload["channel_features"]["bearing1"]
        if transition is not None:
            transitions.append((str(transition.previous_state), str(transition.state), transition.reason))
            validate("alert", alert("pump-7", transition, reading, pipeline.channels, ZONE_THRESHOLDS, model))
    states = [str(r.state) for r in readings]
    assert states[:4] == ["learning"] * 4 and states[4:6] == ["sensor_fault"] * 2  # fault_after 2
    assert readings[4].reason == "dropout:bearing1,bearing2"
    assert transitions[:2] == [("learning", "sensor_fault", "dropout:bearing1,bearing2"),
                               ("sensor_fault", "learning", None)]
    assert transitions[2][:2] == ("learning", "alarm") and transitions[2][2].startswith("iso_zone_d:")  # k=3 of n=5
    assert transitions[3][:2] == ("alarm", "learning") and len(transitions) == 4  # cleared after clear_after quiet
    assert all(r.state != State.NORMAL for r in readings)  # without a model nothing ever says normal


def test_without_zone_alarm_a_baseline_raises_nothing_but_sensor_faults(tmp_path: Path) -> None:
    pipeline = Pipeline(vibration_baseline(tmp_path), BASELINE_SETTINGS)
    out = [pipeline.process(snapshot(i, signal(2.0, seed=i))) for i in range(8)]
    assert {reading.state for reading, _ in out} == {State.LEARNING} and all(t is None for _, t in out)
    assert out[-1][0].iso_zones is not None and set(out[-1][0].iso_zones.values()) == {"D"}  # zones still shown


def reading(state: State, score: float | None, index: int) -> Reading:
    return Reading(capture_time_us=index * 1_000_000, snapshot=index, features=np.zeros(1), score=score,
                   channel_errors=None, state=state, reason=None)


def test_probation_on_a_baseline_passes_a_calm_candidate_and_fails_an_alarming_one() -> None:
    calm = Probation(ProbationSettings(snapshots=3, seconds=3600))
    verdicts = [calm.observe(reading(State.LEARNING, None, i), reading(State.NORMAL, 0.1, i)) for i in range(3)]
    assert verdicts[:2] == [None, None] and verdicts[2] is not None and verdicts[2].passed and calm.compared == 3
    loud = Probation(ProbationSettings(snapshots=3, seconds=3600))
    failed = loud.observe(reading(State.LEARNING, None, 0), reading(State.WARNING, 9.0, 0))
    assert failed is not None and not failed.passed and "where the active model said learning" in failed.reason
    faulted = Probation(ProbationSettings(snapshots=1, seconds=3600))
    assert faulted.observe(reading(State.SENSOR_FAULT, None, 0), reading(State.SENSOR_FAULT, None, 0)) is None
