"""Scoring cadence: one judgement per interval of stream time, as the model was trained.

A continuous stream completes a snapshot every second or so, but a model trained on snapshots ten minutes
apart, and a detector that debounces over k of n snapshots, mean "one snapshot per interval". The interval
is measured in the stream's capture time, never the agent's wall clock, so a replay at full speed of a
recording taken every ten minutes still scores every snapshot.

Each interval is a slot. The first good snapshot in a slot is scored; later ones are skipped. A slot in
which data was lost (a gap, rejected frames, line noise) and no good snapshot came is reported as missed
once the stream has moved past it: persistent loss becomes a sensor fault at the same pace as scores
would. A slot in which nothing arrived at all is silence, which `[sensor] stale_after_s` watches.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOLERANCE = 0.05  # share of the interval a snapshot may come early (recordings' spacing jitters a little)


def training_interval_s(timestamps_us: Sequence[int] | np.ndarray) -> float | None:
    """The cadence a model was trained on: the median spacing of its training snapshots (None if < 2)."""
    times = np.asarray(timestamps_us, dtype=np.int64)
    steps = np.diff(times)
    steps = steps[steps > 0]
    return round(float(np.median(steps)) / 1e6, 3) if len(steps) else None


class Cadence:
    def __init__(self, interval_s: float) -> None:
        if not interval_s >= 0:
            raise ValueError(f"snapshot_interval_s: expected a number >= 0, got {interval_s}")
        self.interval_us = round(interval_s * 1_000_000)
        self.tolerance_us = round(self.interval_us * TOLERANCE)
        self.skipped = 0  # good snapshots not scored because their slot was already scored
        self._due: int | None = None  # start of the next slot (None: the next snapshot opens one)
        self._lost: str | None = None  # why data of the open slot was lost
        self._last: int | None = None  # latest capture time seen

    def snapshot(self, time_us: int) -> tuple[bool, str | None]:
        """A good snapshot at `time_us`: (score it?, the reason of an earlier slot missed for lost data)."""
        missed = self._settle(time_us)
        if self._due is None or time_us >= self._due - self.tolerance_us:
            self._advance(time_us)
            return True, missed
        self.skipped += 1
        return False, missed

    def lost(self, time_us: int, reason: str) -> str | None:
        """Data lost at `time_us`; returns a reason when that loss (or an earlier one) cost a whole slot."""
        if self.interval_us == 0:
            return reason  # every snapshot is a slot
        missed = self._settle(time_us)
        if self._due is None:
            self._due = time_us
        if time_us >= self._due - self.tolerance_us:
            self._lost = reason
        return missed

    def _settle(self, time_us: int) -> str | None:
        if self._last is not None and time_us < self._last:
            self._due, self._lost = None, None  # time went back (sensor restart, replay loop): start over
        self._last = time_us
        if self._lost is None or self._due is None or time_us < self._due + self.interval_us - self.tolerance_us:
            return None
        missed, self._lost = self._lost, None
        self._advance(time_us - self.interval_us)
        return missed

    def _advance(self, time_us: int) -> None:
        """Close the slot `time_us` fell in; keep the phase unless the stream jumped past the next slot."""
        if self._due is not None and time_us < self._due + self.interval_us - self.tolerance_us:
            self._due += self.interval_us
        else:
            self._due = time_us + self.interval_us
