"""The streaming-scoring core: a stream of snapshot features in, scores and detector states out.

One home for the rules the agent, `cm-train evaluate` and training all apply, so they cannot drift apart:
- a snapshot that failed its sensor checks (edge.scoring.sensor) is a fault: the agent's pipeline checks the
  raw counts and the features in one call and passes the verdict (`checked`); callers without the raw counts
  (`update`: training and `cm-train evaluate`, which checked the counts when they loaded the files) have the
  features checked here;
- the window of the last W feature vectors: only snapshots that passed the checks enter it, and a fault
  or a missing snapshot empties it (a fault must never be scored as vibration);
- the first W-1 snapshots after a reset are not scored: the window is not full yet;
- the model (edge.model.runtime.Model) and the debounced detector (edge.scoring.detector.Detector), with the
  agent's zone alarm beside it when `[machine] zone_alarm` is on;
- a baseline card (edge.model.bundle.Baseline) has no model: the sensor checks, the faults and the zone alarm
  are the same, nothing is scored, and the detector rests in `learning` (the one place this rule is kept).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.ingest.losses import MISSING_DATA
from edge.model.bundle import Baseline, Deployable, DetectorSettings
from edge.model.runtime import Model, Score
from edge.scoring.detector import Detector, State, Transition, ZoneAlarm
from edge.scoring.sensor import SensorCheck, SensorLimits


@dataclass(frozen=True)
class Step:
    """What the core concluded about one snapshot."""

    score: Score | None  # None: a fault, or the window is still filling
    fault: str | None  # the sensor check's reason, e.g. 'dropout:bearing3'
    state: State
    reason: str | None
    transition: Transition | None
    top_channel: int | None  # index of the channel that explains the state (see Detector.driver)


class Stream:
    """The streaming core (edge.model.runtime.Model only runs the model): feed snapshots in order with
    `update()` (or `checked()`), lost snapshots with `missing()`."""

    def __init__(self, bundle: Deployable, settings: DetectorSettings | None = None, model: Model | None = None,
                 limits: SensorLimits = SensorLimits(), zone: ZoneAlarm | None = None,
                 interval_s: float | None = None) -> None:
        """`interval_s`: the cadence the stream is scored at (None: the card's training cadence), which sets
        how many snapshots the card's debounce in seconds spans. A Baseline needs `settings` (its card has
        no detector: the agent's come from edge.agent.detector_settings)."""
        card = bundle.card
        self.sensor = SensorCheck(card.feature_spec.channels, card.healthy_min, limits)
        cadence = interval_s if interval_s is not None else card.feature_spec.snapshot_interval_s
        self.model: Model | None
        if isinstance(bundle, Baseline):
            if settings is None:
                raise ValueError(f"{bundle.path}: a baseline card states no detector settings: pass them")
            self.model, self.detector = None, Detector(settings, cadence, resting=State.LEARNING)
        else:
            self.model = model if model is not None else Model(bundle)
            self.detector = Detector(settings or bundle.card.detector, cadence)
        self.zone = zone
        if zone is not None:
            zone.announced = self.detector.state  # nothing announced yet: what the learned detector rests in
        self._window: deque[np.ndarray] = deque(maxlen=1 if self.model is None else self.model.window)

    @property
    def learning(self) -> bool:
        """A baseline card: no model, nothing scored."""
        return self.model is None

    def update(self, features: np.ndarray, fault: str | None = None) -> Step:
        """One snapshot's features, and the raw-count check's reason if it failed (None: passed)."""
        return self.checked(features, fault or self.sensor.features(features))

    def checked(self, features: np.ndarray, fault: str | None, zones: dict[str, str] | None = None) -> Step:
        """One snapshot whose sensor checks ran (`fault`: their reason, None: passed), with its ISO zones."""
        if fault is not None:
            return self._fault(fault)
        self._window.append(np.asarray(features, dtype=np.float64))
        score, transition = None, None  # still filling the window: nothing to score yet
        if self.model is None:
            transition = self.detector.unscored()  # a baseline card: a checked snapshot ends a fault, nothing more
        elif len(self._window) == self._window.maxlen:
            score = self.model.score(np.stack(self._window))
            transition = self.detector.update(score.score,
                                              channel_scores=score.channel_errors if score.per_channel else None)
        if self.zone is not None:
            self.zone.update(zones)  # the zone needs no window: it judges every checked snapshot
        return self._step(score, None, transition)

    def missing(self, reason: str = MISSING_DATA) -> Step:
        """A snapshot lost (a gap in the sample index, frames the agent had to discard): a sensor fault once
        it persists. `reason` says why, e.g. "scale_mismatch"."""
        return self._fault(reason)

    def _fault(self, fault: str) -> Step:
        self._window.clear()
        return self._step(None, fault, self.detector.update(None, fault=fault))

    def _step(self, score: Score | None, fault: str | None, transition: Transition | None) -> Step:
        detector = self.detector
        top = detector.driver if detector.health in (State.WARNING, State.ALARM) else None
        if score is not None and (top is None or not score.per_channel):
            top = int(np.argmax(score.channel_errors))
        state, reason = detector.state, fault if fault is not None else detector.reason
        if self.zone is not None:
            state, reason, transition = self.zone.announce(state, reason)
        return Step(score=score, fault=fault, state=state, reason=reason, transition=transition, top_channel=top)


def score_stream(core: Stream, features: np.ndarray, faults: Sequence[str | None] | None = None) -> list[Step]:
    """Every row of (N, C*F) features through the core, in order (faults: the raw-count checks, if any)."""
    reasons: Iterable[str | None] = faults if faults is not None else [None] * len(features)
    return [core.update(row, fault) for row, fault in zip(features, reasons)]


def unbroken_runs(rows: np.ndarray) -> list[np.ndarray]:
    """Row indices split where a row is missing: a window never spans a fault or a gap (training's windows too)."""
    rows = np.asarray(rows)
    return [run for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if run.size]
