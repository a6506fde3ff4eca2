"""Datasets: a recording (IMS, FEMTO, MATLAB, CSV snapshots) or a features table becomes timestamps, a feature
matrix and channel names.

Recordings are read by firmware_bridge.recording as the same int16 counts and scale the replay harness sends
and passed through edge.model.features.snapshot_features, so features from files equal features from a replayed
stream bit for bit.
Tables (the seeds' merged table, labelled fraud tables) are read with pandas; bad cells are errors naming
file, line and column, and rows with NaN or inf are excluded and reported, never dropped silently. A table
read by a card's feature spec (--feature-spec: the agent's published features, from cm-fleet's historian) has
its columns named by edge.model.features.feature_columns and takes the card's sampling, scale and features.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from edge.model.features import FEATURE_SET, FeatureConfig, FeatureExtractor, feature_columns
from edge.scoring.sensor import check_counts
from firmware_bridge import ims
from firmware_bridge.recording import Recording, RecordingError, open_recording, parse_channel_list
from trainer.options import DatasetSpec
from trainer.spec_card import SpecCard

SPEC_TABLE = "features"  # Dataset.kind of a features table read by a card's feature spec (load_spec_table)


class DatasetError(ValueError):
    """Input that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True)
class Dataset:
    source: str
    kind: str  # the recording format (ims, femto, mat, csv), "table", or SPEC_TABLE (a table read by a card's spec)
    timestamps: np.ndarray  # datetime64[ms], UTC, non-decreasing
    features: np.ndarray  # (snapshots, channels) float64, finite
    channels: tuple[str, ...]
    labels: np.ndarray | None = None  # (snapshots,) bool, True = anomaly; tables with --label-column only
    faults: tuple[str | None, ...] = ()  # raw-sample sensor check per snapshot (IMS only)
    excluded: tuple[str, ...] = ()  # one message per excluded row
    columns: tuple[int, ...] | None = None  # recordings: the selected channels' 1-based positions
    sample_rate_hz: int = 0
    snapshot_samples: int = 0
    scales: tuple[float, ...] = ()  # recordings: the scale (g per count) the scale rule chose, one per recording
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)  # how the features were computed (the card records it)
    line_hz: np.ndarray | None = None  # vibration set: (snapshots, channels, 4) envelope lines found
    prominence: np.ndarray | None = None  # vibration set: (snapshots, channels, 4) their prominence
    doubted: tuple[str, ...] = ()  # recordings: time stamps that did not fit their neighbours (dated from them)

    def __len__(self) -> int:
        return self.features.shape[0]

    def fingerprint(self) -> str:
        """sha256 of the timestamps and features: the card's record of which data trained the model."""
        digest = hashlib.sha256(self.timestamps.astype("datetime64[ms]").astype(np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.features).tobytes())
        return digest.hexdigest()


def parse_channels(text: str | None) -> tuple[str, ...] | None:
    """`--channels 1,3,5,7` (1-based, as the IMS README numbers them) or names such as DE,FE; None: all."""
    if not text:
        return None
    try:
        return parse_channel_list(text)
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


def load_dataset(path: str | Path, spec: DatasetSpec = DatasetSpec()) -> Dataset:
    """A recording (folder or file, in any format firmware_bridge.recording reads) or a features table CSV.

    A single .csv file is a features table unless --format (or --sample-rate, --snapshot-samples) says it is
    a recording.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if spec.feature_spec is not None:
        if not (path.is_file() and path.suffix.lower() == ".csv"):
            raise DatasetError(f"{path}: --feature-spec reads a features table (a .csv file); a recording's spec "
                               "comes from its files and flags")
        return load_spec_table(path, spec.feature_spec, spec.label_column)
    if path.is_file() and path.suffix.lower() == ".csv" and not spec.names_samples():
        if spec.channels is not None:
            raise DatasetError(f"{path}: --channels applies to a recording; a table's channels are its columns "
                               "(give --format csv for a file of raw samples)")
        if spec.feature_set != FEATURE_SET:
            raise DatasetError(f"{path}: --feature-set {spec.feature_set} needs raw samples: a features table has "
                               "its features already (give --format csv for a file of raw samples)")
        return load_table(path, spec.label_column)
    if spec.label_column is not None:
        raise DatasetError(f"{path}: --label-column applies to a features table, not a recording")
    return load_recording(path, spec)


@dataclass
class _Analysed:
    """Per snapshot of a recording: its features, the vibration set's envelope lines, its sensor check."""

    features: list[np.ndarray] = field(default_factory=list)
    lines: list[np.ndarray] = field(default_factory=list)
    prominences: list[np.ndarray] = field(default_factory=list)
    faults: list[str | None] = field(default_factory=list)
    scales: set[float] = field(default_factory=set)


