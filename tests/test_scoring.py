"""The streaming-scoring core (edge.scoring.stream): one set of rules for the agent, `cm-train evaluate` and training.

The parity test drives the real Agent in-process (frames decoded by the real codec, the real Pipeline and
Outbox; only the MQTT publisher is a recorder, because what is compared is what the agent would publish)
and compares every snapshot's state and score with `cm-train evaluate`'s trace of the same files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from publishing import RecordingPublisher
from trained import shared_bundle, shared_dropout_run

from edge.agent import Agent
from edge.config import load_config
from edge.ingest.losses import MISSING_DATA
from edge.model.bundle import load_bundle
from edge.mqtt.outbox import Outbox
from edge.scoring.detector import State
from edge.scoring.stream import Stream, score_stream, unbroken_runs
from firmware_bridge.frame import FrameDecoder
from firmware_bridge.ims import IMS_SAMPLE_RATE, IMS_SCALE, list_ims_files, read_counts, write_ims_file
from firmware_bridge.replay import frames_for_file
from trainer.dataset import load_dataset
from trainer.evaluate import run_detector

FLAT_AT = 60  # a snapshot in the healthy part whose bearing 2 sensor is stuck


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared bundle's run to failure, with a stuck sensor mid-run and a dropout at the end."""
    run = tmp_path_factory.mktemp("run") / "run"
    run.mkdir()
    for ims in list_ims_files(shared_dropout_run()):
        (run / ims.path.name).symlink_to(ims.path)
    stuck = list_ims_files(run)[FLAT_AT]
    counts = read_counts(stuck.path)
    counts[:, 1] = counts[0, 1]
    stuck.path.unlink()
    write_ims_file(run, stuck.timestamp, counts)
    return run


def drive_agent(tmp_path: Path, run_dir: Path, bundle: Path, files: slice = slice(None),
                stop_at_alarm: bool = False) -> tuple[RecordingPublisher, int]:
    """The agent, in-process, on the run's files (a slice of them); returns what it published and how many
    files it took. Its outbox and checkpoint live in tmp_path, so a second call is the agent restarted."""
    config = tmp_path / "edge.toml"
    config.write_text(f'device_id = "unit"\n[serial]\nport = "loop://"\n[model]\nbundle = "{bundle}"\n[mqtt]\nhost = "127.0.0.1"\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    loaded = load_config(config)
    publisher = RecordingPublisher()
    agent = Agent(loaded, load_bundle(bundle), outbox=Outbox(tmp_path / "outbox.sqlite"), publisher=publisher)
    decoder = FrameDecoder()
    first_sample = 0
    taken = 0
    for number, ims_file in enumerate(list_ims_files(run_dir)[files]):
        counts = read_counts(ims_file.path)
        capture = int(ims_file.timestamp.timestamp() * 1_000_000)
        for wire in frames_for_file(counts, first_sample=first_sample, sequence=number * 100, capture_time_us=capture,
                                    sample_rate_hz=IMS_SAMPLE_RATE, scale=IMS_SCALE, frame_samples=1024):
            for frame in decoder.feed(wire):
                agent.on_frame(frame)
        first_sample += len(counts)
        taken += 1
        if stop_at_alarm and any(a["state"] == "alarm" for a in publisher.alerts):
            break
    agent.outbox.close()
    return publisher, taken


def test_the_agent_and_cm_train_evaluate_give_identical_states_and_scores(tmp_path: Path, run_dir: Path) -> None:
    bundle = shared_bundle()
    published, _ = drive_agent(tmp_path, run_dir, bundle)
    trace = run_detector(load_dataset(run_dir), load_bundle(bundle))
    telemetry = published.telemetry
    assert len(telemetry) == len(trace.states) == len(list_ims_files(run_dir))
    assert [t["state"] for t in telemetry] == [str(state) for state in trace.states]
    live = np.array([np.nan if t["score"] is None else t["score"] for t in telemetry])
    np.testing.assert_allclose(live, trace.scores, atol=1e-6)  # the payload rounds to 6 decimals
    # The story has every part: a stuck sensor (not scored, the window refilled after it), an alarm, a dropout.
    assert telemetry[FLAT_AT]["reason"] == "flatline:bearing2" and telemetry[FLAT_AT]["score"] is None
    window = load_bundle(bundle).card.feature_spec.window
    assert all(t["score"] is None for t in telemetry[FLAT_AT:FLAT_AT + window])
    assert telemetry[FLAT_AT + window]["score"] is not None
    assert "alarm" in [t["state"] for t in telemetry] and telemetry[-1]["state"] == "sensor_fault"
    alarm = next(a for a in published.alerts if a["state"] == "alarm")
    names = load_bundle(bundle).card.feature_spec.channels
    assert alarm["top_channel"] == names[trace.top_channels[[str(s) for s in trace.states].index("alarm")]]


def test_a_restarted_agent_names_the_bearing_that_raised_the_alarm_before_it_scores_again(tmp_path: Path,
                                                                                         run_dir: Path) -> None:
    bundle = shared_bundle()
    before, taken = drive_agent(tmp_path, run_dir, bundle, stop_at_alarm=True)
    (alarm,) = [a for a in before.alerts if a["state"] == "alarm"]
    after, _ = drive_agent(tmp_path, run_dir, bundle, files=slice(taken, taken + 3))
    assert after.alerts == []  # the alarm holds: nothing new to announce
    window = load_bundle(bundle).card.feature_spec.window
    # While the window refills there is no score to take an arg-max of: the saved driver names the bearing.
    assert [t["score"] for t in after.telemetry[:window - 1]] == [None] * (window - 1)
    assert [t["state"] for t in after.telemetry] == ["alarm"] * 3
    assert [s["top_channel"] for s in after.states] == [alarm["top_channel"]] * len(after.states)
    assert after.states and alarm["top_channel"] == "bearing3"


def test_window_fills_before_scoring_and_restarts_after_a_fault() -> None:
    bundle = load_bundle(shared_bundle())
    window = bundle.card.feature_spec.window
    healthy = np.asarray(bundle.card.scaler.maximum)
    core = Stream(bundle)
    steps = score_stream(core, np.tile(healthy, (6, 1)), [None, None, "flatline:bearing1", None, None, None])
    scored = [step.score is not None for step in steps]
    assert scored == [False] * (window - 1) + [True] * (3 - window) + [False] * window + [True] * (4 - window)
    assert steps[2].fault == "flatline:bearing1" and steps[2].reason == "flatline:bearing1"
    # A missing snapshot empties the window too, and twice in a row is a sensor fault.
    assert window > 1
    core.missing()
    assert core.update(healthy).score is None
    assert core.missing().fault == MISSING_DATA
    assert core.missing().state == State.SENSOR_FAULT


def test_feature_dropout_is_a_fault_even_without_raw_counts() -> None:
    bundle = load_bundle(shared_bundle())
    core = Stream(bundle)
    dead = np.asarray(bundle.card.healthy_min) * 0.01
    step = core.update(dead)
    assert step.score is None and step.fault is not None and step.fault.startswith("dropout:")


def test_windows_never_span_a_gap() -> None:
    runs = unbroken_runs(np.array([0, 1, 2, 5, 6, 9]))
    assert [list(run) for run in runs] == [[0, 1, 2], [5, 6], [9]]
