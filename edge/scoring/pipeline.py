"""One snapshot through the device's pipeline, each step once and in order: features, sensor checks, diagnosis
(ISO zones, defect lines), then the scoring core (window, model, detector, zone alarm); out comes a Reading.

Pure computation, no I/O: the agent feeds it snapshots from the serial link, the benchmark feeds it
snapshots from memory, and both measure the same code. The rules after the checks (window, resets, model,
detector) live in edge.scoring.stream, which `cm-train evaluate` and training call too.
"""
from __future__ import annotations

from edge.ingest.losses import MISSING_DATA
from edge.ingest.snapshot import Snapshot
from edge.model.bundle import Deployable, DetectorSettings
from edge.model.features import FeatureExtractor
from edge.scoring import diagnosis
from edge.scoring.detector import Detector, State, Transition, ZoneAlarm
from edge.scoring.diagnosis import DEFAULT_ISO_GROUP
from edge.scoring.reading import Reading
from edge.scoring.sensor import SensorLimits
from edge.scoring.stream import Stream

__all__ = ["Pipeline"]


class Pipeline:
    def __init__(self, bundle: Deployable, settings: DetectorSettings, limits: SensorLimits = SensorLimits(),
                 shaft_rpm: float | None = None, iso_group: str = DEFAULT_ISO_GROUP, zone_alarm: bool = False,
                 interval_s: float | None = None) -> None:
        """`interval_s`: the scoring cadence ([sensor] snapshot_interval_s; None: the card's), for the debounce
        the card states in seconds. A baseline card (edge.model.bundle.Baseline) runs without a model: the
        stream (edge.scoring.stream) says `learning` where a model would say normal."""
        spec = bundle.card.feature_spec
        self.channels = spec.channels
        self.feature_names = spec.features
        # [machine] shaft_rpm moves the bearing's envelope lines to the speed the machine runs at.
        self.extractor = FeatureExtractor(spec.feature_config(shaft_rpm))
        self.iso_group = iso_group
        # [machine] zone_alarm: the ISO zone, debounced like the score (k of n), beside the learned detector.
        cadence = interval_s if interval_s else spec.snapshot_interval_s  # 0: every snapshot, at the card's pace
        zone = ZoneAlarm(settings, cadence) if zone_alarm and diagnosis.VELOCITY_FEATURE in spec.features else None
        self.core = Stream(bundle, settings, limits=limits, zone=zone, interval_s=cadence)

    @property
    def detector(self) -> Detector:
        return self.core.detector

    @property
    def zone(self) -> ZoneAlarm | None:
        return self.core.zone

    def resume(self, state: State, health: State, reason: str | None, driver: int | None = None,
               zone: State | None = None) -> None:
        """Continue from the agent's checkpoint: the learned detector's state and, with zone_alarm, the zone
        detector's, so a zone alarm neither clears falsely nor is announced again after a restart."""
        self.detector.resume(state, health, reason, driver)
        if self.zone is not None:
            self.zone.resume(state, zone)

    def process(self, snapshot: Snapshot) -> tuple[Reading, Transition | None]:
        analysis = self.extractor.analyse(snapshot.counts, snapshot.scale)
        features = analysis.features
        fault = self.core.sensor.snapshot(snapshot.counts, snapshot.scale, features)
        iso, defect = diagnosis.assess(analysis, self.feature_names, self.channels, self.iso_group)
        step = self.core.checked(features, fault, iso)
        score = step.score
        reading = Reading(capture_time_us=snapshot.capture_time_us, snapshot=snapshot.index, features=features,
                          score=None if score is None else score.score,
                          channel_errors=None if score is None else score.channel_errors,
                          state=step.state, reason=step.reason, top_channel=step.top_channel,
                          feature_names=self.feature_names, iso_zones=iso,
                          defect=defect if step.state in (State.WARNING, State.ALARM) else None)
        return reading, step.transition

    def missing(self, reason: str = MISSING_DATA) -> Transition | None:
        """A snapshot lost (a gap in the sample index, unusable frames): a sensor fault once it persists."""
        return self.core.missing(reason).transition

