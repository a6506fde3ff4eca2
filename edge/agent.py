"""cm-edge: the agent that runs beside the machine.

serial link → guard → clock → snapshots → cadence → pipeline (sensor checks, features, model, detector) →
MQTT, with every alert committed to the outbox before it is published. Start-up refuses a config and a
bundle that do not agree, and says which values differ. Nothing that arrives on the serial line stops the
agent: frames that do not fit the model are counted and discarded, and lost data becomes `sensor_fault`
when it persists.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Protocol

from edge.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from edge.config import AgentConfig
from edge.ingest.cadence import Cadence
from edge.ingest.clock import StreamClock, TimeSource, iso_time, plausible, unsynchronised
from edge.ingest.guard import FrameGuard, Throttle, escape
from edge.ingest.snapshot import Snapshot, SnapshotAssembler
from edge.model.bundle import Bundle, DetectorSettings
from edge.mqtt import payloads
from edge.mqtt.health import Health, Watch
from edge.mqtt.homeassistant import Discovery, entities
from edge.mqtt.outbox import Outbox
from edge.mqtt.payloads import ModelRef
from edge.mqtt.publisher import Publisher
from edge.recorder import Recorder
from edge.scoring.detector import State, Transition
from edge.scoring.pipeline import Pipeline
from edge.scoring.reading import Reading
from edge.scoring.sensor import MISSING_DATA, SensorLimits
from firmware_bridge.frame import Frame, FrameType
from firmware_bridge.link import SerialLink

log = logging.getLogger("cm-edge")
FRAME_QUEUE = 4096  # frames (about 13 snapshots of 4 x 20,480 samples) between the serial thread and scoring
TICK_S = 0.5  # how often the main loop looks at its clocks when no frame arrives


class Clock(Protocol):
    """What the agent reads time from: the `time` module, or a test's stand-in."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


def _put(frames: queue.Queue[Frame | None], item: Frame | None, stop: threading.Event) -> bool:
    """Hand a frame to the scoring loop; give up once the agent stops (the loop no longer takes any)."""
    while not stop.is_set():
        try:
            frames.put(item, timeout=TICK_S)
            return True
        except queue.Full:
            continue
    return False


def detector_settings(config: AgentConfig, bundle: Bundle) -> DetectorSettings:
    """The model card's settings, with the config's overrides on top."""
    return replace(bundle.card.detector, **config.detector.given())


def snapshot_interval_s(config: AgentConfig, bundle: Bundle) -> float:
    """Seconds of stream time between scored snapshots: the config's, else the card's cadence, else every one."""
    if config.sensor.snapshot_interval_s is not None:
        return config.sensor.snapshot_interval_s
    return bundle.card.feature_spec.snapshot_interval_s or 0.0


def trained_scale(bundle: Bundle) -> float | None:
    """g per count the bundle was trained with, when its card records it (None: the first stream's scale)."""
    return bundle.card.feature_spec.scale


