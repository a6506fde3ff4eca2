"""Datasets: an IMS directory or a features table becomes timestamps, a feature matrix and channel names.

IMS files are quantized to the same int16 counts the replay harness sends and passed through
edge.features.snapshot_features, so features from files equal features from a replayed stream bit for bit.
Tables (the seeds' merged table, labelled fraud tables) are read with pandas; bad cells are errors naming
file, line and column, and rows with NaN or inf are excluded and reported, never dropped silently.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from edge.features import snapshot_features
from edge.sensor import check_counts
from firmware_bridge import ims
from firmware_bridge.ims import IMS_SAMPLE_RATE, IMS_SCALE, channel_names, list_ims_files, read_counts


class DatasetError(ValueError):
    """Input that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True)
class Dataset:
    source: str
    kind: str  # "ims" or "table"
    timestamps: np.ndarray  # datetime64[ms], UTC, non-decreasing
    features: np.ndarray  # (snapshots, channels) float64, finite
    channels: tuple[str, ...]
    labels: np.ndarray | None = None  # (snapshots,) bool, True = anomaly; tables with --label-column only
    faults: tuple[str | None, ...] = ()  # raw-sample sensor check per snapshot (IMS only)
    excluded: tuple[str, ...] = ()  # one message per excluded row
    columns: tuple[int, ...] | None = None  # IMS column selection, 1-based
    sample_rate_hz: int = 0
    snapshot_samples: int = 0

    def __len__(self) -> int:
        return self.features.shape[0]

    def fingerprint(self) -> str:
        """sha256 of the timestamps and features: the card's record of which data trained the model."""
        digest = hashlib.sha256(self.timestamps.astype("datetime64[ms]").astype(np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.features).tobytes())
        return digest.hexdigest()


def parse_channels(text: str | None) -> tuple[int, ...] | None:
    """`--channels 1,3,5,7` (1-based, as the IMS README numbers them); None selects every column."""
    if not text:
        return None
    try:
        return ims.parse_channels(text)
    except ValueError as error:
        raise DatasetError(f"--channels: {error}") from None


def parse_time(text: str) -> np.datetime64:
    """A timestamp as given on the command line: 2004-02-12 10:32:39, ISO 8601, 2004.02.12.10.32.39 or seconds."""
    value = text.strip()
    try:
        return np.datetime64(ims.parse_timestamp(value).replace(tzinfo=None), "ms")
    except ims.ImsFormatError:
        pass  # not an IMS file name: one of the other forms
    try:
        return np.datetime64(int(float(value) * 1000), "ms")
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        raise DatasetError(f"expected a timestamp like 2004-02-12 10:32:39, got {text!r}") from None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return np.datetime64(stamp.to_datetime64(), "ms")


def load_dataset(path: str | Path, channels: Sequence[int] | None = None, label_column: str | None = None) -> Dataset:
    """An IMS directory or a features table CSV."""
    path = Path(path)
    if path.is_dir():
        if label_column is not None:
            raise DatasetError(f"{path}: --label-column applies to a features table, not an IMS directory")
        return load_ims(path, channels)
    if path.is_file():
        if channels is not None:
            raise DatasetError(f"{path}: --channels applies to an IMS directory; a table's channels are its columns")
        return load_table(path, label_column)
    raise DatasetError(f"{path}: no such file or directory")


def load_ims(directory: Path, channels: Sequence[int] | None = None) -> Dataset:
    files = list_ims_files(directory)
    if not files:
        raise DatasetError(f"{directory}: no IMS files (names like 2003.10.22.12.06.24)")
    # The first file sets the snapshot length: IMS files have 20,480 rows, the recorder writes whatever
    # [sensor] snapshot length the installation uses; every other file must have the same.
    first = read_counts(files[0].path, expected_rows=None)
    rows = len(first)
    names = channel_names(first.shape[1])
    selection = tuple(channels) if channels else tuple(range(1, first.shape[1] + 1))
    bad = [c for c in selection if c > first.shape[1]]
    if bad:
        raise DatasetError(f"--channels: column {bad[0]} does not exist: {files[0].path} has {first.shape[1]} columns")
    columns = [c - 1 for c in selection]
    selected = [names[c] for c in columns]
    features = np.empty((len(files), len(columns)))
    faults: list[str | None] = []
    for i, ims_file in enumerate(files):
        counts = first[:, columns] if i == 0 else read_counts(ims_file.path, columns, expected_rows=rows)
        features[i] = snapshot_features(counts, IMS_SCALE)
        faults.append(check_counts(counts, selected))
        if (i + 1) % 200 == 0 or i + 1 == len(files):
            print(f"features: {i + 1}/{len(files)} files", file=sys.stderr, flush=True)
    stamps = np.array([np.datetime64(f.timestamp.replace(tzinfo=None), "ms") for f in files])
    return Dataset(
        source=str(directory),
        kind="ims",
        timestamps=stamps,
        features=features,
        channels=tuple(selected),
        faults=tuple(faults),
        columns=selection,
        sample_rate_hz=IMS_SAMPLE_RATE,
        snapshot_samples=rows,
    )


