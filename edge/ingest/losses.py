"""Lost-data accounting: samples that arrived but cannot be used, and silence.

Frames the guard rejected and bytes the decoder dropped (line noise, cut frames) stand for samples the
sensor sent. They add up until they make a whole snapshot: each snapshot's worth is one lost snapshot,
dated from the end of the last accepted frame plus the stream time lost since (or by the frame's own
wall-clock time when that is plausible and later: a recording replayed with a wrong scale). A lost snapshot
costs a scoring slot (edge.ingest.cadence), and persistent loss becomes `sensor_fault`. No snapshot at all
for `[sensor] stale_after_s` is silence: missing data too, not health.
"""
from __future__ import annotations

from collections.abc import Callable

MISSING_DATA = "missing_data"  # a snapshot lost: a gap in the sample index, frames that had to be discarded


class Losses:
    def __init__(self, snapshot_samples: int, sample_rate_hz: int, channels: int, now_us: Callable[[], int]) -> None:
        self.snapshot_samples = snapshot_samples
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self._now_us = now_us  # dates losses before any frame was accepted
        self._stream_us: int | None = None  # end of the last accepted frame, on the Unix clock
        self._samples = 0  # lost samples, not yet a whole snapshot
        self._us = 0  # stream time those losses stand for since the last accepted frame
        self._bytes_dropped = 0  # the decoder's count when it was last read

    def accepted(self, end_us: int) -> None:
        """A frame was taken; it ends at `end_us`, and later losses are dated from there."""
        self._stream_us = end_us
        self._us = 0

    def lose(self, samples: int, claimed_us: int | None = None) -> list[int]:
        """`samples` that cannot be used; returns the times of the whole snapshots they complete."""
        self._samples += samples
        self._us += samples * 1_000_000 // self.sample_rate_hz
        lost = []
        while self._samples >= self.snapshot_samples:
            self._samples -= self.snapshot_samples
            base = self._stream_us if self._stream_us is not None else self._now_us()
            lost.append(max(base + self._us, claimed_us or 0))
        return lost

    def noise(self, bytes_dropped: int) -> list[int]:
        """The decoder's running count of dropped bytes: the new ones lost as int16 samples of every channel."""
        if bytes_dropped <= self._bytes_dropped:
            return []
        samples = (bytes_dropped - self._bytes_dropped) // (2 * self.channels)
        self._bytes_dropped = bytes_dropped
        return self.lose(samples)


class Silence:
    """No complete snapshot for `stale_after_s` (None: never checked): the sensor is silent."""

    def __init__(self, stale_after_s: float | None, now: float) -> None:
        self.stale_after_s = stale_after_s
        self._completed = 0
        self._since = now

    def check(self, completed: int, now: float) -> bool:
        """`completed`: snapshots completed so far; True once per `stale_after_s` without a new one."""
        if completed != self._completed:
            self._completed, self._since = completed, now
            return False
        if self.stale_after_s is None or now - self._since < self.stale_after_s:
            return False
        self._since = now
        return True