class Agent:
    def __init__(self, config: AgentConfig, bundle: Bundle, *, link: SerialLink | None = None,
                 outbox: Outbox | None = None, publisher: Publisher | None = None, clock: Clock = time) -> None:
        """The collaborators default to the real ones the config describes; tests pass their own."""
        self.config = config
        self.clock = clock
        self.bundle = bundle
        settings = detector_settings(config, bundle)
        self.thresholds = (settings.warning_threshold, settings.alarm_threshold)
        machine = config.machine
        self.pipeline = Pipeline(bundle, settings, SensorLimits(full_scale_g=config.sensor.full_scale_g),
                                 shaft_rpm=machine.shaft_rpm, iso_group=machine.iso_group, zone_alarm=machine.zone_alarm)
        spec = bundle.card.feature_spec
        self.assembler = SnapshotAssembler(spec.snapshot_samples)
        self.guard = FrameGuard(len(spec.channels), spec.sample_rate_hz, trained_scale(bundle), config.serial.port)
        self.stream_clock = StreamClock(config.serial.port, now=lambda: int(self.clock.time() * 1_000_000))
        self.cadence = Cadence(snapshot_interval_s(config, bundle))
        self.time_source: TimeSource | None = None
        self.status_frames = 0
        self._status_log = Throttle()
        self._stream_us: int | None = None  # end of the last accepted frame, on the Unix clock
        self._lost_samples = 0  # samples lost to rejected frames and line noise, not yet a whole snapshot
        self._lost_us = 0  # stream time those losses stand for since the last accepted frame
        self._bytes_dropped = 0
        self.model = ModelRef(bundle.card.id, bundle.card.model_sha256)
        self.health = Health(config.device_id)
        # `is None`, not `or`: an empty Outbox is falsy (len 0), and the one passed in must be the one used.
        self.outbox = outbox if outbox is not None else Outbox(config.outbox_path, health=self.health)
        self.publisher = publisher if publisher is not None else Publisher(config.mqtt, self.outbox, health=self.health)
        self.health.on_change = self.publisher.publish_health
        self.watch = Watch(self.health)
        self.recorder = Recorder(config.recorder, self.health) if config.recorder.enabled else None
        self.link = link if link is not None else SerialLink(config.serial.port, baudrate=config.serial.baudrate)
        self.checkpoint_path = checkpoint_path(config.outbox_path)
        self._since_us: int | None = None
        self.resume()
        self._started = self.clock.monotonic()
        self._last_snapshot = self._started
        self._scored_once = False

    def resume(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path, self.model.id, self.health)
        if checkpoint is not None:
            channels = self.pipeline.channels
            driver = channels.index(checkpoint.driver) if checkpoint.driver in channels else None
            self.pipeline.resume(checkpoint.state, checkpoint.health, checkpoint.reason, driver, checkpoint.zone)
            self._since_us = checkpoint.since_us
            log.info("resuming in state %s (bearing %s) since %s%s", checkpoint.state, checkpoint.health,
                     iso_time(checkpoint.since_us), f", raised by {checkpoint.driver}" if checkpoint.driver else "")

    def run(self, stop: threading.Event) -> int:
        self.watch.check(self.link.stats)
        self.publisher.publish_health(self.health.payload())
        if self.config.homeassistant.enabled:
            found = entities(self.config.device_id, self.publisher.topics, self.pipeline.channels,
                             self.counters().keys(), self.model.id)
            Discovery(self.publisher, self.config.homeassistant.discovery_prefix, self.config.device_id, found).start()
        self.publisher.start()
        log.info("agent %s started: port %s, bundle %s (model %s), %d alert(s) pending in the outbox",
                 self.config.device_id, self.config.serial.port, self.bundle.path, self.model.id, self.publisher.pending())
        interval = self.cadence.interval_us / 1e6
        log.info("scoring %s", f"one snapshot per {interval:g} s of stream time" if interval else "every snapshot")
        clock_problem = unsynchronised()
        if clock_problem:
            log.warning("%s; snapshots from a sensor without a wall clock will be misdated", clock_problem)
        frames: queue.Queue[Frame | None] = queue.Queue(maxsize=FRAME_QUEUE)
        reader = threading.Thread(target=self.read_link, args=(frames, stop), name="serial", daemon=True)
        reader.start()
        next_counters = self.clock.monotonic() + self.config.counters_interval_s
        try:
            while not stop.is_set():
                try:
                    frame = frames.get(timeout=TICK_S)
                except queue.Empty:
                    pass  # no frame this tick: only the clocks below move
                else:
                    if frame is None:
                        log.error("the serial thread ended unexpectedly (its traceback is above)")
                        return 1  # not 2: systemd restarts the agent
                    self.on_frame(frame)
                self.check_noise()
                self.check_stale()
                if self.clock.monotonic() >= next_counters:
                    log.info("counters: %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))
                    self.watch.check(self.link.stats)
                    next_counters = self.clock.monotonic() + self.config.counters_interval_s
        finally:
            stop.set()
            self.link.close()
            reader.join(5)
            self.publisher.stop()
            self.outbox.close()
        return 0

    def read_link(self, frames: queue.Queue[Frame | None], stop: threading.Event) -> None:
        """The serial thread: reading never waits for scoring or publishing, and silence can be noticed."""
        try:
            for frame in self.link.frames(stop):
                if not _put(frames, frame, stop):
                    return
        finally:
            _put(frames, None, stop)  # only an error gets here without `stop`: the loop must not wait forever

    def check_stale(self) -> None:
        """No complete snapshot for `stale_after_s`: the sensor is silent, which is missing data, not health."""
        stale_after = self.config.sensor.stale_after_s
        if stale_after is None or self.clock.monotonic() - self._last_snapshot < stale_after:
            return
        self._last_snapshot = self.clock.monotonic()
        log.warning("no complete snapshot from %s for %.0f s", self.config.serial.port, stale_after)
        transition = self.pipeline.missing()
        if transition is not None:
            self.on_missing(transition, int(self.clock.time() * 1_000_000))  # no frame to date it: the wall clock

    def on_frame(self, frame: Frame) -> None:
        header = frame.header
        if header.frame_type == FrameType.STATUS:
            self.status_frames += 1
            if self._status_log.allow("status"):
                log.info("sensor status: %s%s", escape(frame.message), self._status_log.suppressed_note("status"))
            return
        reason = self.guard.check(header)
        if reason is not None:
            claimed = header.capture_time_us if not header.boot_time and plausible(header.capture_time_us) else None
            self.lose(header.sample_count, reason, claimed)
            return
        if self.guard.duplicate(frame):
            return
        epoch_us, self.time_source = self.stream_clock.epoch_us(header)
        frame = Frame(replace(header, capture_time_us=epoch_us), frame.samples, frame.message)
        self._stream_us = epoch_us + header.sample_count * 1_000_000 // header.sample_rate_hz
        self._lost_us = 0
        discarded = self.assembler.discarded
        snapshots = self.assembler.add(frame)
        for _ in range(self.assembler.discarded - discarded):
            log.warning("snapshot discarded: gap in the sample index at frame %d (sample %d)",
                        header.sequence, header.first_sample)
            self.on_lost(epoch_us, MISSING_DATA)
        for snapshot in snapshots:
            self.on_snapshot(snapshot)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self._last_snapshot = self.clock.monotonic()
        due, missed = self.cadence.snapshot(snapshot.capture_time_us)
        if missed is not None:
            self.report_lost(missed, snapshot.capture_time_us)
        if not due:
            return
        reading, transition = self.pipeline.process(snapshot)
        self.publish(reading, transition)
        if self.recorder is not None:
            self.recorder.save(snapshot)

    def lose(self, samples: int, reason: str, claimed_us: int | None = None) -> None:
        """Samples that arrived but cannot be used: each snapshot's worth is a lost snapshot.

        The loss is dated from the last accepted frame plus the samples lost since, or by the frame's own
        wall-clock time when that is plausible and later (a recording replayed with a wrong scale).
        """
        self._lost_samples += samples
        self._lost_us += samples * 1_000_000 // self.bundle.card.feature_spec.sample_rate_hz
        snapshot_samples = self.assembler.snapshot_samples
        while self._lost_samples >= snapshot_samples:
            self._lost_samples -= snapshot_samples
            base = self._stream_us if self._stream_us is not None else int(self.clock.time() * 1_000_000)
            self.on_lost(max(base + self._lost_us, claimed_us or 0), reason)

    def check_noise(self) -> None:
        """Bytes discarded by the decoder (line noise, cut frames) stand for the samples they would have carried."""
        dropped = self.link.stats.bytes_dropped
        if dropped > self._bytes_dropped:
            channels = len(self.bundle.card.feature_spec.channels)
            self.lose((dropped - self._bytes_dropped) // (2 * channels), MISSING_DATA)
            self._bytes_dropped = dropped

    def on_lost(self, time_us: int, reason: str) -> None:
        missed = self.cadence.lost(time_us, reason)
        if missed is not None:
            self.report_lost(missed, time_us)

    def report_lost(self, reason: str, time_us: int) -> None:
        """A scoring slot passed without a usable snapshot: one step towards `sensor_fault`."""
        transition = self.pipeline.missing(reason)
        if transition is not None:
            self.on_missing(transition, time_us)

    def on_missing(self, transition: Transition, capture_time_us: int) -> None:
        reading = Reading(capture_time_us=capture_time_us, snapshot=-1, features=None, score=None,
                          channel_errors=None, state=transition.state, reason=transition.reason)
        self.publish_transition(reading, transition)

    def publish(self, reading: Reading, transition: Transition | None) -> None:
        channels = self.pipeline.channels
        if reading.score is not None and not self._scored_once:
            self._scored_once = True
            log.info("first snapshot scored %.2f s after the agent was set up", self.clock.monotonic() - self._started)
        if transition is not None:
            self.publish_transition(reading, transition)
        else:
            # The retained state carries the latest score at the telemetry cadence, not only transitions.
            if self._since_us is None:
                self._since_us = reading.capture_time_us
            self.publisher.publish_state(payloads.state(self.config.device_id, reading, self._since_us, channels, self.model))
        self.publisher.publish_telemetry(payloads.telemetry(self.config.device_id, reading, channels, self.counters(),
                                                            time_source=self.time_source))

    def publish_transition(self, reading: Reading, transition: Transition) -> None:
        channels = self.pipeline.channels
        alert = payloads.alert(self.config.device_id, transition, reading, channels, self.thresholds, self.model)
        self.publisher.publish_alert(alert)
        self._since_us = reading.capture_time_us
        self.publisher.publish_state(payloads.state(self.config.device_id, reading, self._since_us, channels, self.model))
        # After the outbox commit: a crash in between costs at most a repeated alert, never a lost one.
        detector = self.pipeline.detector
        driver = None if detector.driver is None else channels[detector.driver]
        zone = None if self.pipeline.zone is None else self.pipeline.zone.health
        save_checkpoint(self.checkpoint_path, Checkpoint(self.model.id, detector.state, detector.health,
                                                         detector.reason, self._since_us, driver, zone), self.health)
        log.log(logging.WARNING if transition.state != State.NORMAL else logging.INFO,
                "%s -> %s at %s (score %s, top channel %s%s)", transition.previous_state, transition.state,
                alert["timestamp"], alert["score"], alert["top_channel"],
                f", {transition.reason}" if transition.reason else "")

    def counters(self) -> dict[str, int]:
        stats = self.link.stats
        return {
            "frames": stats.frames, "crc_errors": stats.crc_errors, "malformed": stats.malformed,
            "resyncs": stats.resyncs, "sequence_gaps": stats.sequence_gaps, "bytes_dropped": stats.bytes_dropped,
            "snapshots": self.assembler.completed, "snapshots_discarded": self.assembler.discarded,
            "alerts_pending": self.publisher.pending(), "telemetry_dropped": self.publisher.dropped_telemetry,
            "frames_rejected": sum(self.guard.rejected.values()), "frames_duplicate": self.guard.duplicates,
            "status_frames": self.status_frames, "snapshots_skipped": self.cadence.skipped,
        }
