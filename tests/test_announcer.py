"""The announcer (edge.announcer): for a transition the alert goes first, then the retained state, then the
checkpoint; telemetry counts the alert it follows; a restart resumes from the checkpoint. The real Pipeline,
payloads, checkpoint file and Health; only the MQTT publisher records instead of sending."""
from __future__ import annotations

from pathlib import Path

from publishing import RecordingPublisher
from trained import shared_bundle

from edge.announcer import Announcer
from edge.checkpoint import load_checkpoint
from edge.ingest.losses import MISSING_DATA
from edge.model.bundle import load_bundle
from edge.mqtt.health import Health
from edge.mqtt.payloads import ModelRef
from edge.mqtt.schemas import validate
from edge.scoring.detector import State
from edge.scoring.pipeline import Pipeline
from edge.scoring.reading import Reading

T0 = 1_795_000_000_000_000


def announcer(tmp_path: Path, publisher: RecordingPublisher) -> Announcer:
    bundle = load_bundle(shared_bundle())
    card = bundle.card
    pipeline = Pipeline(bundle, card.detector)
    thresholds = (card.detector.warning_threshold, card.detector.alarm_threshold)
    # The counters are read when the telemetry is built: here, how many alerts were handed over by then.
    return Announcer("unit", ModelRef(card.id, card.model_sha256), pipeline, thresholds, publisher,
                     tmp_path / "outbox.detector.json", Health("unit"), lambda: {"alerts_pending": len(publisher.alerts)})


def test_a_lost_snapshot_that_moves_the_state_is_alerted_stored_and_resumed(tmp_path: Path) -> None:
    publisher = RecordingPublisher()
    first = announcer(tmp_path, publisher)
    first.missing(first.pipeline.missing(), T0)  # once: not yet a sensor fault, nothing to announce
    assert publisher.sent == []
    first.missing(first.pipeline.missing(), T0 + 1_000_000)
    assert publisher.sent == ["alert", "state"]
    (alert,) = publisher.alerts
    validate("alert", alert)
    assert alert["state"] == "sensor_fault" and alert["reason"] == MISSING_DATA
    assert publisher.states[-1]["state"] == "sensor_fault"
    saved = load_checkpoint(tmp_path / "outbox.detector.json", first.model.id)
    assert saved is not None and saved.state == State.SENSOR_FAULT and saved.since_us == T0 + 1_000_000

    again = RecordingPublisher()
    restarted = announcer(tmp_path, again)
    restarted.resume()
    assert restarted.pipeline.detector.state == State.SENSOR_FAULT
    restarted.missing(restarted.pipeline.missing(), T0 + 2_000_000)
    assert again.sent == []  # still a sensor fault: nothing new to announce after the restart


def test_telemetry_follows_the_state_and_counts_the_alert_before_it(tmp_path: Path) -> None:
    publisher = RecordingPublisher()
    speaker = announcer(tmp_path, publisher)
    speaker.pipeline.missing()
    transition = speaker.pipeline.missing()
    assert transition is not None
    reading = Reading(capture_time_us=T0, snapshot=7, features=None, score=None, channel_errors=None,
                      state=transition.state, reason=transition.reason)
    speaker.reading(reading, transition, time_source=None)
    assert publisher.sent == ["alert", "state", "telemetry"]
    assert publisher.telemetry[0]["counters"]["alerts_pending"] == 1
    speaker.reading(reading, None, time_source=None)  # no transition: the retained state and the telemetry
    assert publisher.sent[3:] == ["state", "telemetry"] and publisher.states[-1]["since"] == publisher.states[0]["since"]
