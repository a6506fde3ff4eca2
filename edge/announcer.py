"""What the agent tells about the machine: telemetry for every scored snapshot, the retained state, and for
every transition an alert and then the detector's checkpoint.

Order matters at a transition: the publisher commits the alert to the outbox before anything else, and the
checkpoint is written after that commit, so a crash in between costs at most a repeated alert (consumers
de-duplicate by its `id`), never a lost one. At start-up the checkpoint puts the pipeline back in the state
it announced last (edge.checkpoint), so a restart neither clears an alarm falsely nor announces it twice.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from edge.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edge.ingest.clock import TimeSource, iso_time
from edge.mqtt import payloads
from edge.mqtt.health import FaultSink
from edge.mqtt.payloads import ModelRef
from edge.scoring.detector import State, Transition
from edge.scoring.pipeline import Pipeline
from edge.scoring.reading import Reading

log = logging.getLogger("cm-edge")
CHECKPOINT_RETRY_S = 1.0  # how often a checkpoint the disk refused is tried again


class Publishing(Protocol):
    """What the agent needs of its publisher (edge.mqtt.publisher.Publisher; a test's recorder stands in)."""

    @property
    def dropped_telemetry(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def pending(self) -> int: ...

    def publish_alert(self, payload: dict[str, Any]) -> int: ...

    def publish_state(self, payload: dict[str, Any]) -> None: ...

    def publish_telemetry(self, payload: dict[str, Any]) -> bool: ...

    def publish_health(self, payload: dict[str, Any]) -> None: ...


class Announcer:
    def __init__(self, device_id: str, model: ModelRef, pipeline: Pipeline, thresholds: tuple[float, float],
                 publisher: Publishing, checkpoint: Path, health: FaultSink,
                 counters: Callable[[], Mapping[str, int]]) -> None:
        self.device_id = device_id
        self.model = model
        self.pipeline = pipeline
        self.thresholds = thresholds  # (warning, alarm), quoted in every alert
        self.publisher = publisher
        self.checkpoint = checkpoint
        self.health = health
        self.counters = counters  # read for each telemetry record, after its alert was stored
        self._since_us: int | None = None  # when the announced state began
        self._unsaved: Checkpoint | None = None  # the disk refused it: retried until it is written
        self._retry_at = 0.0

    def resume(self) -> None:
        """Continue from the checkpoint of this model, if there is a usable one."""
        saved = load_checkpoint(self.checkpoint, self.model.id, self.health, self.pipeline.channels)
        if saved is None:
            return
        channels = self.pipeline.channels
        driver = channels.index(saved.driver) if saved.driver in channels else None
        self.pipeline.resume(saved.state, saved.health, saved.reason, driver, saved.zone)
        self._since_us = saved.since_us
        log.info("resuming in state %s (bearing %s) since %s%s", saved.state, saved.health, iso_time(saved.since_us),
                 f", raised by {saved.driver}" if saved.driver else "")

    def reading(self, reading: Reading, transition: Transition | None, time_source: TimeSource | None,
                candidate: dict[str, Any] | None = None) -> None:
        """A scored snapshot: its transition if it made one, else the retained state; then its telemetry (with a
        candidate model's shadow score during a rollout's probation, edge.rollout)."""
        channels = self.pipeline.channels
        if transition is not None:
            self._transition(reading, transition)
        else:
            # The retained state carries the latest score at the telemetry cadence, not only transitions.
            if self._since_us is None:
                self._since_us = reading.capture_time_us
            self.publisher.publish_state(payloads.state(self.device_id, reading, self._since_us, channels, self.model))
        self.publisher.publish_telemetry(payloads.telemetry(self.device_id, reading, channels, self.counters(),
                                                            time_source=time_source, candidate=candidate))

    def switch(self, model: ModelRef, pipeline: Pipeline, thresholds: tuple[float, float]) -> None:
        """A rollout put another model in charge (edge.rollout), between two snapshots, at an unchanged state; the
        checkpoint is saved under the new model's id, so a restart resumes that state rather than starting over."""
        self.model, self.pipeline, self.thresholds = model, pipeline, thresholds
        if self._since_us is not None:
            save_checkpoint(self.checkpoint, self._memory(), self.health)

    def missing(self, transition: Transition | None, time_us: int) -> None:
        """A snapshot lost at `time_us`: announced only when it moved the state (to `sensor_fault`)."""
        if transition is None:
            return
        reading = Reading(capture_time_us=time_us, snapshot=-1, features=None, score=None, channel_errors=None,
                          state=transition.state, reason=transition.reason)
        self._transition(reading, transition)

    def _transition(self, reading: Reading, transition: Transition) -> None:
        channels = self.pipeline.channels
        self._since_us = reading.capture_time_us
        alert = payloads.alert(self.device_id, transition, reading, channels, self.thresholds, self.model)
        state = payloads.state(self.device_id, reading, self._since_us, channels, self.model)
        self.publisher.publish_alert(alert)
        self.publisher.publish_state(state)
        self._save(self._memory())  # after the outbox commit: see above
        log.log(logging.WARNING if transition.state != State.NORMAL else logging.INFO,
                "%s -> %s at %s (score %s, top channel %s%s)", transition.previous_state, transition.state,
                alert["timestamp"], alert["score"], alert["top_channel"],
                f", {transition.reason}" if transition.reason else "")

    def _save(self, checkpoint: Checkpoint) -> None:
        saved = save_checkpoint(self.checkpoint, checkpoint, self.health)
        self._unsaved = None if saved else checkpoint
        self._retry_at = time.monotonic() + CHECKPOINT_RETRY_S

    def retry(self) -> None:
        """Try again to save a checkpoint the disk refused (the agent's loop calls this every tick): the
        storage fault clears as soon as the disk takes it, not at the next transition."""
        if self._unsaved is not None and time.monotonic() >= self._retry_at:
            self._save(self._unsaved)

    def _memory(self) -> Checkpoint:
        detector, zone = self.pipeline.detector, self.pipeline.zone
        driver = None if detector.driver is None else self.pipeline.channels[detector.driver]
        assert self._since_us is not None  # set by the transition being saved
        return Checkpoint(self.model.id, detector.state, detector.health, detector.reason, self._since_us, driver,
                          None if zone is None else zone.health)
