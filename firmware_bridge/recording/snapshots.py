"""What every reader yields: a `Recording` of `RecordedSnapshot`s (int16 counts, scale, sample rate, capture
time), and the pieces the readers share to cut files into snapshots and time them."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from firmware_bridge.recording.scale import peak, quantize, scale_exponent, scale_for
from firmware_bridge.recording.spec import RecordingError, Selection

# Snapshots of a source without timestamps (.mat, unnamed CSV files) follow each other from here.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RecordedSnapshot:
    counts: np.ndarray  # (samples, channels) int16
    scale: float  # g per count, exactly representable as float32 (the frame's scale field)
    sample_rate_hz: int
    time: datetime  # capture time of the first sample, UTC
    source: str  # the file (and sample offset) it came from, for messages


@dataclass(frozen=True)
class Recording:
    """The snapshots of one source in time order; each is read from disk only when asked for."""

    source: Path
    format: str
    channels: tuple[str, ...]
    columns: tuple[int, ...]  # 1-based positions of the selected channels among the source's channels
    scale: float  # g per count of every snapshot (the scale rule)
    sample_rate_hz: int
    snapshot_samples: int
    times: tuple[datetime, ...]
    _read: Callable[[int], RecordedSnapshot] = field(repr=False, compare=False)
    doubted: tuple[str, ...] = ()  # one message per time stamp that did not fit its neighbours (dated from them)

    def __len__(self) -> int:
        return len(self.times)

    def snapshot(self, index: int) -> RecordedSnapshot:
        return self._read(index)

    def snapshots(self) -> Iterator[RecordedSnapshot]:
        for index in range(len(self)):
            yield self._read(index)


def offset(samples: int, rate: int) -> timedelta:
    return timedelta(microseconds=samples * 1_000_000 // rate)


def cut(path: Path, rows: int, snapshot_samples: int | None) -> tuple[int, int]:
    """(snapshot length, snapshots per record) for a record of `rows` samples."""
    length = snapshot_samples or rows
    if length > rows:
        raise RecordingError(path, f"--snapshot-samples {length} is longer than the record ({rows} samples)")
    return length, rows // length


def snapshot_files(path: Path, accept: Callable[[Path], bool], what: str) -> list[Path]:
    """The file itself, or the accepted files of a folder in name order."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and accept(p))
    if not files:
        raise RecordingError(path, f"no {what} in this folder")
    return files


@dataclass(frozen=True)
class SnapshotFiles:
    """Files each holding `per_file` snapshots of `length` rows, the first at `stamps[n]`, at `rate`."""

    files: list[Path]
    stamps: list[datetime]
    rate: int
    length: int
    per_file: int
    doubted: tuple[str, ...] = ()  # files whose stamp was doubted, one message each (Recording.doubted)

    def times(self) -> tuple[datetime, ...]:
        return tuple(t + offset(part * self.length, self.rate) for t in self.stamps for part in range(self.per_file))

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, first row) of snapshot `index`."""
        number, part = divmod(index, self.per_file)
        return number, part * self.length

    def where(self, number: int, start: int) -> str:
        """The snapshot's file (and sample range when a file holds several), for messages."""
        path = self.files[number]
        return str(path) if self.per_file == 1 else f"{path} (samples {start}..{start + self.length - 1})"


def file_per_snapshots(path: Path, kind: str, selection: Selection, layout: SnapshotFiles,
                       table_of: Callable[[int], np.ndarray], first_column: int = 0) -> Recording:
    """A recording of files of float g values (FEMTO, CSV/NPY folders); the channels start at `first_column`.

    The scale is chosen over every file first (one scale per recording); reading then parses each file once
    for all its snapshots, since snapshots are read in order.
    """
    picked = selection.offset(first_column)
    usable = layout.per_file * layout.length
    k = scale_exponent(max(peak(table_of(n)[:usable, picked]) for n in range(len(layout.files))))
    parsed = functools.lru_cache(maxsize=1)(table_of)

    def read(index: int) -> RecordedSnapshot:
        number, start = layout.locate(index)
        counts, scale = quantize(parsed(number)[start:start + layout.length, picked], k)
        return RecordedSnapshot(counts, scale, layout.rate, layout.stamps[number] + offset(start, layout.rate),
                                layout.where(number, start))

    return Recording(path, kind, selection.names, selection.columns, scale_for(k), layout.rate, layout.length,
                     layout.times(), read, layout.doubted)
