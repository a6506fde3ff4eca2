"""Time: every frame's capture time on the Unix clock, whether or not the sensor has a wall clock.

A microcontroller without a real-time clock counts from its boot and says so (flags bit 0, PROTOCOL.md §4).
The agent anchors such a stream to its own clock when it first sees it and again after the sensor
restarted (its sample index or boot time went back). A frame that claims wall-clock time outside any
plausible range (before 2000, e.g. 1970 from an old sketch without the flag, or near 2^63 from a glitch)
is anchored the same way rather than trusted. Telemetry says which source dated each snapshot.

A sensor's wall clock can also glitch: one frame stamped hours away from its neighbours. Measured against the
sample index, a stream's time only moves forward, continuously or in bursts (a sensor or replay that records a
snapshot every few seconds or minutes) at a steady pace. A frame that goes back, or forward far beyond the gaps
seen so far, is doubted: dated at the stream's pace instead (and said to be dated by the agent), and logged. If
the stream carries on from the new time (the next burst, or CONFIRM_US of samples), the sensor's clock really
stepped and is followed from then on; a sensor restart (sample index back) starts afresh.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from firmware_bridge.frame import FrameHeader

log = logging.getLogger(__name__)

BUILD_YEAR = 2026  # a system clock before this year has not been set (no RTC, no NTP yet)
EARLIEST_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)  # IMS recordings are from 2003
LATEST_US = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
JITTER_US = 1_000_000  # a wall clock may wobble this much against the sample index without being doubted
FAR_FLOOR_US = 3600 * 1_000_000  # a forward jump beyond max(this, FAR_FACTOR x the largest recent gap) is doubted
FAR_FACTOR = 10
CONFIRM_US = 10 * 1_000_000  # a doubted time the stream keeps for this many seconds of samples is followed


class TimeSource(StrEnum):
    SENSOR = "sensor"  # the sensor's own wall clock
    AGENT = "agent"  # boot-relative (or implausible) sensor time anchored to the agent's clock


def plausible(epoch_us: int) -> bool:
    return EARLIEST_US <= epoch_us < LATEST_US


def now_us() -> int:
    return time.time_ns() // 1000


def unsynchronised(clock_us: int | None = None) -> str | None:
    """Why the agent's own clock cannot be right (it is before the build year), or None."""
    clock_us = now_us() if clock_us is None else clock_us
    year = datetime.fromtimestamp(clock_us / 1e6, UTC).year if clock_us >= 0 else 1969
    if year < BUILD_YEAR:
        return f"the system clock says {year}, before this software was built ({BUILD_YEAR}): is NTP running?"
    return None


class StreamClock:
    """Converts frame capture times to Unix microseconds; remembers the anchor of a boot-relative stream."""

    def __init__(self, source: str, now: Callable[[], int] = now_us) -> None:
        self.source = source  # the port, for log lines
        self.now = now
        self.anchors = 0  # how often a stream was (re-)anchored
        self._offset: int | None = None  # added to boot-relative time
        self._last: tuple[int, int] | None = None  # (first_sample, capture_time_us) of the last anchored frame
        self.pace = WallPace(source)  # a sensor wall clock's frames, checked against the stream's pace

    def epoch_us(self, header: FrameHeader) -> tuple[int, TimeSource]:
        """The Unix time of the frame's first sample and where that time came from."""
        raw = header.capture_time_us
        if not header.boot_time and plausible(raw):
            return self.pace.date(header)
        restarted = self._last is not None and (header.first_sample < self._last[0] or raw < self._last[1])
        if self._offset is None or restarted or not plausible(raw + self._offset):
            self._anchor(header, restarted)
        assert self._offset is not None
        self._last = (header.first_sample, raw)
        return raw + self._offset, TimeSource.AGENT

    def _anchor(self, header: FrameHeader, restarted: bool) -> None:
        # The frame arrives once its last sample is taken: its first sample is one frame duration older.
        duration = header.sample_count * 1_000_000 // header.sample_rate_hz if header.sample_rate_hz else 0
        self._offset = self.now() - duration - header.capture_time_us
        self.anchors += 1
        if restarted:
            log.warning("sensor on %s restarted (sample index or boot time went back): re-anchored its time "
                        "to this clock", self.source)
        elif self.anchors == 1:
            why = "boot-relative time (flags bit 0)" if header.boot_time else \
                f"capture_time_us {header.capture_time_us}, not a wall clock (no boot-time flag)"
            log.info("sensor on %s sends %s: its snapshots are dated by this clock", self.source, why)
        else:
            log.warning("sensor on %s sent an implausible time: re-anchored to this clock", self.source)


