"""csv: a folder of CSV/TSV/NPY files (or one file), one snapshot each, at a declared --sample-rate; an
optional header row names the columns."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from firmware_bridge import ims
from firmware_bridge.recording.snapshots import EPOCH, Recording, SnapshotFiles, cut, file_per_snapshots, offset, snapshot_files
from firmware_bridge.recording.spec import RecordingError, RecordingSpec, select_channels
from firmware_bridge.recording.table import read_table

FORMAT = "csv"
SUFFIXES = (".csv", ".tsv", ".txt", ".npy")


def claims(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) and not name.startswith("README")


def open_folder(path: Path, spec: RecordingSpec) -> Recording:
    rate = spec.sample_rate_hz
    if rate is None:
        raise RecordingError(path, "--sample-rate is required for csv recordings (the files do not record it)")
    files = snapshot_files(path, lambda p: claims(p.name), "snapshot files (.csv, .tsv, .txt, .npy)")
    values, header = _values(files[0])
    names = list(header) if header else [f"ch{c}" for c in range(1, values.shape[1] + 1)]
    selection = select_channels(names, spec.channels, files[0])
    length, per_file = cut(files[0], len(values), spec.snapshot_samples)
    layout = SnapshotFiles(files, _times(files, len(values), rate), rate, length, per_file)

    def table_of(number: int) -> np.ndarray:
        table, _ = (values, header) if number == 0 else _values(files[number])
        if table.shape != values.shape:
            raise RecordingError(files[number], f"expected {values.shape[0]} rows of {values.shape[1]} columns "
                                                f"(as {files[0].name}), found {table.shape[0]} of {table.shape[1]}")
        return table

    return file_per_snapshots(path, FORMAT, selection, layout, table_of)


def _values(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if path.suffix.lower() == ".npy":
        return _npy(path), None
    table = read_table(path)
    return table.values, table.header


def _npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise RecordingError(path, f"not a readable .npy array: {error}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.dtype.kind not in "fiu" or array.size == 0:
        raise RecordingError(path, f"expected a (samples, channels) numeric array, got {array.dtype} {array.shape}")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        row, column = bad[0]
        raise RecordingError(path, f"row {row}, column {column + 1}: {float(array[row, column])!r} is not a finite number")
    return array


def _times(files: list[Path], rows: int, rate: int) -> list[datetime]:
    """From the file names when they are IMS-style times, else one snapshot after the other from 1970."""
    try:
        return [ims.parse_timestamp(f.stem) for f in files]
    except ims.ImsFormatError:
        step = offset(rows, rate)
        return [EPOCH + i * step for i in range(len(files))]
