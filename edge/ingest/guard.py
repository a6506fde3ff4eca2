"""What the agent accepts from the serial line: frames that fit the model, once each, and readable status text.

Nothing a sensor sends can stop the agent. A CRC-valid frame can still be wrong for this model (another
channel count or sample rate, a scale that is not finite or not the one the model was trained with): it is
counted and discarded, and its samples count as lost data, which becomes `sensor_fault` when it persists.
A frame seen before (same first sample index, capture time and samples: a resend) is dropped, so a snapshot
is scored once. The samples are part of the test because a sensor that restarts counts its index and its
boot time from zero again, and its new samples are new data however alike the header. Status text is the sensor's to choose: control characters are escaped so a newline cannot
forge a log line, and a chatty sensor is rate-limited.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable

from firmware_bridge.frame import Frame, FrameHeader

log = logging.getLogger(__name__)

CHANNELS = "channel_mismatch"
SAMPLE_RATE = "sample_rate_mismatch"
SCALE = "scale_mismatch"
SCALE_TOLERANCE = 1e-4  # relative: a float32 scale round-trips to about 1e-7
STATUS_TEXT_MAX = 200  # characters of a status message that reach the log
RECENT_FRAMES = 4096  # frames remembered for duplicate detection (over 50 snapshots of 80 frames)


class FrameGuard:
    """Checks each samples frame's header against the model's channels, sample rate and scale."""

    def __init__(self, channels: int, sample_rate_hz: int, scale: float | None, source: str) -> None:
        self.channels = channels
        self.sample_rate_hz = sample_rate_hz
        self.scale = scale  # None: the first frame with a usable scale sets it
        self.source = source
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self._log = Throttle()
        self._recent: deque[tuple[int, int, int, int]] = deque()
        self._recent_set: set[tuple[int, int, int, int]] = set()

    def check(self, header: FrameHeader) -> str | None:
        """None if the frame may be used, else the reason it was discarded (also counted and logged)."""
        reason, detail = self._problem(header)
        if reason is None:
            return None
        self.rejected[reason] += 1
        if self._log.allow(reason):
            log.warning("frame %d from %s discarded: %s%s", header.sequence, self.source, detail,
                        self._log.suppressed_note(reason))
        return reason

    def duplicate(self, frame: Frame) -> bool:
        """A frame already taken (a resend of the same samples): count it and drop it."""
        header = frame.header
        key = (header.first_sample, header.capture_time_us, header.sample_count, zlib.crc32(frame.samples.data))
        if key in self._recent_set:
            self.duplicates += 1
            if self._log.allow("duplicate"):
                log.warning("frame %d from %s repeats samples %d..%d already received: dropped%s", header.sequence,
                            self.source, header.first_sample, header.first_sample + header.sample_count - 1,
                            self._log.suppressed_note("duplicate"))
            return True
        self._recent.append(key)
        self._recent_set.add(key)
        if len(self._recent) > RECENT_FRAMES:
            self._recent_set.discard(self._recent.popleft())
        return False

    def _problem(self, header: FrameHeader) -> tuple[str | None, str]:
        if header.channels != self.channels:
            return CHANNELS, f"{header.channels} channels, the model expects {self.channels}"
        if header.sample_rate_hz != self.sample_rate_hz:
            return SAMPLE_RATE, f"sampled at {header.sample_rate_hz} Hz, the model expects {self.sample_rate_hz} Hz"
        scale = header.scale
        if not (math.isfinite(scale) and scale > 0):
            return SCALE, f"scale {scale} g per count, expected a positive finite number"
        if self.scale is None:
            self.scale = scale
            log.info("sensor on %s sends %g g per count", self.source, scale)
        elif not math.isclose(scale, self.scale, rel_tol=SCALE_TOLERANCE):
            return SCALE, f"scale {scale:g} g per count, the model was trained with {self.scale:g}"
        return None, ""


def escape(text: str, limit: int = STATUS_TEXT_MAX) -> str:
    """Printable text for one log line: control characters (newlines too) become escapes, long text is cut."""
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:limit])
    return shown + (f"... ({len(text) - limit} more characters)" if len(text) > limit else "")


class Throttle:
    """At most `burst` log lines per key per `period` seconds; says how many were held back."""

    def __init__(self, period: float = 60.0, burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self.period, self.burst, self.clock = period, burst, clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._suppressed: Counter[str] = Counter()

    def allow(self, key: str) -> bool:
        now = self.clock()
        start, used = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            start, used = now, 0
        if used >= self.burst:
            self._suppressed[key] += 1
            self._windows[key] = (start, used)
            return False
        self._windows[key] = (start, used + 1)
        return True

    def suppressed_note(self, key: str) -> str:
        held = self._suppressed.pop(key, 0)
        return f" ({held} similar line(s) held back)" if held else ""
