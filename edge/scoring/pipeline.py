"""One snapshot through the device's pipeline: raw sensor checks and features, then the scoring core.

Pure computation, no I/O: the agent feeds it snapshots from the serial link, the benchmark feeds it
snapshots from memory, and both measure the same code. The rules after the features (window, resets,
model, detector) live in edge.scoring.stream, which `cm-train evaluate` and training call too.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.ingest.snapshot import Snapshot
from edge.model.bundle import Bundle, DetectorSettings
from edge.model.features import Analysis, FeatureExtractor
from edge.scoring.detector import Detector, State, Transition
from edge.scoring.diagnosis import DEFAULT_ISO_GROUP, ZONES, Defect, diagnose, zones
from edge.scoring.reading import Reading
from edge.scoring.sensor import MISSING_DATA, SensorLimits, check_counts
from edge.scoring.stream import Step, StreamScorer

__all__ = ["MISSING_DATA", "Pipeline"]

_RANK = {State.NORMAL: 0, State.WARNING: 1, State.ALARM: 2}


class Pipeline:
    def __init__(self, bundle: Bundle, settings: DetectorSettings, limits: SensorLimits = SensorLimits(),
                 shaft_rpm: float | None = None, iso_group: str = DEFAULT_ISO_GROUP, zone_alarm: bool = False) -> None:
        card = bundle.card
        self.channels = card.feature_spec.channels
        self.feature_set = card.feature_spec.feature_set
        self.feature_names = card.feature_spec.features
        # [machine] shaft_rpm moves the bearing's envelope lines to the speed the machine runs at.
        self.extractor = FeatureExtractor(card.feature_spec.feature_config(shaft_rpm))
        self.limits = limits
        self.iso_group = iso_group
        self.core = StreamScorer(bundle, settings, limits=limits)
        # [machine] zone_alarm: the ISO zone, debounced like the score (k of n), beside the learned detector.
        self.zone: Detector | None = None
        if zone_alarm and "velocity_rms" in self.feature_names:
            self.zone = Detector(DetectorSettings(warning_threshold=2.5, alarm_threshold=3.5, k=settings.k,
                                                  n=settings.n, clear_after=settings.clear_after))
        self._published = State.NORMAL

    @property
    def detector(self) -> Detector:
        return self.core.detector

    def resume(self, state: State, health: State, reason: str | None, driver: int | None = None,
               zone: State | None = None) -> None:
        """Continue from the agent's checkpoint: the learned detector's state and, with zone_alarm, the zone
        detector's, so a zone alarm neither clears falsely nor is announced again after a restart."""
        self.detector.resume(state, health, reason, driver)
        self._published = state
        if self.zone is not None and zone is not None:
            self.zone.resume(zone, zone, None)
            if state != State.SENSOR_FAULT and _RANK[zone] > _RANK[state]:
                self._published = zone

    def process(self, snapshot: Snapshot) -> tuple[Reading, Transition | None]:
        analysis = self.extractor.analyse(snapshot.counts, snapshot.scale)
        features = analysis.features
        step = self.core.update(features, check_counts(snapshot.counts, self.channels, self.limits, snapshot.scale))
        iso = zones(features, self.feature_names, self.channels, self.iso_group)
        state, reason, transition = step.state, step.reason, step.transition
        if self.zone is not None:
            state, reason, transition = self._beside_zone(step, iso)
        defect = self._defect(analysis) if state in (State.WARNING, State.ALARM) else None
        result = reading(step, snapshot.capture_time_us, snapshot.index, features)
        result = replace(result, state=state, reason=reason, feature_names=self.feature_names, defect=defect,
                         iso_zones=iso)
        return result, transition

    def _defect(self, analysis: Analysis) -> Defect | None:
        if analysis.line_hz is None or analysis.prominence is None:
            return None
        return diagnose(analysis.line_hz, analysis.prominence, self.channels)

    def _beside_zone(self, step: Step, iso: dict[str, str] | None) -> tuple[State, str | None, Transition | None]:
        """The worse of the learned state and the zone state; a sensor fault stays a sensor fault."""
        assert self.zone is not None
        worst = None
        if step.fault is None and iso:
            worst = max(iso, key=lambda name: ZONES.index(iso[name]))
            self.zone.update(float(ZONES.index(iso[worst]) + 1))
        state, reason = step.state, step.reason
        if state != State.SENSOR_FAULT and _RANK[self.zone.health] > _RANK[state]:
            letter = iso[worst] if iso and worst else "D"
            state, reason = self.zone.health, f"iso_zone_{letter.lower()}:{worst}"
        transition = None
        if state != self._published:
            transition = Transition(state=state, previous_state=self._published, reason=reason)
        self._published = state
        return state, reason, transition

    def missing(self, reason: str = MISSING_DATA) -> Transition | None:
        """A snapshot lost (a gap in the sample index, unusable frames): a sensor fault once it persists."""
        return self.core.missing(reason).transition


def reading(step: Step, capture_time_us: int, index: int, features: np.ndarray) -> Reading:
    score = step.score
    return Reading(
        capture_time_us=capture_time_us,
        snapshot=index,
        features=features,
        score=None if score is None else score.score,
        channel_errors=None if score is None else score.channel_errors,
        state=step.state,
        reason=step.reason,
        top_channel=step.top_channel,
    )
