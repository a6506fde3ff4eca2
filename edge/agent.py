"""cm-edge: the agent that runs beside the machine.

serial link → frames → snapshots → pipeline (sensor checks, features, model, detector) → MQTT, with every
alert committed to the outbox before it is published. Start-up refuses a config, a bundle or a sensor
stream that do not agree, and says which values differ.
"""
from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Protocol

from edge.bundle import Bundle, BundleError, load_bundle
from edge.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from edge.config import AgentConfig, ConfigError, load_config
from edge.detector import DetectorSettings, State, Transition
from edge.health import Health, Watch
from edge import messages
from edge.messages import ModelRef, Reading
from edge.outbox import Outbox, OutboxError
from edge.pipeline import Pipeline
from edge.publisher import Publisher, PublisherError
from edge.recorder import Recorder
from edge.runtime import check_model
from edge.snapshot import SnapshotAssembler
from firmware_bridge.frame import Frame, FrameType
from firmware_bridge.link import SerialLink

log = logging.getLogger("cm-edge")
FRAME_QUEUE = 4096  # frames (about 13 snapshots of 4 x 20,480 samples) between the serial thread and scoring
TICK_S = 0.5  # how often the main loop looks at its clocks when no frame arrives


class Clock(Protocol):
    """What the agent reads time from: the `time` module, or a test's stand-in."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class MismatchError(ValueError):
    """The bundle does not fit the config or the sensor's frames."""


def _put(frames: queue.Queue[Frame | None], item: Frame | None, stop: threading.Event) -> bool:
    """Hand a frame to the scoring loop; give up once the agent stops (the loop no longer takes any)."""
    while not stop.is_set():
        try:
            frames.put(item, timeout=TICK_S)
            return True
        except queue.Full:
            continue
    return False


def check_bundle_against_config(config: AgentConfig, bundle: Bundle) -> None:
    spec = bundle.card.feature_spec
    if not spec.sample_rate_hz or not spec.snapshot_samples:
        raise MismatchError(f"the bundle {bundle.path} was trained on a features table: it has no sample rate or "
                            f"snapshot length, so it cannot score raw frames; train it on IMS-format files "
                            f"(an IMS directory or the recorder's output)")
    expected = config.sensor
    pairs = [("channels", expected.channels, spec.channels),
             ("sample_rate_hz", expected.sample_rate_hz, spec.sample_rate_hz),
             ("snapshot_samples", expected.snapshot_samples, spec.snapshot_samples)]
    for key, configured, carded in pairs:
        if configured is not None and configured != carded:
            raise MismatchError(f"{config.path}: sensor.{key} is {_show(configured)} but the bundle "
                                f"{bundle.path} was trained for {_show(carded)}")


def check_frame(frame: Frame, bundle: Bundle, port: str) -> None:
    spec = bundle.card.feature_spec
    header = frame.header
    if header.channels != len(spec.channels):
        raise MismatchError(f"frames from {port} carry {header.channels} channels but the bundle {bundle.path} "
                            f"expects {len(spec.channels)} ({', '.join(spec.channels)})")
    if header.sample_rate_hz != spec.sample_rate_hz:
        raise MismatchError(f"frames from {port} are sampled at {header.sample_rate_hz} Hz but the bundle "
                            f"{bundle.path} expects {spec.sample_rate_hz} Hz")


def _show(value: object) -> str:
    return ", ".join(value) if isinstance(value, tuple) else str(value)


def detector_settings(config: AgentConfig, bundle: Bundle) -> DetectorSettings:
    """The model card's settings, with the config's overrides on top."""
    return replace(bundle.card.detector, **config.detector.given())


