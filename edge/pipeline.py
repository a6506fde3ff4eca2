"""One snapshot through the device's pipeline: sensor checks, features, window, model, detector.

Pure computation, no I/O: the agent feeds it snapshots from the serial link, the benchmark feeds it
snapshots from memory, and both measure the same code.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from edge.bundle import Bundle
from edge.detector import Detector, DetectorSettings, Transition
from edge.features import snapshot_features
from edge.messages import Reading
from edge.runtime import Scorer
from edge.sensor import SensorLimits, check_counts, check_features
from edge.snapshot import Snapshot

MISSING_DATA = "missing_data"


class Pipeline:
    def __init__(self, bundle: Bundle, settings: DetectorSettings, limits: SensorLimits = SensorLimits()) -> None:
        card = bundle.card
        self.channels = card.feature_spec.channels
        self.feature_set = card.feature_spec.feature_set
        self.healthy_min = np.asarray(card.healthy_min, dtype=np.float64)
        self.scorer = Scorer(bundle)
        self.detector = Detector(settings)
        self.limits = limits
        # Only healthy-looking snapshots enter the window: a fault must not be scored as vibration.
        self._window: deque[np.ndarray] = deque(maxlen=self.scorer.window)

    def process(self, snapshot: Snapshot) -> tuple[Reading, Transition | None]:
        features = snapshot_features(snapshot.counts, snapshot.scale, self.feature_set)
        fault = check_counts(snapshot.counts, self.channels, self.limits, snapshot.scale) or check_features(
            features, self.healthy_min, self.channels, self.limits
        )
        score = None
        if fault is not None:
            self._window.clear()
            transition = self.detector.update(None, fault=fault)
        else:
            self._window.append(features)
            if len(self._window) == self._window.maxlen:
                score = self.scorer.score(np.stack(self._window))
                transition = self.detector.update(score.score)
            else:
                transition = None  # still filling the first window: nothing to score yet
        reading = Reading(
            capture_time_us=snapshot.capture_time_us,
            snapshot=snapshot.index,
            features=features,
            score=None if score is None else score.score,
            channel_errors=None if score is None else score.channel_errors,
            state=self.detector.state,
            reason=fault if fault is not None else self.detector.reason,
        )
        return reading, transition

    def missing(self, reason: str = MISSING_DATA) -> Transition | None:
        """A snapshot lost (a gap in the sample index, unusable frames): a sensor fault once it persists."""
        self._window.clear()
        return self.detector.update(None, fault=reason)
