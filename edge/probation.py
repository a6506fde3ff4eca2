"""Shadow probation: a candidate model scores every snapshot beside the active one before it may take over.

The active model keeps the alerts; the candidate's readings only count here. The candidate fails as soon as
it says warning or alarm where the active model says normal (on healthy data a new model must not raise
alarms the old one does not), or its scoring raises; an agent on a baseline card (state `learning`) has no
model to compare with: there the candidate passes on its own, with no warning or alarm on the baseline; it passes after `snapshots` compared snapshots or
`seconds` of stream time, whichever comes first. Pure logic: edge.rollout feeds it and acts on the verdict.
None of the delivery systems the field uses (AWS IoT Jobs, Mender, Azure Device Update) can do this: they
check that new software starts, not that a new model agrees with the old one on the same machine.
"""
from __future__ import annotations

from dataclasses import dataclass

from edge.scoring.detector import State
from edge.scoring.reading import Reading

DEFAULT_SNAPSHOTS = 144  # a day of snapshots at the IMS cadence (one per 10 minutes)
DEFAULT_SECONDS = 86_400.0
RAISED = (State.WARNING, State.ALARM)
CALM = (State.NORMAL, State.LEARNING)  # nothing raised: by a model, or by a baseline card that has none


@dataclass(frozen=True)
class ProbationSettings:
    snapshots: int = DEFAULT_SNAPSHOTS
    seconds: float = DEFAULT_SECONDS

    def __post_init__(self) -> None:
        if self.snapshots < 1 or not self.seconds > 0:
            raise ValueError(f"probation: expected snapshots >= 1 and seconds > 0, got {self.snapshots} and {self.seconds}")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


class Probation:
    def __init__(self, settings: ProbationSettings) -> None:
        self.settings = settings
        self.compared = 0
        self._first_us: int | None = None

    def observe(self, active: Reading, candidate: Reading) -> Verdict | None:
        """One snapshot scored by both; a verdict once there is one, else None (keep going)."""
        if candidate.state in RAISED and active.state in CALM:
            return Verdict(False, f"candidate said {candidate.state} (score {_score(candidate)}) where the active model "
                                  f"said {active.state} (score {_score(active)}), snapshot {active.snapshot}")
        if candidate.score is None or (active.score is None and active.state != State.LEARNING):
            return None  # a sensor fault or lost data compares nothing (a baseline never has a score)
        self.compared += 1
        if self._first_us is None:
            self._first_us = active.capture_time_us
        elapsed = (active.capture_time_us - self._first_us) / 1e6
        if self.compared >= self.settings.snapshots:
            return Verdict(True, f"{self.compared} snapshots scored in shadow without a warning or alarm the active "
                                 f"model did not raise")
        if elapsed >= self.settings.seconds:
            return Verdict(True, f"{elapsed:g} s of snapshots ({self.compared}) scored in shadow without a warning or "
                                 f"alarm the active model did not raise")
        return None

    @staticmethod
    def failed(error: Exception) -> Verdict:
        return Verdict(False, f"candidate could not score a snapshot: {type(error).__name__}: {error}")


def _score(reading: Reading) -> str:
    return "none" if reading.score is None else f"{reading.score:.4g}"
