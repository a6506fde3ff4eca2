"""Shadow probation's rule (edge.probation) and the desired document's checks (edge.rollout), in process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_signature import write_bundle

from edge.config import load_config
from edge.model.bundle import BundleError, load_bundle
from edge.mqtt.schemas import validate
from edge.probation import Probation, ProbationSettings
from edge.rollout import Desired, Rollout
from edge.scoring.detector import State
from edge.scoring.reading import Reading


def reading(snapshot: int, state: State = State.NORMAL, score: float | None = 0.5, seconds: float = 0.0) -> Reading:
    return Reading(capture_time_us=int(seconds * 1e6), snapshot=snapshot, features=None, score=score,
                   channel_errors=None, state=state, reason=None)


def test_passes_after_n_compared_snapshots() -> None:
    probation = Probation(ProbationSettings(snapshots=3, seconds=1e9))
    verdicts = [probation.observe(reading(i), reading(i)) for i in range(3)]
    assert verdicts[:2] == [None, None] and verdicts[2] is not None and verdicts[2].passed
    assert "3 snapshots" in verdicts[2].reason


def test_passes_after_t_seconds_of_stream_time() -> None:
    probation = Probation(ProbationSettings(snapshots=1000, seconds=1200))
    assert probation.observe(reading(0, seconds=0), reading(0, seconds=0)) is None
    assert probation.observe(reading(1, seconds=600), reading(1, seconds=600)) is None
    verdict = probation.observe(reading(2, seconds=1200), reading(2, seconds=1200))
    assert verdict is not None and verdict.passed and "1200 s" in verdict.reason


@pytest.mark.parametrize("state", [State.WARNING, State.ALARM])
def test_fails_when_the_candidate_raises_what_the_active_model_does_not(state: State) -> None:
    probation = Probation(ProbationSettings(snapshots=10))
    verdict = probation.observe(reading(7, score=0.4), reading(7, state, score=9.0))
    assert verdict is not None and not verdict.passed
    assert f"candidate said {state} (score 9) where the active model said normal (score 0.4), snapshot 7" == verdict.reason


def test_agreeing_on_an_alarm_or_a_sensor_fault_is_no_failure_and_no_score_counts_nothing() -> None:
    probation = Probation(ProbationSettings(snapshots=2))
    assert probation.observe(reading(0, State.ALARM, 9.0), reading(0, State.ALARM, 8.0)) is None
    assert probation.observe(reading(1, State.SENSOR_FAULT, None), reading(1, State.SENSOR_FAULT, None)) is None
    assert probation.compared == 1


def test_a_scoring_error_fails_with_its_message() -> None:
    assert Probation.failed(ValueError("input shape (1, 3) != (1, 4)")).reason == \
        "candidate could not score a snapshot: ValueError: input shape (1, 3) != (1, 4)"


@pytest.mark.parametrize("payload, message", [
    (b"not json", "not JSON"),
    (b'{"rollout": "r1"}', "cm/_fleet/desired/pump-7: bundle: missing"),
    (json.dumps({"bundle": "ABC", "rollout": "r1"}).encode(), "bundle: expected the bundle archive's sha256"),
    (json.dumps({"bundle": "a" * 64, "rollout": "r1", "probation": {"snapshots": 0}}).encode(), "probation.snapshots"),
])
def test_a_bad_desired_document_is_named(payload: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Desired.parse(payload, "cm/_fleet/desired/pump-7")


class Recorded:
    """The rollout's messenger at unit level: what it would publish, nothing sent."""

    def __init__(self) -> None:
        self.retained: list[tuple[str, bytes]] = []

    def listen(self, topic: str, callback: object) -> None: ...

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.retained.append((topic, payload))


def test_a_bad_desired_document_is_reported_rejected_and_an_agent_without_keys_refuses_bundles(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    config_path = tmp_path / "edge.toml"
    config_path.write_text(f'device_id = "pump-7"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "bundle"\n'
                           f'[mqtt]\nhost = "h"\n[outbox]\npath = "{tmp_path / "state" / "outbox.sqlite"}"\n')
    messenger = Recorded()
    rollout = Rollout(load_config(config_path), load_bundle(bundle), messenger, lambda b: None,  # type: ignore[arg-type,return-value]
                      lambda *_: None, now=lambda: 1_700_000_000.0)
    rollout.start()
    rollout.inbox.put((rollout.topics.desired, b'{"bundle": 1, "rollout": "r1"}'))
    rollout.inbox.put((rollout.topics.desired, json.dumps({"bundle": "b" * 64, "rollout": "r2"}).encode()))
    rollout.poll()
    reports = [json.loads(payload) for topic, payload in messenger.retained if topic == "cm/pump-7/model"]
    for report in reports:
        validate("model", report)
    assert reports[0]["rollout"] is None and reports[0]["active"]["id"] == "unit"
    assert reports[1]["rollout"]["status"] == "rejected" and "bundle: expected" in reports[1]["rollout"]["reason"]
    assert reports[-1]["rollout"]["rollout"] == "r2" and reports[-1]["rollout"]["status"] == "rejected"
    assert "only once its config lists trusted keys" in reports[-1]["rollout"]["reason"]
    assert reports[-1]["rollout"]["started"] == "2023-11-14T22:13:20.000Z"


def test_a_bundle_with_a_folder_in_it_still_runs_and_is_named_by_its_model(tmp_path: Path) -> None:
    """A bundle `pack` cannot archive (a folder inside) was accepted before rollouts existed: it still starts."""
    bundle = write_bundle(tmp_path / "bundle")
    (bundle / "report").mkdir()
    config_path = tmp_path / "edge.toml"
    config_path.write_text(f'device_id = "pump-7"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "bundle"\n'
                           f'[mqtt]\nhost = "h"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    running = load_bundle(bundle)
    rollout = Rollout(load_config(config_path), running, Recorded(), lambda b: None,  # type: ignore[arg-type,return-value]
                      lambda *_: None)
    assert rollout.active.sha256 == running.card.model_sha256
