"""One snapshot through the device's pipeline: raw sensor checks and features, then the scoring core.

Pure computation, no I/O: the agent feeds it snapshots from the serial link, the benchmark feeds it
snapshots from memory, and both measure the same code. The rules after the features (window, resets,
model, detector) live in edge.scoring, which `cm-train evaluate` and training call too.
"""
from __future__ import annotations

import numpy as np

from edge.bundle import Bundle
from edge.detector import Detector, DetectorSettings, Transition
from edge.features import snapshot_features
from edge.messages import Reading
from edge.scoring import MISSING_DATA, Step, StreamScorer
from edge.sensor import SensorLimits, check_counts
from edge.snapshot import Snapshot

__all__ = ["MISSING_DATA", "Pipeline"]


class Pipeline:
    def __init__(self, bundle: Bundle, settings: DetectorSettings, limits: SensorLimits = SensorLimits()) -> None:
        card = bundle.card
        self.channels = card.feature_spec.channels
        self.feature_set = card.feature_spec.feature_set
        self.limits = limits
        self.core = StreamScorer(bundle, settings, limits=limits)

    @property
    def detector(self) -> Detector:
        return self.core.detector

    def process(self, snapshot: Snapshot) -> tuple[Reading, Transition | None]:
        features = snapshot_features(snapshot.counts, snapshot.scale, self.feature_set)
        step = self.core.update(features, check_counts(snapshot.counts, self.channels, self.limits, snapshot.scale))
        return reading(step, snapshot.capture_time_us, snapshot.index, features), step.transition

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
        channel_errors=None if score is None else (score.channel_errors if score.channel_scores is None
                                                   else score.channel_scores),
        state=step.state,
        reason=step.reason,
        top_channel=step.top_channel,
    )
