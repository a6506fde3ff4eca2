"""The health-state machine: scores and sensor faults in, debounced state transitions out.

A pointwise exceedance is not an alarm. A state is raised when k of the last n snapshots exceed its
threshold and cleared only after `clear_after` consecutive snapshots below the warning threshold
(hysteresis), so a score hovering near a threshold does not flap. Sensor faults are a state of their own:
never a healthy reading, never a bearing alarm. The same code serves `cm-train evaluate` and the agent.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    NORMAL = "normal"
    WARNING = "warning"
    ALARM = "alarm"
    SENSOR_FAULT = "sensor_fault"


@dataclass(frozen=True)
class DetectorSettings:
    warning_threshold: float
    alarm_threshold: float
    k: int = 3
    n: int = 5
    clear_after: int = 6
    fault_after: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.warning_threshold <= self.alarm_threshold:
            raise ValueError(
                f"thresholds: expected 0 < warning_threshold <= alarm_threshold, "
                f"got {self.warning_threshold} and {self.alarm_threshold}"
            )
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k and n: expected 1 <= k <= n, got k={self.k}, n={self.n}")
        for name in ("clear_after", "fault_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True)
class Transition:
    state: State
    previous_state: State
    reason: str | None


class Detector:
    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self._warning_hits: deque[bool] = deque(maxlen=settings.n)
        self._alarm_hits: deque[bool] = deque(maxlen=settings.n)
        self._quiet = 0  # consecutive scores below the warning threshold
        self._fault_streak = 0
        self._health = State.NORMAL  # the bearing's state, kept through a sensor fault
        self._state = State.NORMAL
        self.reason: str | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def health(self) -> State:
        """The bearing's state, which a sensor fault hides but does not change."""
        return self._health

    def resume(self, state: State, health: State, reason: str | None) -> None:
        """Continue from the state saved before a restart: no false all-clear, no repeated alert.

        The k-of-n history starts empty, so an alarm holds until `clear_after` quiet snapshots clear it.
        """
        if health == State.SENSOR_FAULT:
            raise ValueError("health: expected normal, warning or alarm, got sensor_fault")
        self._state, self._health, self.reason = state, health, reason

    def update(self, score: float | None, fault: str | None = None) -> Transition | None:
        """Feed one snapshot: its score, or the reason its sensor check failed. Returns a transition or None."""
        if fault is not None:
            self._fault_streak += 1
            if self._fault_streak >= self.settings.fault_after:
                return self._move(State.SENSOR_FAULT, fault)
            return None
        if score is None:
            raise ValueError("update() needs a score or a fault reason")
        self._fault_streak = 0
        s = self.settings
        self._alarm_hits.append(score > s.alarm_threshold)
        self._warning_hits.append(score > s.warning_threshold)
        self._quiet = self._quiet + 1 if score <= s.warning_threshold else 0
        self._health = self._next_health()
        return self._move(self._health, None)

    def _next_health(self) -> State:
        k = self.settings.k
        if sum(self._alarm_hits) >= k:
            return State.ALARM
        if sum(self._warning_hits) >= k and self._health != State.ALARM:
            return State.WARNING
        if self._health != State.NORMAL and self._quiet >= self.settings.clear_after:
            return State.NORMAL
        return self._health

    def _move(self, state: State, reason: str | None) -> Transition | None:
        if state == self._state:
            return None
        transition = Transition(state=state, previous_state=self._state, reason=reason)
        self._state = state
        self.reason = reason
        return transition
