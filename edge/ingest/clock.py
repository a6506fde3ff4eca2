"""Time: every frame's capture time on the Unix clock, whether or not the sensor has a wall clock.

A microcontroller without a real-time clock counts from its boot and says so (flags bit 0, PROTOCOL.md §4).
The agent anchors such a stream to its own clock when it first sees it and again after the sensor
restarted (its sample index or boot time went back). A frame that claims wall-clock time outside any
plausible range (before 2000, e.g. 1970 from an old sketch without the flag, or near 2^63 from a glitch)
is anchored the same way rather than trusted. Telemetry says which source dated each snapshot.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from firmware_bridge.frame import FrameHeader

log = logging.getLogger(__name__)

BUILD_YEAR = 2026  # a system clock before this year has not been set (no RTC, no NTP yet)
EARLIEST_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)  # IMS recordings are from 2003
LATEST_US = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)


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

    def epoch_us(self, header: FrameHeader) -> tuple[int, TimeSource]:
        """The Unix time of the frame's first sample and where that time came from."""
        raw = header.capture_time_us
        if not header.boot_time and plausible(raw):
            return raw, TimeSource.SENSOR
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


def iso_time(capture_time_us: int) -> str:
    moment = datetime.fromtimestamp(capture_time_us / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
