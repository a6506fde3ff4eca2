"""The health-state machine: scores and sensor faults in, debounced state transitions out.

A pointwise exceedance is not an alarm. A state is raised when one channel exceeds its threshold on k of
the last n snapshots, and cleared only after `clear_after` consecutive snapshots below the warning threshold
(hysteresis: an alarm stays through scores between the thresholds, and through a dip below the warning
threshold shorter than the clearing time), so a score hovering near a threshold does not flap. Cards state the
debounce in seconds too (persist_s, clear_after_s): at the stream's cadence the detector takes the longer of
counts and time (DetectorSettings.at_cadence), so clearing takes the same hour at a 10 s and a 10 min cadence. Counting per channel means noise that
wanders from channel to channel does not add up to an alarm, and the alarm knows which channel raised it
(`driver`): that is the bearing an alert names, not whichever channel happened to peak on one snapshot.
Sensor faults are a state of their own: never a healthy reading, never a bearing alarm. edge.scoring.stream feeds
it for the agent, `cm-train evaluate` and training alike; with `[machine] zone_alarm` the agent's stream also
feeds a ZoneAlarm beside it. Without a model (a baseline card) nothing is scored: the detector rests in
`learning` instead of `normal`, and only sensor faults (and the zone alarm beside it) move it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from edge.model.bundle import DetectorSettings
from edge.scoring.diagnosis import ZONES


class State(StrEnum):
    NORMAL = "normal"
    WARNING = "warning"
    ALARM = "alarm"
    SENSOR_FAULT = "sensor_fault"
    LEARNING = "learning"  # a baseline card: no model yet, the machine's baseline is being gathered


# The zone alarm's thresholds on the ISO zone number (A=1 .. D=4): above 2.5 is zone C (warning), above 3.5 D.
ZONE_THRESHOLDS = (2.5, 3.5)
# A baseline card's detector: nothing is scored, so only the debounce matters (fault_after; k of n for the zone
# alarm): DetectorSettings' defaults, under the agent's [detector] overrides. Its thresholds are the zone
# alarm's, the only ones that can raise a state without a model, and the ones its alerts quote.
BASELINE_SETTINGS = DetectorSettings(*ZONE_THRESHOLDS)


@dataclass(frozen=True)
class Transition:
    state: State
    previous_state: State
    reason: str | None


class Detector:
    def __init__(self, settings: DetectorSettings, interval_s: float | None = None,
                 resting: State = State.NORMAL) -> None:
        """`interval_s`: the stream's cadence (seconds per scored snapshot), which turns the card's debounce
        in seconds into snapshots; None: the counts as given. `resting`: the state with nothing raised
        (LEARNING for a baseline card, whose detector is never given a score)."""
        self.settings = settings
        self.debounce = settings.at_cadence(interval_s)  # k, n and clear_after in snapshots at this cadence
        # Per snapshot, which channels exceeded the threshold (one entry per channel).
        self._warning_hits: deque[np.ndarray] = deque(maxlen=self.debounce.n)
        self._alarm_hits: deque[np.ndarray] = deque(maxlen=self.debounce.n)
        self._last: np.ndarray | None = None  # the last channel scores, to break ties between channels
        self.driver: int | None = None  # the channel whose k of n raised the current warning or alarm
        self._quiet = 0  # consecutive scores below the warning threshold
        self._fault_streak = 0
        self._health = resting  # the bearing's state, kept through a sensor fault
        self._state = resting
        self.reason: str | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def health(self) -> State:
        """The bearing's state, which a sensor fault hides but does not change."""
        return self._health

    def resume(self, state: State, health: State, reason: str | None, driver: int | None = None) -> None:
        """Continue from the state saved before a restart: no false all-clear, no repeated alert, and the
        same bearing named (`driver`) until another channel raises k of n.

        The k-of-n history starts empty, so an alarm holds until `clear_after` quiet snapshots clear it.
        """
        if health == State.SENSOR_FAULT:
            raise ValueError("health: expected normal, warning or alarm, got sensor_fault")
        self._state, self._health, self.reason = state, health, reason
        self.driver = driver if health != State.NORMAL else None

    def update(self, score: float | None, fault: str | None = None,
               channel_scores: np.ndarray | None = None) -> Transition | None:
        """Feed one snapshot: its score (and per-channel scores, on the same scale as the thresholds), or the
        reason its sensor check failed. Returns a transition or None.

        Without per-channel scores the score counts as the only channel.
        """
        if fault is not None:
            self._fault_streak += 1
            if self._fault_streak >= self.settings.fault_after:
                return self._move(State.SENSOR_FAULT, fault)
            return None
        if score is None:
            raise ValueError("update() needs a score or a fault reason")
        self._fault_streak = 0
        s = self.settings
        channels = np.atleast_1d(np.asarray(score if channel_scores is None else channel_scores, dtype=np.float64))
        if self._alarm_hits and self._alarm_hits[-1].shape != channels.shape:
            self._alarm_hits.clear()  # a different channel count (never within one bundle): start counting afresh
            self._warning_hits.clear()
        self._alarm_hits.append(channels > s.alarm_threshold)
        self._warning_hits.append(channels > s.warning_threshold)
        self._last = channels
        self._quiet = self._quiet + 1 if score <= s.warning_threshold else 0
        self._health = self._next_health()
        if self._health == State.NORMAL:
            self.driver = None
        return self._move(self._health, None)

    def unscored(self) -> Transition | None:
        """A snapshot that passed its sensor checks with no model to score it (a baseline card): it ends a
        sensor fault like a scored one does, and leaves the bearing's state as it is."""
        self._fault_streak = 0
        return self._move(self._health, None)

    def _next_health(self) -> State:
        alarm = self._raising(self._alarm_hits)
        if alarm is not None:
            self.driver = alarm
            return State.ALARM
        warning = self._raising(self._warning_hits)
        if warning is not None and self._health != State.ALARM:
            self.driver = warning
            return State.WARNING
        if self._health != State.NORMAL and self._quiet >= self.debounce.clear_after:
            return State.NORMAL
        return self._health

    def _raising(self, hits: deque[np.ndarray]) -> int | None:
        """The channel with k or more of the last n over the threshold (the most hits, then the highest score)."""
        counts = np.sum(hits, axis=0)
        if counts.max() < self.debounce.k:
            return None
        candidates = np.flatnonzero(counts == counts.max())
        assert self._last is not None
        return int(candidates[np.argmax(self._last[candidates])])

    def _move(self, state: State, reason: str | None) -> Transition | None:
        if state == self._state:
            return None
        transition = Transition(state=state, previous_state=self._state, reason=reason)
        self._state = state
        self.reason = reason
        return transition