def load_recording(path: Path, spec: DatasetSpec = DatasetSpec()) -> Dataset:
    try:
        recording = open_recording(path, spec)
    except RecordingError as error:
        raise DatasetError(str(error)) from None
    if not len(recording):
        raise DatasetError(f"{path}: no snapshots in this recording")
    try:
        config = FeatureConfig(spec.feature_set, recording.sample_rate_hz, spec.bearing, spec.shaft_rpm)
        extractor = FeatureExtractor(config)
        extractor.analyse(recording.snapshot(0).counts, 0.001)  # a line beyond the spectrum fails here, named
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None
    analysed = _analyse(recording, extractor)
    for doubt in recording.doubted:
        print(f"warning: doubted time stamp: {doubt}", file=sys.stderr)
    return Dataset(
        source=str(path),
        kind=recording.format,
        timestamps=np.array([np.datetime64(t.replace(tzinfo=None), "ms") for t in recording.times]),
        features=np.array(analysed.features),
        channels=recording.channels,
        faults=tuple(analysed.faults),
        columns=recording.columns,
        sample_rate_hz=recording.sample_rate_hz,
        snapshot_samples=recording.snapshot_samples,
        scales=tuple(sorted(analysed.scales)),
        feature_config=config,
        line_hz=np.array(analysed.lines) if analysed.lines else None,
        prominence=np.array(analysed.prominences) if analysed.prominences else None,
        doubted=recording.doubted,
    )


def _analyse(recording: Recording, extractor: FeatureExtractor) -> _Analysed:
    """Every snapshot's features and raw-sample sensor check, with progress on stderr."""
    found = _Analysed()
    try:
        for i, snapshot in enumerate(recording.snapshots()):
            analysis = extractor.analyse(snapshot.counts, snapshot.scale)
            found.features.append(analysis.features)
            if analysis.line_hz is not None and analysis.prominence is not None:
                found.lines.append(analysis.line_hz)
                found.prominences.append(analysis.prominence)
            found.faults.append(check_counts(snapshot.counts, recording.channels, scale=snapshot.scale))
            found.scales.add(snapshot.scale)
            if (i + 1) % 200 == 0 or i + 1 == len(recording):
                print(f"features: {i + 1}/{len(recording)} snapshots", file=sys.stderr, flush=True)
    except RecordingError as error:
        raise DatasetError(str(error)) from None
    return found


def load_table(path: Path, label_column: str | None = None) -> Dataset:
    """A CSV whose first column is a timestamp (or seconds) and whose other numeric columns are channels."""
    frame, lines, stamps, labels = _read_table(path, label_column)
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
        raise DatasetError(f"{path}: no numeric channel columns after the timestamp column {frame.columns[0]!r}")
    features = np.column_stack(values)
    finite, excluded = _finite_rows(path, features, names, lines)
    return Dataset(
        source=str(path),
        kind="table",
        timestamps=stamps[finite],
        features=features[finite],
        channels=tuple(names),
        labels=None if labels is None else labels[finite],
        excluded=excluded,
    )


def load_spec_table(path: Path, card: SpecCard, label_column: str | None = None) -> Dataset:
    """A features table read by a card's feature spec (--feature-spec): after the timestamp, one column per
    name edge.model.features.feature_columns gives for the spec, in any order, read into the spec's
    channel-major order. A missing column or one the spec does not name (beside --label-column) is an error:
    a table of another machine, or of another feature set, must not train this machine's model."""
    frame, lines, stamps, labels = _read_table(path, label_column)
    spec = card.spec
    expected = feature_columns(spec.feature_set, spec.channels)
    given = [str(name) for name in frame.columns[1:] if name != label_column]
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    if missing:
        instead = f"; the table has {_listed(tuple(extra))}, which the spec does not name" if extra else ""
        raise DatasetError(f"{path}: column {missing[0]!r} is missing ({len(missing)} of {len(expected)} missing): "
                           f"the feature spec of {card.source} ({spec.feature_set}, channels "
                           f"{','.join(spec.channels)}) needs the columns {_listed(expected)}{instead}")
    if extra:
        raise DatasetError(f"{path}: column {extra[0]!r} is not a feature of {card.source}'s spec "
                           f"({spec.feature_set}, channels {','.join(spec.channels)}): expected the columns "
                           f"{_listed(expected)}" + ("" if label_column else " (a label column: --label-column)"))
    values = []
    for name in expected:
        column = _numeric(path, frame[name], lines, name)
        if column is None:
            raise DatasetError(f"{path}: column {name!r}: expected numbers (a feature of {card.source}'s spec), "
                               f"got {frame[name].iloc[0]!r}")
        values.append(column)
    features = np.column_stack(values)
    finite, excluded = _finite_rows(path, features, list(expected), lines)
    return Dataset(
        source=str(path),
        kind=SPEC_TABLE,
        timestamps=stamps[finite],
        features=features[finite],
        channels=spec.channels,
        labels=None if labels is None else labels[finite],
        excluded=excluded,
        sample_rate_hz=spec.sample_rate_hz,
        snapshot_samples=spec.snapshot_samples,
        scales=() if spec.scale is None else (spec.scale,),
        feature_config=spec.feature_config(),
    )


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:12])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def _read_table(path: Path, label_column: str | None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray | None]:
    """The table as text cells, each row's line number, its timestamps and (--label-column) its labels."""
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
    return frame, lines, stamps, labels


def _finite_rows(path: Path, features: np.ndarray, names: list[str], lines: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows without NaN or inf, and one message per excluded row (the first 20 printed)."""
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
    return finite, excluded


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