class Agent:
    def __init__(self, config: AgentConfig, bundle: Bundle, *, link: SerialLink | None = None,
                 outbox: Outbox | None = None, publisher: Publisher | None = None, clock: Clock = time) -> None:
        """The collaborators default to the real ones the config describes; tests pass their own."""
        self.config = config
        self.clock = clock
        self.bundle = bundle
        settings = detector_settings(config, bundle)
        self.thresholds = (settings.warning_threshold, settings.alarm_threshold)
        self.pipeline = Pipeline(bundle, settings)
        self.assembler = SnapshotAssembler(bundle.card.feature_spec.snapshot_samples)
        self.model = ModelRef(bundle.card.id, bundle.card.model_sha256)
        self.health = Health(config.device_id)
        self.outbox = outbox or Outbox(config.outbox_path, health=self.health)
        self.publisher = publisher or Publisher(config.mqtt, self.outbox, health=self.health)
        self.health.on_change = self.publisher.publish_health
        self.watch = Watch(self.health)
        self.recorder = Recorder(config.recorder, self.health) if config.recorder.enabled else None
        self.link = link or SerialLink(config.serial.port, baudrate=config.serial.baudrate)
        self.checkpoint_path = checkpoint_path(config.outbox_path)
        self._since_us: int | None = None
        self._state_announced = False
        self.resume()
        self._started = self.clock.monotonic()
        self._last_snapshot = self._started
        self._scored_once = False

    def resume(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path, self.model.id, self.health)
        if checkpoint is not None:
            self.pipeline.detector.resume(checkpoint.state, checkpoint.health, checkpoint.reason)
            self._since_us = checkpoint.since_us
            log.info("resuming in state %s (bearing %s) since %s", checkpoint.state, checkpoint.health,
                     messages.iso_time(checkpoint.since_us))

    def run(self, stop: threading.Event) -> int:
        self.watch.check(self.link.stats)
        self.publisher.publish_health(self.health.payload())
        self.publisher.start()
        log.info("agent %s started: port %s, bundle %s (model %s), %d alert(s) pending in the outbox",
                 self.config.device_id, self.config.serial.port, self.bundle.path, self.model.id, self.publisher.pending())
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
                self.check_stale()
                if self.clock.monotonic() >= next_counters:
                    log.info("counters: %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))
                    self.watch.check(self.link.stats)
                    next_counters = self.clock.monotonic() + self.config.counters_interval_s
        except MismatchError as error:
            log.error("%s", error)
            return 2
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
        if frame.header.frame_type == FrameType.STATUS:
            log.info("sensor status: %s", frame.message)
            return
        check_frame(frame, self.bundle, self.config.serial.port)
        discarded = self.assembler.discarded
        snapshots = self.assembler.add(frame)
        for _ in range(self.assembler.discarded - discarded):
            log.warning("snapshot discarded: gap in the sample index at frame %d (sample %d)",
                        frame.header.sequence, frame.header.first_sample)
            transition = self.pipeline.missing()
            if transition is not None:
                self.on_missing(transition, frame.header.capture_time_us)
        for snapshot in snapshots:
            self._last_snapshot = self.clock.monotonic()
            reading, transition = self.pipeline.process(snapshot)
            self.publish(reading, transition)
            if self.recorder is not None:
                self.recorder.save(snapshot)

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
        elif not self._state_announced:
            if self._since_us is None:
                self._since_us = reading.capture_time_us
            self.publisher.publish_state(messages.state(self.config.device_id, reading, self._since_us, channels, self.model))
            self._state_announced = True
        self.publisher.publish_telemetry(messages.telemetry(self.config.device_id, reading, channels, self.counters()))

    def publish_transition(self, reading: Reading, transition: Transition) -> None:
        channels = self.pipeline.channels
        alert = messages.alert(self.config.device_id, transition, reading, channels, self.thresholds, self.model)
        self.publisher.publish_alert(alert)
        self._since_us = reading.capture_time_us
        self.publisher.publish_state(messages.state(self.config.device_id, reading, self._since_us, channels, self.model))
        self._state_announced = True
        # After the outbox commit: a crash in between costs at most a repeated alert, never a lost one.
        detector = self.pipeline.detector
        save_checkpoint(self.checkpoint_path, Checkpoint(self.model.id, detector.state, detector.health,
                                                         detector.reason, self._since_us), self.health)
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
        }


def prepare(config_path: str) -> tuple[AgentConfig, Bundle]:
    config = load_config(config_path)
    bundle = load_bundle(config.bundle)
    check_bundle_against_config(config, bundle)
    try:
        detector_settings(config, bundle)
    except ValueError as error:  # an override that does not fit the card's other settings
        raise ConfigError(f"{config.path}: [detector] with the bundle's settings: {error}") from None
    check_model(bundle)  # the model file itself, as the agent will load it
    return config, bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cm-edge", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the agent's TOML config, e.g. /etc/cm/edge.toml")
    parser.add_argument("--check", action="store_true", help="validate the config and the bundle, then exit")
    args = parser.parse_args(argv)
    # journald adds its own timestamps; stdout keeps the agent free of log files on a read-only system.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, bundle = prepare(args.config)
    except (ConfigError, BundleError, MismatchError) as error:
        log.error("%s", error)
        return 2
    logging.getLogger().setLevel(config.log_level)
    if args.check:
        spec = bundle.card.feature_spec
        print(f"{args.config}: OK: device {config.device_id}, bundle {bundle.path} ({len(spec.channels)} channels "
              f"at {spec.sample_rate_hz} Hz, snapshots of {spec.snapshot_samples}, window {spec.window}), "
              f"broker {config.mqtt.host}:{config.mqtt.port}")
        return 0
    try:
        agent = Agent(config, bundle)
    except (PublisherError, OutboxError) as error:
        log.error("%s", error)
        return 2  # the unit's RestartPreventExitStatus: a broken setup is not fixed by restarting
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return agent.run(stop)


if __name__ == "__main__":
    raise SystemExit(main())