_RANK = {State.NORMAL: 0, State.LEARNING: 0, State.WARNING: 1, State.ALARM: 2}


class ZoneAlarm:
    """[machine] zone_alarm: the ISO 20816 zone of the velocity RMS, debounced like the score (k of n on the zone
    number 1-4: C warns, D alarms), beside the learned detector. What the device announces is the worse of the
    two, and a sensor fault stays a sensor fault; `announced` is that state, so the transitions are of it."""

    def __init__(self, settings: DetectorSettings, interval_s: float | None = None) -> None:
        warning, alarm = ZONE_THRESHOLDS
        self.detector = Detector(replace(settings, warning_threshold=warning, alarm_threshold=alarm), interval_s)
        self.announced = State.NORMAL  # edge.scoring.stream starts it at its detector's state (learning: a baseline)
        self._reason: str | None = None  # the worst zone of the last snapshot that had one, e.g. iso_zone_d:bearing1

    @property
    def health(self) -> State:
        return self.detector.health

    def update(self, zones: dict[str, str] | None) -> None:
        """One snapshot that passed the sensor checks, with its channels' zones (None: no velocity feature)."""
        if not zones:
            return
        worst = max(zones, key=lambda name: ZONES.index(zones[name]))
        self.detector.update(float(ZONES.index(zones[worst]) + 1))
        self._reason = f"iso_zone_{zones[worst].lower()}:{worst}"

    def announce(self, state: State, reason: str | None) -> tuple[State, str | None, Transition | None]:
        """The learned detector's state and reason, merged with the zone's; a transition if what is announced changed."""
        if state != State.SENSOR_FAULT and _RANK[self.health] > _RANK[state]:
            state, reason = self.health, self._reason or "iso_zone_d:None"
        transition = None if state == self.announced else Transition(state, self.announced, reason)
        self.announced = state
        return state, reason, transition

    def resume(self, state: State, zone: State | None) -> None:
        """Continue from a checkpoint: the learned detector's `state` and the zone detector's (None: not saved)."""
        self.announced = state
        if zone is not None:
            self.detector.resume(zone, zone, None)
            self.announce(state, None)