def load_table(path: Path, label_column: str | None = None) -> Dataset:
    """A CSV whose first column is a timestamp (or seconds) and whose other numeric columns are channels."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file: expected a header row and data rows") from None
    except pd.errors.ParserError as error:
        raise DatasetError(f"{path}: not a CSV table: {error}") from None
    if frame.shape[0] == 0 or frame.shape[1] < 2:
        raise DatasetError(f"{path}: expected a timestamp column and at least one channel column with data rows")
    lines = np.arange(frame.shape[0]) + 2  # line 1 is the header
    time_name = frame.columns[0]
    stamps = _timestamps(path, frame[time_name], lines, time_name)
    labels = None
    if label_column is not None:
        if label_column not in frame.columns:
            raise DatasetError(f"{path}: --label-column {label_column!r}: no such column; columns are {list(frame.columns)}")
        labels = _labels(path, frame[label_column], lines, label_column)
    names: list[str] = []
    values: list[np.ndarray] = []
    for name in frame.columns[1:]:
        if name == label_column:
            continue
        column = _numeric(path, frame[name], lines, name)
        if column is not None:
            names.append(str(name))
            values.append(column)
    if not values:
        raise DatasetError(f"{path}: no numeric channel columns after the timestamp column {time_name!r}")
    features = np.column_stack(values)
    finite = np.isfinite(features).all(axis=1)
    excluded = tuple(
        f"{path}:{lines[row]}: excluded: non-finite value in column {names[int(np.argmin(np.isfinite(features[row])))]!r}"
        for row in np.flatnonzero(~finite)
    )
    for message in excluded[:20]:
        print(message, file=sys.stderr)
    if len(excluded) > 20:
        print(f"{path}: ... {len(excluded)} rows excluded for NaN or inf in all", file=sys.stderr)
    if not finite.any():
        raise DatasetError(f"{path}: every row has a NaN or inf value: nothing left to use")
    return Dataset(
        source=str(path),
        kind="table",
        timestamps=stamps[finite],
        features=features[finite],
        channels=tuple(names),
        labels=None if labels is None else labels[finite],
        excluded=excluded,
    )


def _timestamps(path: Path, column: pd.Series, lines: np.ndarray, name: str) -> np.ndarray:
    seconds = pd.to_numeric(column, errors="coerce")
    if seconds.notna().all():
        # A numeric first column (creditcard's Time) is seconds from the start of the recording.
        stamps = (seconds.to_numpy(dtype=np.float64) * 1000).astype(np.int64).astype("datetime64[ms]")
    else:
        parsed = pd.to_datetime(column, errors="coerce", format="mixed", utc=True)
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if bad.size:
            row = bad[0]
            raise DatasetError(
                f"{path}:{lines[row]}: column {name!r}: expected a timestamp like 2004-02-12 10:32:39, "
                f"got {column.iloc[row]!r}"
            )
        stamps = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
    backwards = np.flatnonzero(np.diff(stamps) < np.timedelta64(0, "ms"))
    if backwards.size:
        row = backwards[0] + 1
        raise DatasetError(f"{path}:{lines[row]}: column {name!r}: timestamps must not go backwards, got {column.iloc[row]!r}")
    return stamps


def _numeric(path: Path, column: pd.Series, lines: np.ndarray, name: str) -> np.ndarray | None:
    """The column as float64 (NaN for empty cells); None for a column with no number at all (not a channel)."""
    text = column.str.strip()
    values = pd.to_numeric(text.where(text != "", "nan"), errors="coerce").to_numpy(dtype=np.float64)
    unparsed = np.isnan(values) & ~text.str.lower().isin(["", "nan", "na", "null"]).to_numpy()
    if unparsed.all():
        print(f"{path}: column {name!r} is not numeric: not used as a channel", file=sys.stderr)
        return None
    if unparsed.any():
        row = int(np.flatnonzero(unparsed)[0])
        raise DatasetError(f"{path}:{lines[row]}: column {name!r}: expected a number, got {column.iloc[row]!r}")
    return values


def _labels(path: Path, column: pd.Series, lines: np.ndarray, name: str) -> np.ndarray:
    text = column.str.strip().str.strip('"').str.lower()
    known = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}
    bad = np.flatnonzero(~text.isin(list(known)).to_numpy())
    if bad.size:
        row = bad[0]
        raise DatasetError(f"{path}:{lines[row]}: column {name!r}: expected a label 0 (normal) or 1 (anomaly), got {column.iloc[row]!r}")
    return text.map(known).to_numpy(dtype=bool)
