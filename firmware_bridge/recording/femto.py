"""femto: a FEMTO/PRONOSTIA run folder, 25.6 kHz.

acc_NNNNN.csv files with hour, minute, second, microsecond and one column per accelerometer, comma- or
semicolon-separated; temp_ files are ignored.
"""
from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from firmware_bridge.recording.dating import date_times_of_day
from firmware_bridge.recording.snapshots import Recording, SnapshotFiles, cut, file_per_snapshots
from firmware_bridge.recording.spec import RecordingError, RecordingSpec, select_channels
from firmware_bridge.recording.table import delimiter, read_table

log = logging.getLogger(__name__)

FORMAT = "femto"
FEMTO_SAMPLE_RATE = 25600
FEMTO_CHANNELS = ("horizontal", "vertical")
_TIME_COLUMNS = 4  # hour, minute, second, microsecond
_NAME = re.compile(r"acc_(\d+)\.csv")
# FEMTO records the time of day only; snapshots are dated on this (arbitrary, fixed) day so that runs
# replay and train deterministically. A run that passes midnight moves on to the next day; a stamp that does not
# fit its neighbours' cadence is doubted, not taken for midnight (dating.py).
FEMTO_DATE = datetime(2012, 1, 1, tzinfo=UTC)


def claims(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def open_femto(path: Path, spec: RecordingSpec) -> Recording:
    files = _files(path)
    first = _table(files[0])
    n_acc = first.shape[1] - _TIME_COLUMNS
    names = list(FEMTO_CHANNELS) if n_acc == 2 else [f"acc{c}" for c in range(1, n_acc + 1)]
    selection = select_channels(names, spec.channels, files[0])
    length, per_file = cut(files[0], len(first), spec.snapshot_samples)
    stamps, doubted = _times(files, first)
    layout = SnapshotFiles(files, stamps, spec.sample_rate_hz or FEMTO_SAMPLE_RATE, length, per_file, doubted)

    def table_of(number: int) -> np.ndarray:
        table = first if number == 0 else _table(files[number], first.shape[1])
        if len(table) != len(first):
            raise RecordingError(files[number], f"expected {len(first)} rows (as in {files[0].name}), found {len(table)}")
        return table

    return file_per_snapshots(path, FORMAT, selection, layout, table_of, first_column=_TIME_COLUMNS)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if claims(p.name)), key=_number)
    if not files:
        raise RecordingError(path, "no FEMTO acceleration files (acc_NNNNN.csv) in this folder")
    return files


def _number(path: Path) -> int:
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def _table(path: Path, columns: int | None = None) -> np.ndarray:
    table = read_table(path, delimiters=b",;", header_allowed=False, expected_columns=columns)
    if table.values.shape[1] <= _TIME_COLUMNS:
        raise RecordingError(path, f"expected hour, minute, second, microsecond and acceleration columns, "
                                   f"found {table.values.shape[1]} columns", 1)
    return table.values


def _times(files: list[Path], first: np.ndarray) -> tuple[list[datetime], tuple[str, ...]]:
    """Capture time of each file from its first row's time of day, and the files whose stamp was doubted.

    Days advance when the clock wraps at the run's cadence; a stamp that fits neither neighbour is dated
    between them (dating.py). Only each file's first line is read here (files are read in full when their
    snapshot is).
    """
    of_day = [_time_of_day(path, first[0] if path == files[0] else _first_row(path)) for path in files]
    dated = date_times_of_day(of_day, FEMTO_DATE)
    doubted = tuple(f"{files[k]}: stamped {_clock(of_day[k])}, which does not fit the {dated.cadence_s:g} s cadence "
                    f"of its neighbours: dated {dated.times[k]:%H:%M:%S} from them" for k in dated.doubted)
    if doubted:
        log.warning("%s: %d snapshot time stamp(s) doubted and dated from their neighbours: %s", files[0].parent,
                    len(doubted), ", ".join(f"{files[k].name} (stamped {_clock(of_day[k])})" for k in dated.doubted))
    return list(dated.times), doubted


def _clock(of_day: timedelta) -> str:
    return (datetime.min + of_day).strftime("%H:%M:%S")


def _time_of_day(path: Path, row: np.ndarray) -> timedelta:
    hour, minute, second, micro = row[:4]
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61 and 0 <= micro < 1e6):
        raise RecordingError(path, f"columns 1-4: expected a time of day (hour, minute, second, microsecond), "
                                   f"got {[float(v) for v in row[:4]]}", 1)
    return timedelta(hours=int(hour), minutes=int(minute), seconds=int(second), microseconds=int(micro))


def _first_row(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        line = stream.readline().strip()
    separator = delimiter(line, b",;") or ord(",")
    try:
        return np.array([float(cell) for cell in line.split(bytes([separator]))])
    except ValueError:
        read_table(path, delimiters=b",;", header_allowed=False)  # names the bad cell
        raise RecordingError(path, "cannot read the first row", 1) from None