class WallPace:
    """Frames stamped by the sensor's wall clock, checked against the pace of the stream so far.

    A frame's offset is its capture time minus its sample index in time: constant in a continuous stream,
    growing by the gap between bursts in a bursting one (bursts start every so many samples). The offset in
    use follows the frames' offsets while they keep that pace; a frame whose offset goes back, or jumps
    forward far beyond the recent gaps, is dated with the offset in use instead, plus the usual gap when it
    is where a burst starts.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.doubted = 0  # frames dated at the stream's pace instead of their own time
        self._offset: int | None = None  # the offset in use
        self._last: tuple[int, int] | None = None  # (first_sample, raw offset) of the previous frame
        self._gaps: deque[int] = deque(maxlen=16)  # recent forward steps between bursts (µs)
        self._bursts: deque[int] = deque(maxlen=16)  # the sample index where each of them came
        self._doubt: tuple[int, int] | None = None  # (sample time where doubting began, offset dating the run)

    def date(self, header: FrameHeader) -> tuple[int, TimeSource]:
        at = header.first_sample * 1_000_000 // header.sample_rate_hz if header.sample_rate_hz else 0
        raw = header.capture_time_us - at
        previous, self._last = self._last, (header.first_sample, raw)
        if self._offset is None or previous is None or header.first_sample < previous[0]:
            self._follow(raw)  # the first frame, or a sensor restart: nothing to judge it by
            return header.capture_time_us, TimeSource.SENSOR
        step = raw - self._offset
        if -JITTER_US <= step <= self._far_us():
            if step > JITTER_US:
                self._gaps.append(step)
                self._bursts.append(header.first_sample)
            self._follow(raw)
            return header.capture_time_us, TimeSource.SENSOR
        return self._doubted(header, at, raw, raw - previous[1])

    def _doubted(self, header: FrameHeader, at: int, raw: int, moved: int) -> tuple[int, TimeSource]:
        """A frame off the pace: followed if the stream carries on from the run of doubted frames before it
        (the next burst, or CONFIRM_US of samples), else dated at the pace."""
        assert self._offset is not None
        if self._doubt is not None and -JITTER_US <= moved <= self._far_us() and (
                moved > JITTER_US or at - self._doubt[0] >= CONFIRM_US):
            log.warning("sensor on %s: its clock stepped by %s and the stream carries on from there: following it",
                        self.source, _duration(raw - self._doubt[1]))
            self._follow(raw)
            return header.capture_time_us, TimeSource.SENSOR
        since, offset = self._doubt or (at, self._offset)
        offset += self._usual_gap() if self._starts_burst(header.first_sample) else 0
        if self._doubt is None:
            log.warning("sensor on %s sent capture time %s, %s off the stream's pace: dated %s from the pace",
                        self.source, iso_time(header.capture_time_us), _duration(raw - offset), iso_time(at + offset))
        self._doubt = (since, offset)
        self.doubted += 1
        return at + offset, TimeSource.AGENT

    def _follow(self, raw: int) -> None:
        self._offset, self._doubt = raw, None

    def _far_us(self) -> int:
        return max(FAR_FLOOR_US, FAR_FACTOR * max(self._gaps, default=0))

    def _usual_gap(self) -> int:
        return int(sorted(self._gaps)[len(self._gaps) // 2])

    def _starts_burst(self, first_sample: int) -> bool:
        """Whether a burst would start at this sample index, as bursts have so far (a steady period)."""
        if len(self._bursts) < 2:
            return False
        periods = sorted(b - a for a, b in zip(self._bursts, list(self._bursts)[1:]))
        period = periods[len(periods) // 2]
        return period > 0 and (first_sample - self._bursts[-1]) % period == 0


def _duration(delta_us: int) -> str:
    sign = "-" if delta_us < 0 else "+"
    return sign + str(timedelta(microseconds=abs(delta_us)))


def iso_time(capture_time_us: int) -> str:
    moment = datetime.fromtimestamp(capture_time_us / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
