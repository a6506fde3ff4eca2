"""Snapshot assembly: sample frames in, complete snapshots of consecutive samples out.

Snapshots are aligned to multiples of `snapshot_samples` in the sensor's sample index, so a sender that
restarts mid-snapshot or loses a frame costs exactly the snapshots it touched. A gap in the sample index
inside a snapshot discards that snapshot and counts it: it is never scored on partial data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_bridge.frame import Frame


@dataclass(frozen=True)
class Snapshot:
    index: int  # first_sample // snapshot_samples
    first_sample: int
    capture_time_us: int
    sample_rate_hz: int
    scale: float
    counts: np.ndarray  # (snapshot_samples, channels) int16


@dataclass(frozen=True)
class _Stream:
    """What must stay the same for consecutive frames to belong to one snapshot."""

    channels: int
    sample_rate_hz: int
    scale: float


class SnapshotAssembler:
    def __init__(self, snapshot_samples: int) -> None:
        if snapshot_samples < 1:
            raise ValueError(f"snapshot_samples: expected a positive integer, got {snapshot_samples}")
        self.snapshot_samples = snapshot_samples
        self.completed = 0
        self.discarded = 0
        self._stream: _Stream | None = None
        self._buffer = np.empty((0, 0), dtype=np.int16)
        self._filled = 0
        self._start = 0  # sample index of the snapshot being filled
        self._capture_time_us = 0

    def add(self, frame: Frame) -> list[Snapshot]:
        """Take one samples frame; return the snapshots it completed (usually none, sometimes one)."""
        header = frame.header
        stream = _Stream(header.channels, header.sample_rate_hz, header.scale)
        if stream != self._stream:
            self._discard_partial()
            self._stream = stream
            self._buffer = np.empty((self.snapshot_samples, header.channels), dtype=np.int16)
        elif self._filled and header.first_sample != self._start + self._filled:
            self._discard_partial()

        done: list[Snapshot] = []
        samples, first = frame.samples, header.first_sample
        while len(samples):
            if not self._filled:
                # Wait for the next snapshot boundary; samples before it belong to no snapshot we can finish.
                skip = -first % self.snapshot_samples
                if skip >= len(samples):
                    break
                samples, first = samples[skip:], first + skip
                self._start = first
                offset = _micros(first - header.first_sample, header.sample_rate_hz)
                self._capture_time_us = header.capture_time_us + offset
            take = min(len(samples), self.snapshot_samples - self._filled)
            self._buffer[self._filled : self._filled + take] = samples[:take]
            self._filled += take
            samples, first = samples[take:], first + take
            if self._filled == self.snapshot_samples:
                done.append(self._emit())
        return done

    def _emit(self) -> Snapshot:
        assert self._stream is not None
        self._filled = 0
        self.completed += 1
        return Snapshot(
            index=self._start // self.snapshot_samples,
            first_sample=self._start,
            capture_time_us=self._capture_time_us,
            sample_rate_hz=self._stream.sample_rate_hz,
            scale=self._stream.scale,
            counts=self._buffer.copy(),
        )

    def _discard_partial(self) -> None:
        if self._filled:
            self.discarded += 1
            self._filled = 0


def _micros(samples: int, sample_rate_hz: int) -> int:
    return samples * 1_000_000 // sample_rate_hz if sample_rate_hz else 0
