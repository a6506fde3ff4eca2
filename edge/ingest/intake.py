"""The agent's intake: decoded frames in, snapshots due for scoring and lost scoring slots out, in order.

Each frame goes one way through the ingest layer: the guard (does it fit the model? seen before?), the clock
(its Unix time), the snapshot assembler, the cadence (is this snapshot's slot still open?); what cannot be
used is counted by the lost-data accounting (edge.ingest.losses). Status frames are counted and logged.
The agent hands the snapshots to the scoring pipeline and the lost slots to its `missing()`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edge.ingest.cadence import Cadence
from edge.ingest.clock import StreamClock, TimeSource, plausible
from edge.ingest.guard import FrameGuard, Throttle, escape
from edge.ingest.losses import MISSING_DATA, Losses
from edge.ingest.snapshot import Snapshot, SnapshotAssembler
from firmware_bridge.frame import Frame, FrameType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lost:
    """A scoring slot that passed without a usable snapshot: one step towards `sensor_fault`."""

    time_us: int
    reason: str


class Intake:
    def __init__(self, guard: FrameGuard, clock: StreamClock, assembler: SnapshotAssembler, cadence: Cadence,
                 losses: Losses) -> None:
        self.guard = guard
        self.clock = clock
        self.assembler = assembler
        self.cadence = cadence
        self.losses = losses
        self.time_source: TimeSource | None = None  # where the latest frame's time came from
        self.status_frames = 0
        self._status_log = Throttle()

    def frame(self, frame: Frame) -> list[Snapshot | Lost]:
        """One decoded frame: the snapshots it completed that are due for scoring, and the slots lost meanwhile."""
        header = frame.header
        if header.frame_type == FrameType.STATUS:
            self._status(frame)
            return []
        reason = self.guard.check(header)
        if reason is not None:
            claimed = header.capture_time_us if not header.boot_time and plausible(header.capture_time_us) else None
            return [*self._lost(self.losses.lose(header.sample_count, claimed), reason)]
        if self.guard.duplicate(frame):
            return []
        epoch_us, self.time_source = self.clock.epoch_us(header)
        frame = Frame(replace(header, capture_time_us=epoch_us), frame.samples, frame.message)
        self.losses.accepted(epoch_us + header.sample_count * 1_000_000 // header.sample_rate_hz)
        discarded = self.assembler.discarded
        snapshots = self.assembler.add(frame)
        events: list[Snapshot | Lost] = []
        for _ in range(self.assembler.discarded - discarded):
            log.warning("snapshot discarded: gap in the sample index at frame %d (sample %d)",
                        header.sequence, header.first_sample)
            events += self._lost([epoch_us], MISSING_DATA)
        for snapshot in snapshots:
            events += self._due(snapshot)
        return events

    def noise(self, bytes_dropped: int) -> list[Lost]:
        """The decoder's count of dropped bytes (line noise, cut frames): the samples they would have carried."""
        return self._lost(self.losses.noise(bytes_dropped), MISSING_DATA)

    def counters(self) -> dict[str, int]:
        return {"snapshots": self.assembler.completed, "snapshots_discarded": self.assembler.discarded,
                "frames_rejected": sum(self.guard.rejected.values()), "frames_duplicate": self.guard.duplicates,
                "status_frames": self.status_frames, "snapshots_skipped": self.cadence.skipped}

    def _due(self, snapshot: Snapshot) -> list[Snapshot | Lost]:
        due, missed = self.cadence.snapshot(snapshot.capture_time_us)
        events: list[Snapshot | Lost] = [] if missed is None else [Lost(snapshot.capture_time_us, missed)]
        return events + [snapshot] if due else events

    def _lost(self, times_us: list[int], reason: str) -> list[Lost]:
        events = []
        for time_us in times_us:
            missed = self.cadence.lost(time_us, reason)
            if missed is not None:
                events.append(Lost(time_us, missed))
        return events

    def _status(self, frame: Frame) -> None:
        self.status_frames += 1
        if self._status_log.allow("status"):
            log.info("sensor status: %s%s", escape(frame.message), self._status_log.suppressed_note("status"))
