"""`cm-train fit TABLE --feature-spec CARD` (issue 20): a bundle trained on the features an agent published (a
table from cm-fleet's historian) takes the feature spec of the card the machine runs, so the agent accepts it,
and it matches a bundle trained on the same run's files (parity: the features table is no second contract).

The measured differences (thresholds, scores, lead) are printed (-s shows them) and kept in the report.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tables import write_published_features
from trained import first_files, make_bundle, make_synthetic_run, shared_bundle, shared_run, table_bundle

from edge.compatibility import check_same_stream
from edge.model.bearing import PRESETS
from edge.model.bundle import BundleError, load_bundle, load_deployable
from firmware_bridge.recording import RecordingSpec
from trainer.baseline import BaselineOptions, write
from trainer.cli import main
from trainer.dataset import DatasetError, load_dataset, load_recording, load_spec_table
from trainer.evaluate import dataset_spec, evaluate, run_detector
from trainer.options import DatasetSpec
from trainer.spec_card import read_spec_card

BIN = Path(sys.executable).parent


def edge_check(tmp_path: Path, bundle: Path, card: dict) -> subprocess.CompletedProcess:
    """`cm-edge --check` on a config that states the machine's sensor as the card's spec does."""
    spec = card["feature_spec"]
    config = tmp_path / "edge.toml"
    channels = ", ".join(f'"{c}"' for c in spec["channels"])
    config.write_text(f'device_id = "pump-7"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "{bundle}"\n'
                      f'[mqtt]\nhost = "127.0.0.1"\n[outbox]\npath = "{tmp_path / "state" / "outbox.sqlite"}"\n'
                      f'[sensor]\nchannels = [{channels}]\nsample_rate_hz = {spec["sample_rate_hz"]}\n'
                      f'snapshot_samples = {spec["snapshot_samples"]}\n')
    return subprocess.run([BIN / "cm-edge", "--config", config, "--check", "--offline"], capture_output=True,
                          text=True, timeout=60)


def card_of(bundle: Path) -> dict:
    return json.loads((bundle / "model_card.json").read_text())


@pytest.fixture(scope="module")
def vibration_baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A short run and the baseline card `cm-train baseline` reads from it (vibration set): (run, card directory)."""
    root = tmp_path_factory.mktemp("vibration")
    run = make_synthetic_run(root / "run", files=40)
    card = write(BaselineOptions(out=root / "baseline", feature_set="vibration", recording=run,
                                 bearing=PRESETS["6205-2rs"], shaft_rpm=2000.0))
    return run, card.parent


def test_a_published_vibration_table_reads_into_the_spec_s_channel_major_order(vibration_baseline, tmp_path: Path) -> None:
    run, baseline = vibration_baseline
    card = read_spec_card(baseline)
    table = write_published_features(tmp_path / "features.csv", run, card.spec, order="reversed")
    header = table.read_text().splitlines()[0].split(",")
    assert header[1] == "bearing4.envelope_ftf" and "bearing1.velocity_rms" in header
    from_table = load_spec_table(table, card)
    from_files = load_recording(run, DatasetSpec(feature_set="vibration", bearing=card.spec.bearing,
                                                 shaft_rpm=card.spec.shaft_rpm))
    assert from_table.channels == from_files.channels == card.spec.channels
    assert (from_table.timestamps == from_files.timestamps).all()
    # The only difference is the telemetry's rounding to 6 decimals.
    assert np.abs(from_table.features - from_files.features).max() <= 5.1e-7
    assert from_table.feature_config == from_files.feature_config


