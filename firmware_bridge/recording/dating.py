"""Dating snapshots stamped with the time of day only (FEMTO): midnight crossings against bad stamps.

A run's stamps follow a cadence (FEMTO: one snapshot every 10 s). When the time of day goes back, either
the run passed midnight (the step, taken modulo a day, is the usual spacing) or one stamp is wrong (real
recordings carry such glitches: one FEMTO file is stamped six hours before its neighbours). Reading every
backward step as midnight dates all later snapshots a day late; so each step is checked against the run's
median cadence, and a stamp that fits neither its predecessor nor its successor while they fit each other
is doubted: it is dated between its neighbours instead, and named. A jump that later stamps continue from
(the recording paused) is kept as a gap.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

DAY_S = 86_400.0
TOLERANCE = 0.5  # a step fits when it is within half a cadence of the expected multiple of the cadence
WINDOW = 5  # up to WINDOW - 1 consecutive bad stamps are bridged; a longer run of them is taken as a gap


@dataclass(frozen=True)
class Dated:
    times: tuple[datetime, ...]
    doubted: tuple[int, ...]  # indices of the stamps that did not fit their neighbours (dated from them)
    cadence_s: float  # the median spacing the stamps were checked against


def date_times_of_day(of_day: Sequence[timedelta], day: datetime) -> Dated:
    """Capture times for stamps that carry the time of day only, in order, starting on `day`."""
    seconds = np.array([t.total_seconds() for t in of_day])
    steps = np.mod(np.diff(seconds), DAY_S)
    cadence = float(np.median(steps)) if steps.size else 0.0
    if cadence <= 0:  # no spacing to judge by: every step forward, wrapping at midnight
        return Dated(_cumulative(day, seconds, steps), (), cadence)
    walk = _Walk(seconds, cadence)
    return Dated(tuple(day + timedelta(seconds=float(s)) for s in walk.elapsed()), tuple(walk.doubted), cadence)


def _cumulative(day: datetime, seconds: np.ndarray, steps: np.ndarray) -> tuple[datetime, ...]:
    elapsed = np.concatenate([[seconds[0]], seconds[0] + np.cumsum(steps)]) if seconds.size else seconds
    return tuple(day + timedelta(seconds=float(s)) for s in elapsed)


class _Walk:
    """Elapsed seconds since `day` for each stamp, walking from a trusted stamp to the next one that fits."""

    def __init__(self, seconds: np.ndarray, cadence: float) -> None:
        self.seconds, self.cadence = seconds, cadence
        self.doubted: list[int] = []

    def step(self, a: int, b: int) -> float:
        return float(np.mod(self.seconds[b] - self.seconds[a], DAY_S))

    def fits(self, a: int, b: int) -> bool:
        return abs(self.step(a, b) - (b - a) * self.cadence) <= TOLERANCE * self.cadence

    def confirmed(self, a: int) -> int | None:
        """The first later stamp within WINDOW that fits stamp `a` at its cadence, if any."""
        return next((b for b in range(a + 1, min(len(self.seconds), a + WINDOW + 1)) if self.fits(a, b)), None)

    def elapsed(self) -> np.ndarray:
        n = len(self.seconds)
        out = np.zeros(n)
        anchor = self._anchor()
        out[anchor] = self.seconds[anchor]
        for k in range(anchor):  # bad stamps before the first good one: back from it at the cadence
            out[k] = out[anchor] - (anchor - k) * self.cadence
            self.doubted.append(k)
        trusted = anchor
        while trusted + 1 < n:
            nxt = trusted + 1
            if self.fits(trusted, nxt):
                out[nxt] = out[trusted] + self.step(trusted, nxt)
                trusted = nxt
                continue
            bridge = self.confirmed(trusted)
            if bridge is None and nxt + 1 < n:  # later stamps continue from this one: a gap, not a glitch
                out[nxt] = out[trusted] + self.step(trusted, nxt)
                trusted = nxt
                continue
            end = bridge if bridge is not None else n  # the run's last stamps with nothing after to confirm them
            span = self.step(trusted, bridge) if bridge is not None else (end - trusted) * self.cadence
            for k in range(nxt, end):
                out[k] = out[trusted] + (k - trusted) * span / (end - trusted)
                self.doubted.append(k)
            if bridge is None:
                break
            out[bridge] = out[trusted] + span
            trusted = bridge
        return out

    def _anchor(self) -> int:
        """The first stamp that a later one confirms (usually the first); 0 when none is."""
        last = min(len(self.seconds) - 1, WINDOW)
        return next((a for a in range(last) if self.confirmed(a) is not None), 0)
