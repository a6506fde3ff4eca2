"""report.json and the training guardrails, on hand-made traces and spans (no training needed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge.model.bundle import Bundle, DetectorSettings, FeatureSpec, ModelCard, Scaler
from edge.scoring.detector import State
from trainer import calibrate
from trainer.dataset import Dataset, DatasetError
from trainer.evaluate import Trace, _axis, build_report, plot

N, A, W = State.NORMAL, State.ALARM, State.WARNING
CHANNELS = ("bearing1", "bearing2", "bearing3", "bearing4")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def card(**changes: object) -> ModelCard:
    base = ModelCard(
        id="cm-test", created="2026-01-01T00:00:00.000Z",
        feature_spec=FeatureSpec("mean_abs", CHANNELS, 20000, 20480, 2),
        scaler=Scaler((0.0,) * 4, (1.0,) * 4), threshold_rule="calibration",
        detector=DetectorSettings(2.0, 2.5, k=2, n=3), healthy_min=(0.05,) * 4, quantization={},
        provenance={"threshold_basis": {"margin": 2.5}, "training_warnings": ["only 12 healthy snapshots"]},
        model_file="model_int8.tflite", model_sha256="0" * 64, channel_error_reference=(0.1,) * 4,
    )
    return ModelCard(**{**base.__dict__, **changes})


def story(start: str = "2004-02-12T10:32:39") -> tuple[Dataset, Trace]:
    """40 snapshots 10 min apart: a false alarm (rows 10-12, bearing2), a warning that clears (20-22), a sensor
    fault (26), then the real alarm from row 30 to the end (bearing3)."""
    states = [N] * 10 + [A] * 3 + [N] * 7 + [W] * 3 + [N] * 7 + [A] * 10
    faults: list[str | None] = [None] * 40
    faults[26] = "flatline:bearing1"
    states[26] = State.NORMAL
    top = [None if s == N else (1 if i < 20 else 2) for i, s in enumerate(states)]
    scores = np.where(np.array([s == A for s in states]), 3.0, 0.5)
    scores[26] = np.nan
    stamps = np.datetime64(start, "ms") + np.arange(40) * np.timedelta64(10, "m")
    dataset = Dataset(source="run", kind="ims", timestamps=stamps, features=np.full((40, 4), 0.1), channels=CHANNELS)
    trace = Trace(scores=scores, errors=np.tile(scores[:, None], (1, 4)), faults=faults, states=states, top_channels=top)
    return dataset, trace


def test_lead_time_counts_from_the_persistent_alarm_not_a_false_one() -> None:
    dataset, trace = story()
    failure = np.datetime64("2004-02-12T18:00:00", "ms")
    report = build_report(dataset, Bundle(Path("b"), card(), Path("m")), trace, failure, dataset.timestamps[5])
    assert report["first_alarm"] == "2004-02-12T12:12:39.000Z"  # row 10: the false one, still reported
    assert report["persistent_alarm_start"] == "2004-02-12T15:32:39.000Z"  # row 30
    assert report["lead_time_hours"] == pytest.approx((failure - dataset.timestamps[30]) / np.timedelta64(1, "h"), abs=1e-3)
    assert report["false_alarm_episodes"] == 1
    assert report["first_warning"] == report["first_alarm"]
    assert [e["start"] for e in report["warning_episodes"]] == [
        "2004-02-12T12:12:39.000Z", "2004-02-12T13:52:39.000Z", "2004-02-12T15:32:39.000Z"]
    assert report["false_warning_episodes"] == 2
    assert report["top_channel_at_first_alarm"] == "bearing2"
    assert report["top_channel_at_persistent_alarm"] == "bearing3"
    assert report["sensor_fault_snapshots"] == 1 and report["final_state"] == "alarm"
    assert report["calibration_margin"] == 2.5 and report["training_warnings"] == ["only 12 healthy snapshots"]
    assert report["margin_before_first_warning"] == pytest.approx(2.5 / 0.5)


def test_every_time_in_the_report_has_one_iso_8601_format() -> None:
    dataset, trace = story()
    report = build_report(dataset, Bundle(Path("b"), card(), Path("m")), trace, dataset.timestamps[-1],
                          dataset.timestamps[5])

    def times(value: object) -> list[str]:
        if isinstance(value, dict):
            return [t for v in value.values() for t in times(v)]
        if isinstance(value, list):
            return [t for v in value for t in times(v)]
        return [value] if isinstance(value, str) and value[:2] in ("19", "20") else []

    found = times(report)
    assert len(found) > 8 and all(ISO.match(t) for t in found), found


def test_no_persistent_alarm_means_no_lead_time() -> None:
    dataset, trace = story()
    states = trace.states[:30] + [N] * 10
    quiet = Trace(trace.scores, trace.errors, trace.faults, states, trace.top_channels[:30] + [None] * 10)
    report = build_report(dataset, Bundle(Path("b"), card(), Path("m")), quiet, None, None)
    assert report["lead_time_hours"] is None and report["persistent_alarm_start"] is None
    assert report["false_alarm_episodes"] == 1 and report["false_warning_episodes"] == 2


def test_seconds_tables_plot_against_hours_not_1970(tmp_path: Path) -> None:
    dataset, trace = story(start="1970-01-01T00:00:00")
    axis = _axis(dataset.timestamps)
    assert axis.label == "hours since the first row" and axis.x[6] == pytest.approx(1.0)
    dated = _axis(story()[0].timestamps)
    assert dated.label == "time (UTC)"
    plot(dataset, Bundle(Path("b"), card(), Path("m")), trace, dataset.timestamps[5], dataset.timestamps[-1],
         tmp_path / "score.png")
    assert (tmp_path / "score.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_refuses_too_few_healthy_snapshots_and_warns_below_the_recommended() -> None:
    from trainer.train import split_holdout, training_warnings

    with pytest.raises(DatasetError, match=r"run: 9 healthy snapshots in the training span: at least 10 are needed"):
        split_holdout(np.arange(9), 2, 0.2, "run")
    fit, held_out = split_holdout(np.arange(12), 2, 0.2, "run")
    assert held_out.size - 1 >= 3  # never a single held-out window
    rng = np.random.default_rng(0)
    dataset = Dataset("run", "ims", np.arange(12).astype("datetime64[m]"), 1 + 0.01 * rng.standard_normal((12, 4)), CHANNELS)
    warnings = training_warnings(dataset, np.arange(12), fit, held_out)
    assert len(warnings) == 1 and "only 12 healthy snapshots" in warnings[0] and "widened by 1.58x" in warnings[0]
    low = calibrate.thresholds("calibration", np.array([0.5, 1.0]), np.array([0.8, 0.9, 0.7]), 12)
    assert low.alarm == pytest.approx(calibrate.ALARM_MARGIN * np.sqrt(30 / 12))
    assert low.basis["margin"] == pytest.approx(low.alarm / 0.9)


def test_a_training_span_reaching_into_the_failure_is_not_passed_silently() -> None:
    from trainer.train import split_holdout, training_warnings

    rng = np.random.default_rng(1)
    features = 1 + 0.01 * rng.standard_normal((60, 4))
    rows = np.arange(60)
    fit, held_out = split_holdout(rows, 2, 0.2, "run")
    dataset = Dataset("run", "ims", rows.astype("datetime64[m]"), features, CHANNELS)
    assert training_warnings(dataset, rows, fit, held_out) == []
    features[52:, 2] *= np.linspace(1.05, 1.6, 8)  # bearing3 takes off at the end of the span
    warnings = training_warnings(dataset, rows, fit, held_out)
    assert len(warnings) == 1 and "drifts" in warnings[0] and "bearing3" in warnings[0]
    assert "--train-fraction" in warnings[0]


def test_f1_rule_and_target_precision() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1], dtype=bool)
    best = calibrate.best_f1(scores, labels, None, {"calibration_max": 0.3})
    assert 0.4 < best.alarm < 0.5  # flags 0.5 and up: 5 of 5 anomalies, one normal row, F1 = 0.909
    assert best.basis["validation_f1"] == pytest.approx(10 / 11)
    precise = calibrate.best_f1(scores, labels, 1.0, {"calibration_max": 0.3})
    assert 0.6 < precise.alarm < 0.7 and precise.rule.startswith("precision:")
    assert precise.warning == pytest.approx(0.9 * precise.alarm)
    with pytest.raises(ValueError, match="--target-precision"):
        calibrate.best_f1(scores, labels, 1.5, {})


def test_bundle_id_follows_the_content() -> None:
    from trainer.train import content_id

    assert content_id(card()) == content_id(card(created="2030-01-01T00:00:00.000Z", id="other"))
    assert content_id(card()) != content_id(card(model_sha256="1" * 64))
    assert content_id(card()) != content_id(card(detector=DetectorSettings(2.0, 2.6, k=2, n=3)))
    assert re.fullmatch(r"cm-[0-9a-f]{16}", content_id(card()))


def test_report_json_round_trips() -> None:
    dataset, trace = story()
    report = build_report(dataset, Bundle(Path("b"), card(), Path("m")), trace, None, None)
    assert json.loads(json.dumps(report)) == report