def test_a_baseline_card_s_spec_becomes_the_bundle_s_and_the_agent_accepts_it(vibration_baseline, tmp_path: Path) -> None:
    run, baseline = vibration_baseline
    table = write_published_features(tmp_path / "features.csv", run, read_spec_card(baseline).spec)
    bundle = tmp_path / "bundle"
    assert main(["fit", str(table), "--feature-spec", str(baseline / "model_card.json"), "--out", str(bundle),
                 "--epochs", "3", "--train-fraction", "0.6", "--feature-set", "vibration", "--quiet"]) == 0
    card, base = card_of(bundle), card_of(baseline)
    assert card["feature_spec"] == base["feature_spec"] | {"window": card["feature_spec"]["window"]}
    assert card["provenance"]["source"] == str(table) and card["provenance"]["kind"] == "features"
    assert card["provenance"]["feature_spec_from"] == str(baseline / "model_card.json")
    assert card["provenance"]["feature_spec_card_id"] == base["id"]
    assert card["provenance"]["feature_spec_card_kind"] == "baseline"
    # The agent that runs the baseline takes the new bundle over the air (same frames), and cm-edge starts on it.
    check_same_stream(load_deployable(baseline), load_bundle(bundle))
    checked = edge_check(tmp_path, bundle, card)
    assert checked.returncode == 0, checked.stderr
    # evaluate reads a features table by the bundle's own spec.
    assert main(["evaluate", str(bundle), str(table), "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["snapshots"] == 40


@pytest.mark.slow
def test_the_readme_command_trains_the_baseline_machine_s_model_from_its_published_features(tmp_path: Path) -> None:
    """README: the baseline card of pump-9 (its own README command), then its agent's features, as cm-fleet's
    telemetry.csv exports them (mean_abs: one column per channel), train the bundle that agent takes over."""
    baseline = subprocess.run(["cm-train", "baseline", "--channels", "bearing1,bearing2,bearing3,bearing4", "--sample-rate", "20000", "--snapshot-samples", "20480", "--interval-s", "600", "--min-level-g", "0.02", "--out", "bundles/pump9"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_path_env())
    assert baseline.returncode == 0, baseline.stderr
    # Its healthy first 60 snapshots (10 hours at 600 s) keep the default training short.
    healthy = first_files(shared_run(), 60, tmp_path / "healthy")
    write_published_features(tmp_path / "pump-9-telemetry.csv", healthy, read_spec_card(tmp_path / "bundles" / "pump9").spec)
    fitted = subprocess.run(["cm-train", "fit", "pump-9-telemetry.csv", "--feature-spec", "bundles/pump9", "--out", "bundles/pump9-model"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_path_env())
    assert fitted.returncode == 0, fitted.stderr
    bundle = tmp_path / "bundles" / "pump9-model"
    card, base = card_of(bundle), card_of(tmp_path / "bundles" / "pump9")
    assert card["feature_spec"] == base["feature_spec"] | {"window": card["feature_spec"]["window"]}
    assert card["feature_spec"]["snapshot_interval_s"] == 600
    check_same_stream(load_deployable(tmp_path / "bundles" / "pump9"), load_bundle(bundle))
    checked = edge_check(tmp_path, bundle, card)
    assert checked.returncode == 0, checked.stderr


def _path_env() -> dict[str, str]:
    """The venv's commands first on PATH, as an installed cm-train is."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_a_features_table_bundle_without_a_spec_still_reads_no_frames(tmp_path: Path) -> None:
    """Without --feature-spec a table trains as before (sample rate 0); its card cannot be a spec for another."""
    with pytest.raises(BundleError, match=r"feature_spec.sample_rate_hz is 0: .*cm-train baseline"):
        read_spec_card(table_bundle(1, 1))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h: h.replace(",bearing2.kurtosis", ""), r"column 'bearing2.kurtosis' is missing .*baseline/model_card.json"),
    (lambda h: h + ",bearing5.kurtosis", r"column 'bearing5.kurtosis' is not a feature of .*baseline/model_card.json's spec"),
    (lambda h: h.replace("bearing2.kurtosis", "bearing2.kurtosys"),
     r"column 'bearing2.kurtosis' is missing .*; the table has bearing2.kurtosys, which the spec does not name"),
    (lambda h: h + ",score", r"column 'score' is not a feature of .*\(a label column: --label-column\)"),
])
def test_missing_and_extra_columns_are_refused_by_name(vibration_baseline, tmp_path: Path, edit, message: str) -> None:
    run, baseline = vibration_baseline
    spec = read_spec_card(baseline).spec
    table = write_published_features(tmp_path / "features.csv", run, spec, order="spec")
    lines = table.read_text().splitlines()
    header = edit(lines[0])
    width = len(header.split(","))
    table.write_text("\n".join([header] + [",".join((row.split(",") + ["0"])[:width]) for row in lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match=message):
        load_spec_table(table, read_spec_card(baseline))


@pytest.mark.parametrize(("flags", "message"), [
    (["--feature-set", "mean_abs"], "--feature-set mean_abs contradicts --feature-spec .*says vibration"),
    (["--channels", "bearing1,bearing2"], "--channels bearing1,bearing2 contradicts .*bearing1,bearing2,bearing3,bearing4"),
    (["--sample-rate", "25600"], "--sample-rate 25600 contradicts .*says 20000"),
    (["--shaft-rpm", "1500"], "--shaft-rpm 1500.0 contradicts .*says 2000.0"),
    (["--format", "csv"], "--format: not with --feature-spec"),
])
def test_flags_that_contradict_the_card_are_refused_by_name(vibration_baseline, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], flags, message) -> None:
    run, baseline = vibration_baseline
    table = write_published_features(tmp_path / "features.csv", run, read_spec_card(baseline).spec)
    assert main(["fit", str(table), "--feature-spec", str(baseline), "--out", str(tmp_path / "b"), *flags]) == 1
    error = capsys.readouterr().err
    assert error.startswith("cm-train fit: error: ")
    assert len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not (tmp_path / "b").exists()


def test_flags_that_agree_with_the_card_and_a_recording_are_told_apart(vibration_baseline, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run, baseline = vibration_baseline
    assert main(["fit", str(run), "--feature-spec", str(baseline), "--out", str(tmp_path / "b")]) == 1
    assert "--feature-spec reads a features table (a .csv file)" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "features.csv"), "--feature-spec", str(tmp_path), "--out", str(tmp_path / "b")]) == 1
    assert f"--feature-spec {tmp_path}: expected a bundle directory holding model_card.json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_bundle_from_published_features_matches_the_bundle_from_the_run_s_files(tmp_path: Path) -> None:
    """Parity: the shared run's features as an agent running the shared bundle publishes them (rounded to 6
    decimals), fitted with --feature-spec that bundle and the same options, give the same columns, thresholds
    within 2% (per-channel error references within 5%) and the same state at every snapshot of the run, scored from its files as the agent scores it."""
    run, files_bundle = shared_run(), shared_bundle()
    table = write_published_features(tmp_path / "features.csv", run, read_spec_card(files_bundle).spec)
    table_bundle = make_bundle(table, tmp_path / "bundle", feature_spec=read_spec_card(files_bundle))
    ours, theirs = card_of(table_bundle), card_of(files_bundle)
    assert ours["feature_spec"] == theirs["feature_spec"]
    assert ours["provenance"]["feature_spec_card_kind"] == "model"
    traces = {name: run_detector(load_dataset(source, dataset_spec(load_bundle(bundle).card, source, RecordingSpec())),
                                 load_bundle(bundle))
              for name, bundle, source in (("files", files_bundle, run), ("table", table_bundle, run),
                                           ("table_on_table", table_bundle, table))}
    reports = {name: evaluate(bundle, source, tmp_path / name)
               for name, bundle, source in (("files", files_bundle, run), ("table", table_bundle, run))}
    relative = {key: ours["detector"][key] / theirs["detector"][key] - 1 for key in ("warning_threshold", "alarm_threshold")}
    # The thresholds apply to each channel's error over its healthy reference: the references are calibrated too.
    references = np.divide(ours["channel_error_reference"], theirs["channel_error_reference"]) - 1
    relative["channel_error_reference_max"] = float(np.abs(references).max())
    relative["scaler_max"] = float(np.abs(np.divide(ours["scaler"]["maximum"], theirs["scaler"]["maximum"]) - 1).max())
    scored = np.isfinite(traces["files"].scores)
    # Each bundle's scores in units of its own alarm threshold: what the detector compares.
    own = {name: trace.scores[scored] / card["detector"]["alarm_threshold"]
           for (name, trace), card in zip(traces.items(), (theirs, ours, ours))}
    print(json.dumps({"threshold_relative_difference": relative,
                      "score_over_alarm_max_abs_difference": float(np.abs(own["table"] - own["files"]).max()),
                      "score_over_alarm_median_abs_difference": float(np.median(np.abs(own["table"] - own["files"]))),
                      "table_bundle_on_table_vs_run_max_abs_difference": float(np.abs(own["table_on_table"] - own["table"]).max()),
                      **{f"{name}.{key}": report[key] for name, report in reports.items()
                         for key in ("first_warning", "first_alarm", "lead_time_hours", "final_state")}}, indent=1))
    assert abs(relative["warning_threshold"]) < 0.02 and abs(relative["alarm_threshold"]) < 0.02
    assert relative["channel_error_reference_max"] < 0.05
    assert traces["table"].states == traces["files"].states
    assert traces["table_on_table"].states == traces["files"].states
    assert reports["table"]["lead_time_hours"] == reports["files"]["lead_time_hours"] is not None
    assert reports["table"]["top_channel_at_first_alarm"] == reports["files"]["top_channel_at_first_alarm"] == "bearing3"
    # The agent running the files bundle takes this one over the air; cm-edge starts on it.
    check_same_stream(load_deployable(files_bundle), load_bundle(table_bundle))
    checked = edge_check(tmp_path, table_bundle, ours)
    assert checked.returncode == 0, checked.stderr
