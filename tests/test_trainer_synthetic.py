"""A synthetic run to failure from cm-synth: fit on the healthy part, evaluate on all of it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trained import RUN_FILES, make_synthetic_run, shared_bundle, shared_dropout_run, shared_run

from edge.model.bundle import load_bundle
from edge.model.runtime import Model
from trainer.cli import main
from trainer.dataset import load_dataset, parse_time

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    assert main(["evaluate", str(shared_bundle()), str(shared_run()), "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()) | {"_out": str(out)}


def test_alarm_comes_before_the_end_and_names_the_failing_bearing(report: dict) -> None:
    assert report["snapshots"] == RUN_FILES
    assert report["first_alarm"] is not None
    assert report["lead_time_hours"] > 1.0  # six or more snapshots before the run ends
    assert report["top_channel_at_first_alarm"] == "bearing3"
    assert report["final_state"] == "alarm"


def test_no_alarm_in_the_healthy_part(report: dict) -> None:
    assert report["alarms_in_training_span"] == 0
    assert report["false_alarm_episodes"] == 0
    assert report["persistent_alarm_start"] == report["first_alarm"]
    # The defect stays below the noise for the first ~60% of the run (cm-synth's physics).
    first_alarm = parse_time(report["first_alarm"])
    start = parse_time("2004-02-12 10:32:39")
    assert first_alarm - start > np.timedelta64(int(0.6 * RUN_FILES) * 10, "m")


def test_report_and_plot_are_written(report: dict) -> None:
    out = Path(report["_out"])
    assert (out / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("snapshots", "first_pointwise_alarm", "first_alarm", "lead_time_hours", "alarms_in_training_span",
                "false_alarm_episodes", "top_channel_at_first_alarm", "sensor_fault_snapshots"):
        assert key in report


def test_lead_time_is_measured_to_the_failure_time(tmp_path: Path, report: dict) -> None:
    failure = "2004-02-13 23:59:59"
    assert main(["evaluate", str(shared_bundle()), str(shared_run()), "--out", str(tmp_path), "--failure-at", failure]) == 0
    timed = json.loads((tmp_path / "report.json").read_text())
    expected = (parse_time(failure) - parse_time(timed["first_alarm"])) / np.timedelta64(1, "h")
    assert timed["lead_time_hours"] == pytest.approx(expected, abs=1e-3)


def test_dead_sensor_at_the_end_is_a_sensor_fault_not_healthy(tmp_path: Path) -> None:
    run = shared_dropout_run()
    assert main(["evaluate", str(shared_bundle()), str(run), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["sensor_fault_snapshots"] == 3
    assert report["final_state"] == "sensor_fault"
    assert all(fault.endswith("bearing3") for fault in report["sensor_faults"])
    assert report["top_channel_at_first_alarm"] == "bearing3"
    assert report["false_alarm_episodes"] == 0


def test_input_ten_times_beyond_the_training_range_scores_above_the_alarm() -> None:
    bundle = load_bundle(shared_bundle())
    scorer = Model(bundle)
    low, high = np.array(bundle.card.scaler.minimum), np.array(bundle.card.scaler.maximum)
    window = scorer.window
    everywhere = np.tile(low + 10 * (high - low), (window, 1))
    assert scorer.score(everywhere).score > bundle.card.alarm_threshold
    # One bearing alone, the others mid-range: int8 input saturation must not hide it, and it is named.
    one = np.tile((low + high) / 2, (window, 1))
    one[:, 2] = low[2] + 10 * (high[2] - low[2])
    result = scorer.score(one)
    assert result.score > bundle.card.alarm_threshold
    assert int(np.argmax(result.channel_errors)) == 2
    # The int8 input range ends well below 10x: the score is measured against the float input.
    scale, zero_point = scorer.input_quantization
    assert (127 - zero_point) * scale < 10


def test_card_records_quantization_check_and_thresholds() -> None:
    card = load_bundle(shared_bundle()).card
    q = card.quantization
    assert q["decision_agreement"] >= 0.995
    assert q["correlation"] > 0.95
    assert q["score_at_10x_training_range"] > card.alarm_threshold
    assert card.threshold_rule.startswith("calibration")
    assert 0 < card.warning_threshold < card.alarm_threshold
    assert card.detector.alarm_threshold == card.alarm_threshold
    assert card.provenance["seed"] == 0 and card.feature_spec.window >= 1


def test_training_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    from trained import make_bundle

    again = make_bundle(shared_run(), tmp_path / "again")
    first = load_bundle(shared_bundle()).card
    assert load_bundle(again).card.model_sha256 == first.model_sha256


def test_export_refuses_int8_that_decides_differently() -> None:
    from trainer.export import ExportError, compare, require_agreement

    floats = np.linspace(0.1, 1.0, 1000)
    close = compare(floats * 1.001, floats, warning=0.5, alarm=0.8)
    require_agreement(close)  # a handful of snapshots right at a threshold is within 0.5%
    shifted = compare(floats * 1.1, floats, warning=0.5, alarm=0.8)
    with pytest.raises(ExportError, match=r"int8 and float32 decisions disagree on \d+\.\d+% of 1000"):
        require_agreement(shifted)


def test_the_issue_case_alarms_on_bearing3_without_a_warning_while_healthy(tmp_path: Path) -> None:
    """cm-synth DATA --files 120 --fail-bearing 3 --seed 4242 --dropout-at-end, trained on its first 40 files:
    once this named bearing2 at the first alarm after a warning that came and went on healthy snapshots."""
    from trained import make_bundle

    from firmware_bridge.synth import plan_run
    from trainer.evaluate import run_detector

    run = make_synthetic_run(tmp_path / "run", files=120, seed=4242, fail_bearing=3, dropout_at_end=True)
    bundle = make_bundle(run, tmp_path / "bundle", train_fraction=40 / 120, epochs=100, patience=10)
    assert main(["evaluate", str(bundle), str(run), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["top_channel_at_first_alarm"] == "bearing3"
    assert report["false_alarm_episodes"] == 0
    trace = run_detector(load_dataset(run), load_bundle(bundle))
    healthy = plan_run(120, 3, 4242, dropout_at_end=True).severity == 0
    assert healthy.sum() > 60  # the check below covers the whole healthy part, not a sliver of it
    raised = [row for row, state in enumerate(trace.states) if state in ("warning", "alarm")]
    assert raised and not healthy[raised].any()
    names = [trace.top_channels[row] for row in raised]
    assert set(names) == {2}  # every warning and alarm names bearing3
