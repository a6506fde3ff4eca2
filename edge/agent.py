"""cm-edge: the agent that runs beside the machine.

One way through, each step once: serial link → intake (edge.ingest: guard, clock, snapshots, cadence, lost
data) → pipeline (edge.scoring: features, sensor checks, diagnosis, model, detector) → announcer (payloads →
publisher → outbox → MQTT, then the checkpoint), every alert committed to the outbox before it is published.
The agent wires these parts and runs the loop. Start-up refuses a config and a bundle that do not agree,
and says which values differ. Nothing that arrives on the serial line stops the agent: frames that do not
fit the model are counted and discarded, and lost data becomes `sensor_fault` when it persists.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from edge.announcer import Announcer, Publishing
from edge.checkpoint import checkpoint_path
from edge.config import AgentConfig
from edge.ingest.cadence import Cadence
from edge.ingest.clock import StreamClock, unsynchronised
from edge.ingest.guard import FrameGuard
from edge.ingest.intake import Intake, Lost
from edge.ingest.losses import Losses, Silence
from edge.ingest.snapshot import Snapshot, SnapshotAssembler
from edge.model.bundle import Bundle, Deployable, DetectorSettings
from edge.mqtt.health import Health, Watch
from edge.mqtt.homeassistant import Discovery, Entity, entities
from edge.mqtt.outbox import Outbox
from edge.mqtt.payloads import ModelRef
from edge.mqtt.publisher import Publisher
from edge.recorder import Recorder
from edge.rollout import Rollout
from edge.scoring.detector import BASELINE_SETTINGS
from edge.scoring.pipeline import Pipeline
from edge.scoring.sensor import SensorLimits
from firmware_bridge.frame import Frame
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


def detector_settings(config: AgentConfig, bundle: Deployable) -> DetectorSettings:
    """The model card's settings (a baseline card's: edge.scoring.detector.BASELINE_SETTINGS), with the config's
    overrides on top."""
    carded = bundle.card.detector if isinstance(bundle, Bundle) else BASELINE_SETTINGS
    return config.detector.applied_to(carded)


def model_ref(bundle: Deployable) -> ModelRef:
    """How payloads name what runs: the model card's id and model file, or the baseline card's id and file."""
    return ModelRef(bundle.card.id, bundle.model_sha256)


def snapshot_interval_s(config: AgentConfig, bundle: Deployable) -> float:
    """Seconds of stream time between scored snapshots: the config's, else the card's cadence, else every one."""
    if config.sensor.snapshot_interval_s is not None:
        return config.sensor.snapshot_interval_s
    return bundle.card.feature_spec.snapshot_interval_s or 0.0


def trained_scale(bundle: Deployable) -> float | None:
    """g per count the bundle was trained with, when its card records it (None: the first stream's scale)."""
    return bundle.card.feature_spec.scale


def pipeline(config: AgentConfig, bundle: Deployable) -> Pipeline:
    machine = config.machine
    return Pipeline(bundle, detector_settings(config, bundle), SensorLimits(full_scale_g=config.sensor.full_scale_g),
                    shaft_rpm=machine.shaft_rpm, iso_group=machine.iso_group, zone_alarm=machine.zone_alarm,
                    interval_s=snapshot_interval_s(config, bundle))  # the debounce's seconds at the cadence scored


def thresholds(pipeline: Pipeline) -> tuple[float, float]:
    """The warning and alarm thresholds alerts quote: the pipeline's own detector's, overrides applied."""
    settings = pipeline.detector.settings
    return settings.warning_threshold, settings.alarm_threshold


def intake(config: AgentConfig, bundle: Deployable, now_us: Callable[[], int]) -> Intake:
    spec, port = bundle.card.feature_spec, config.serial.port
    return Intake(FrameGuard(len(spec.channels), spec.sample_rate_hz, trained_scale(bundle), port),
                  StreamClock(port, now=now_us), SnapshotAssembler(spec.snapshot_samples),
                  Cadence(snapshot_interval_s(config, bundle)),
                  Losses(spec.snapshot_samples, spec.sample_rate_hz, len(spec.channels), now_us))


class Agent:
    def __init__(self, config: AgentConfig, bundle: Deployable, *, link: SerialLink | None = None,
                 outbox: Outbox | None = None, publisher: Publishing | None = None, clock: Clock = time) -> None:
        """The collaborators default to the real ones the config describes; tests pass their own."""
        self.config = config
        self.bundle = bundle
        self.clock = clock
        self.health = Health(config.device_id)
        # `is None`, not `or`: an empty Outbox is falsy (len 0), and the one passed in must be the one used.
        self.outbox = outbox if outbox is not None else Outbox(config.outbox_path, health=self.health)
        mqtt: Publisher | None = None
        if publisher is None:
            publisher = mqtt = Publisher(config.mqtt, self.outbox, health=self.health)
        self.publisher = publisher
        self.health.on_change = self.publisher.publish_health
        self.link = link if link is not None else SerialLink(config.serial.port, baudrate=config.serial.baudrate)
        self.pipeline = pipeline(config, bundle)
        self.intake = intake(config, bundle, now_us=lambda: int(self.clock.time() * 1_000_000))
        self.announcer = Announcer(config.device_id, model_ref(bundle), self.pipeline, thresholds(self.pipeline), self.publisher,
                                   checkpoint_path(config.outbox_path), self.health, self.counters)
        self.recorder = Recorder(config.recorder, self.health) if config.recorder.enabled else None
        self.discovery = self._discovery(mqtt) if mqtt is not None and config.homeassistant.enabled else None
        # Bundles over the air need the MQTT client itself (subscriptions, retained reports).
        self.rollout = None if mqtt is None else Rollout(config, bundle, mqtt, lambda new: pipeline(config, new), self.switch)
        self.watch = Watch(self.health)
        self.announcer.resume()
        self._started = self.clock.monotonic()
        self.silence = Silence(config.sensor.stale_after_s, self._started)
        self._scored_once = False

    def _discovery(self, mqtt: Publisher) -> Discovery:
        """Home Assistant's entities; they need the MQTT client itself (retained messages, a subscription)."""
        return Discovery(mqtt, self.config.homeassistant.discovery_prefix, self.config.device_id, self._entities(mqtt))

    def _entities(self, mqtt: Publisher) -> list[Entity]:
        """The discovery configs for the model in charge now (its id is in the device's model name)."""
        return entities(self.config.device_id, mqtt.topics, self.pipeline.channels, self.counters().keys(),
                        self.announcer.model.id)

    def run(self, stop: threading.Event) -> int:
        self.watch.check(self.link.stats)
        self.publisher.publish_health(self.health.payload())
        if self.discovery is not None:
            self.discovery.start()
        if self.rollout is not None:
            self.rollout.start()
        self.publisher.start()
        self._log_start()
        frames: queue.Queue[Frame | None] = queue.Queue(maxsize=FRAME_QUEUE)
        reader = threading.Thread(target=self.read_link, args=(frames, stop), name="serial", daemon=True)
        reader.start()
        try:
            return self._loop(frames, stop)
        finally:
            stop.set()
            self.link.close()
            reader.join(5)
            self.publisher.stop()
            self.outbox.close()

    def _log_start(self) -> None:
        running = "model" if isinstance(self.bundle, Bundle) else "baseline card: no model, learning;"
        log.info("agent %s started: port %s, bundle %s (%s %s), %d alert(s) pending in the outbox",
                 self.config.device_id, self.config.serial.port, self.bundle.path, running, self.announcer.model.id,
                 self.publisher.pending())
        interval = self.intake.cadence.interval_us / 1e6
        log.info("scoring %s", f"one snapshot per {interval:g} s of stream time" if interval else "every snapshot")
        clock_problem = unsynchronised()
        if clock_problem:
            log.warning("%s; snapshots from a sensor without a wall clock will be misdated", clock_problem)

    def _loop(self, frames: queue.Queue[Frame | None], stop: threading.Event) -> int:
        next_counters = self.clock.monotonic() + self.config.counters_interval_s
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
            if self.rollout is not None:
                self.rollout.poll()
            self.check_noise()
            self.check_stale()
            self.announcer.retry()  # a checkpoint the disk refused
            if self.clock.monotonic() >= next_counters:
                log.info("counters: %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))
                self.watch.check(self.link.stats)
                next_counters = self.clock.monotonic() + self.config.counters_interval_s
        return 0

    def read_link(self, frames: queue.Queue[Frame | None], stop: threading.Event) -> None:
        """The serial thread: reading never waits for scoring or publishing, and silence can be noticed."""
        try:
            for frame in self.link.frames(stop):
                if not _put(frames, frame, stop):
                    return
        finally:
            _put(frames, None, stop)  # only an error gets here without `stop`: the loop must not wait forever

    def on_frame(self, frame: Frame) -> None:
        for event in self.intake.frame(frame):
            self.on_event(event)

    def on_event(self, event: Snapshot | Lost) -> None:
        """A snapshot due for scoring, or a scoring slot lost: one step through the pipeline, then announced."""
        if isinstance(event, Lost):
            self.announcer.missing(self.pipeline.missing(event.reason), event.time_us)
            if self.rollout is not None:
                self.rollout.missing(event.reason)
            return
        reading, transition = self.pipeline.process(event)
        if reading.score is not None and not self._scored_once:
            self._scored_once = True
            log.info("first snapshot scored %.2f s after the agent was set up", self.clock.monotonic() - self._started)
        candidate = None if self.rollout is None else self.rollout.shadow(event, reading)
        self.announcer.reading(reading, transition, self.intake.time_source, candidate)
        if self.rollout is not None:
            self.rollout.after_snapshot(self.pipeline.detector.state)
        if self.recorder is not None:
            self.recorder.save(event)

    def switch(self, bundle: Deployable, pipeline: Pipeline) -> None:
        """A rollout's candidate takes over from the next snapshot on (edge.rollout decides when)."""
        self.bundle, self.pipeline = bundle, pipeline
        self.announcer.switch(model_ref(bundle), pipeline, thresholds(pipeline))
        if self.discovery is not None:  # Home Assistant's device names the model in charge (or the old one, rolled back)
            self.discovery.update(self._entities(self.discovery.publisher))

    def check_noise(self) -> None:
        """Bytes discarded by the decoder (line noise, cut frames) stand for the samples they would have carried."""
        for lost in self.intake.noise(self.link.stats.bytes_dropped):
            self.on_event(lost)

    def check_stale(self) -> None:
        """No complete snapshot for `stale_after_s`: the sensor is silent, which is missing data, not health."""
        if self.silence.check(self.intake.assembler.completed, self.clock.monotonic()):
            log.warning("no complete snapshot from %s for %.0f s", self.config.serial.port, self.silence.stale_after_s)
            # No frame to date it: the wall clock.
            self.announcer.missing(self.pipeline.missing(), int(self.clock.time() * 1_000_000))

    def counters(self) -> dict[str, int]:
        stats = self.link.stats
        return {
            "frames": stats.frames, "crc_errors": stats.crc_errors, "malformed": stats.malformed,
            "resyncs": stats.resyncs, "sequence_gaps": stats.sequence_gaps, "bytes_dropped": stats.bytes_dropped,
            **self.intake.counters(),
            "alerts_pending": self.publisher.pending(), "telemetry_dropped": self.publisher.dropped_telemetry,
        }
