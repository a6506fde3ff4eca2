"""Recordings in: IMS, FEMTO/PRONOSTIA, MATLAB and generic snapshot folders become the same snapshots.

Every reader yields `RecordedSnapshot`s: int16 counts, the scale (g per count), the sample rate and the
capture time. The trainer computes features from them and the replay harness sends them as frames, so
both see the same counts and scale whatever the source format.

Scale rule (one home, documented in PROTOCOL.md and the READMEs): a recording is held at 0.001 g per
count when all its values fit in int16 (|value| <= 32.767 g), else at the smallest power-of-two multiple
0.001 g x 2**k that holds its largest magnitude (the selected channels of every snapshot, found by a first
pass over the files). One scale per recording, as a real sensor has one: the trainer records it in the
model card (feature_spec.scale) and the replay harness sends it in every frame, so the agent accepts the
stream and a replayed snapshot's features equal the trainer's bit for bit. Three-decimal data (IMS,
FEMTO) is lossless at k = 0; other data is rounded to the nearest count.

Formats (`--format`, auto-detected when unambiguous):
- ims: a folder of IMS files (firmware_bridge.ims), 20 kHz.
- femto: a FEMTO/PRONOSTIA run folder: acc_NNNNN.csv with hour, minute, second, microsecond and one
  column per accelerometer, comma- or semicolon-separated; temp_ files are ignored; 25.6 kHz.
- mat: a MATLAB file (or a folder of them) holding one long record per channel variable, at a declared
  --sample-rate, cut into --snapshot-samples. CWRU names (X097_DE_time) are selected by their suffix (DE).
  Needs scipy (the `trainer` extra), imported only when a .mat file is read.
- csv: a folder of CSV/TSV/NPY files (or one file), one snapshot each, at a declared --sample-rate;
  an optional header row names the columns.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from firmware_bridge import ims

FORMATS = ("ims", "femto", "mat", "csv")
BASE_SCALE = 0.001  # g per count: three-decimal data is exact at this scale
FEMTO_SAMPLE_RATE = 25600
FEMTO_CHANNELS = ("horizontal", "vertical")
_FEMTO_TIME_COLUMNS = 4  # hour, minute, second, microsecond
_FEMTO_NAME = re.compile(r"acc_(\d+)\.csv")
_CWRU_VARIABLE = re.compile(r"X\d+_([A-Za-z]+)_time")
_SNAPSHOT_SUFFIXES = (".csv", ".tsv", ".txt", ".npy")
_INT16_MAX = 32767
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# FEMTO records the time of day only; snapshots are dated on this (arbitrary, fixed) day so that runs
# replay and train deterministically. A run that passes midnight moves on to the next day.
FEMTO_DATE = datetime(2012, 1, 1, tzinfo=UTC)


# One error for a file that cannot be read, whatever its format: an IMS file's is a recording's error.
# The message starts with "<path>[:<line>]: ".
RecordingError = ims.ImsFormatError


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

    def __len__(self) -> int:
        return len(self.times)

    def snapshot(self, index: int) -> RecordedSnapshot:
        return self._read(index)

    def snapshots(self) -> Iterator[RecordedSnapshot]:
        for index in range(len(self)):
            yield self._read(index)


# --- the scale rule --------------------------------------------------------------------------------


def scale_exponent(peak_g: float) -> int:
    """The k of the scale rule: the smallest k >= 0 with round(peak / (0.001 * 2**k)) <= 32767."""
    counts = abs(peak_g) / BASE_SCALE
    k = 0
    while round(counts / 2**k) > _INT16_MAX:
        k += 1
    return k


def scale_for(k: int) -> float:
    """0.001 g x 2**k as the float32 the frames carry (so the trainer and the agent use the same number)."""
    return float(np.float32(BASE_SCALE * 2**k))


def peak(values: np.ndarray) -> float:
    return float(np.max(np.abs(values))) if values.size else 0.0


def quantize(values: np.ndarray, k: int | None = None) -> tuple[np.ndarray, float]:
    """(samples, channels) g values -> int16 counts at 0.001 g x 2**k (k: by the scale rule for these values).

    Counts are round(value * 1000 / 2**k): for three-decimal values at k = 0 exactly the written digits.
    """
    values = np.asarray(values, dtype=np.float64)
    if k is None:
        k = scale_exponent(peak(values))
    elif round(peak(values) * 1000.0 / 2**k) > _INT16_MAX:
        raise ValueError(f"values up to {peak(values):g} g do not fit int16 at {scale_for(k):g} g per count")
    counts = np.rint(values * (1000.0 / 2**k))
    return counts.astype(np.int16), scale_for(k)


# --- channel selection -----------------------------------------------------------------------------


def parse_channel_list(text: str) -> tuple[str, ...]:
    """`--channels 1,3` or `--channels DE,FE`: the tokens, checked only for emptiness and repeats."""
    tokens = tuple(part.strip() for part in text.split(","))
    if not text.strip() or any(not t for t in tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"expected distinct channel names or 1-based numbers like 1,3 or DE,FE, got {text!r}")
    return tokens


def select_channels(names: Sequence[str], wanted: Sequence[str | int] | None, source: str | Path) -> tuple[int, ...]:
    """1-based positions of `wanted` (names or 1-based numbers) among `names`; None selects all."""
    if not wanted:
        return tuple(range(1, len(names) + 1))
    positions = []
    for token in wanted:
        text = str(token)
        if text in names:
            positions.append(names.index(text) + 1)
            continue
        matches = [i + 1 for i, name in enumerate(names) if name.lower() == text.lower()]
        if matches:
            positions.append(matches[0])
        elif text.isdigit() and 1 <= int(text) <= len(names):
            positions.append(int(text))
        elif text.isdigit():
            raise RecordingError(source, f"--channels: column {text} does not exist: expected 1-based numbers "
                                         f"1..{len(names)} or names ({', '.join(names)})")
        else:
            raise RecordingError(source, f"--channels: no channel named {text!r}; channels are {', '.join(names)} "
                                         f"(or their 1-based numbers)")
    if len(set(positions)) != len(positions):
        raise RecordingError(source, f"--channels: {list(wanted)} selects a channel twice")
    return tuple(positions)


# --- delimited text ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    values: np.ndarray  # (rows, columns) float64, finite
    header: tuple[str, ...] | None
    first_line: int  # 1-based file line of values[0]


def _delimiter(line: bytes, allowed: bytes) -> int | None:
    for byte in allowed:
        if byte in line:
            return byte
    return None


def read_table(path: Path, delimiters: bytes = b"\t;,", header_allowed: bool = True,
               expected_columns: int | None = None) -> Table:
    """A delimited numeric text file, parsed vectorised; any bad cell raises naming line and column."""
    data = path.read_bytes()
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.strip(b"\n") + b"\n"
    if data == b"\n":
        raise RecordingError(path, "the file is empty: expected rows of numbers")
    first, rest = data.split(b"\n", 1)
    separator = _delimiter(first, delimiters)
    header: tuple[str, ...] | None = None
    line_offset = 1
    if separator is not None and not _is_numeric_row(first, separator):
        if not header_allowed:
            raise RecordingError(path, f"expected numbers, found {first.decode('utf-8', 'replace')!r}", 1)
        header = tuple(cell.strip().decode("utf-8", "replace") for cell in first.split(bytes([separator])))
        data, line_offset = rest, 2
        if not data.strip():
            raise RecordingError(path, "a header row but no data rows")
    elif separator is None:
        separator = _delimiter(rest.split(b"\n", 1)[0], delimiters) or delimiters[-1]
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    separators = np.flatnonzero(raw == separator)
    per_line = np.diff(np.searchsorted(separators, ends), prepend=0) + 1
    columns = int(per_line[0])
    wrong = np.flatnonzero(per_line != columns)
    if wrong.size:
        row = int(wrong[0])
        raise RecordingError(path, f"expected {columns} columns (as on line {line_offset}), found {per_line[row]}",
                             row + line_offset)
    if expected_columns is not None and columns != expected_columns:
        raise RecordingError(path, f"expected {expected_columns} columns, found {columns}", line_offset)
    rows = len(ends)
    values: np.ndarray | None
    try:
        values = np.fromstring(data.replace(bytes([separator]), b" "), sep=" ")  # type: ignore[call-overload]
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != rows * columns:
        _diagnose(path, data, separator, line_offset, header)
        raise RecordingError(path, f"expected {rows * columns} numbers, could not parse the file")
    values = values.reshape(rows, columns)
    bad = np.flatnonzero(~np.isfinite(values).ravel())
    if bad.size:
        row, column = divmod(int(bad[0]), columns)
        raise RecordingError(path, f"{_column_name(column, header)}: {float(values[row, column])!r} is not a finite number",
                             row + line_offset)
    return Table(values, header, line_offset)


def _is_numeric_row(line: bytes, separator: int) -> bool:
    try:
        [float(cell) for cell in line.split(bytes([separator]))]
    except ValueError:
        return False
    return True


def _column_name(column: int, header: Sequence[str] | None) -> str:
    named = f" ({header[column]})" if header and column < len(header) else ""
    return f"column {column + 1}{named}"


def _diagnose(path: Path, data: bytes, separator: int, line_offset: int, header: Sequence[str] | None) -> None:
    """Slow pass naming the first cell the vectorised parse could not read."""
    for row, line in enumerate(data.split(b"\n")[:-1]):
        for column, cell in enumerate(line.split(bytes([separator]))):
            try:
                float(cell)
            except ValueError:
                text = cell.decode("utf-8", "replace")
                raise RecordingError(path, f"{_column_name(column, header)}: {text!r} is not a number",
                                     row + line_offset) from None


# --- the readers -------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of a file or folder when the names say it unambiguously; otherwise an error naming --format."""
    if path.is_file():
        if path.suffix.lower() == ".mat":
            return "mat"
        if path.suffix.lower() in _SNAPSHOT_SUFFIXES:
            return "csv"
        try:
            ims.parse_timestamp(path.name)
        except ims.ImsFormatError:
            pass
        else:
            return "ims"
        raise RecordingError(path, "cannot tell the format from the name: give --format ims|femto|mat|csv")
    if not path.is_dir():
        raise RecordingError(path, "no such file or directory")
    names = [p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    found = set()
    if any(_FEMTO_NAME.fullmatch(n) for n in names):
        found.add("femto")
    if any(n.lower().endswith(".mat") for n in names):
        found.add("mat")
    if any(ims._NAME.fullmatch(n) for n in names):
        found.add("ims")
    if not found and any(n.lower().endswith(_SNAPSHOT_SUFFIXES) and not n.startswith("README") for n in names):
        found.add("csv")
    if len(found) == 1:
        return found.pop()
    what = "several formats (" + ", ".join(sorted(found)) + ")" if found else "no known recording files"
    raise RecordingError(path, f"holds {what}: give --format ims|femto|mat|csv")


def open_recording(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    channels: Sequence[str | int] | None = None,
    sample_rate_hz: int | None = None,
    snapshot_samples: int | None = None,
) -> Recording:
    """Open a file or folder as a Recording; `channels` are names or 1-based numbers (None: all)."""
    path = Path(path)
    if not path.exists():
        raise RecordingError(path, "no such file or directory")
    kind = format or detect_format(path)
    if kind not in FORMATS:
        raise RecordingError(path, f"--format: expected one of {', '.join(FORMATS)}, got {kind!r}")
    for name, value in (("--sample-rate", sample_rate_hz), ("--snapshot-samples", snapshot_samples)):
        if value is not None and value < 1:
            raise RecordingError(path, f"{name}: expected a positive integer, got {value}")
    readers = {"ims": _open_ims, "femto": _open_femto, "mat": _open_mat, "csv": _open_csv}
    return readers[kind](path, channels, sample_rate_hz, snapshot_samples)


def _snapshot_files(path: Path, accept: Callable[[Path], bool], what: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and accept(p))
    if not files:
        raise RecordingError(path, f"no {what} in this folder")
    return files


def _cut(path: Path, rows: int, snapshot_samples: int | None) -> tuple[int, int]:
    """(snapshot length, snapshots per record) for a record of `rows` samples."""
    length = snapshot_samples or rows
    if length > rows:
        raise RecordingError(path, f"--snapshot-samples {length} is longer than the record ({rows} samples)")
    return length, rows // length


def _open_ims(path: Path, channels: Sequence[str | int] | None, rate: int | None,
              snapshot_samples: int | None) -> Recording:
    files = [path] if path.is_file() else [f.path for f in ims.list_ims_files(path)]
    if not files:
        raise RecordingError(path, "no IMS files (names like 2003.10.22.12.06.24)")
    first = ims.read_counts(files[0], expected_rows=None)
    names = ims.channel_names(first.shape[1])
    columns = select_channels(names, channels, files[0])
    length, per_file = _cut(files[0], len(first), snapshot_samples)
    sample_rate = rate or ims.IMS_SAMPLE_RATE
    stamps = [ims.parse_timestamp(f) for f in files]
    zero_based = [c - 1 for c in columns]

    def read(index: int) -> RecordedSnapshot:
        number, part = divmod(index, per_file)
        counts = ims.read_counts(files[number], zero_based, expected_rows=len(first))
        return RecordedSnapshot(np.ascontiguousarray(counts[part * length:(part + 1) * length]), scale_for(0),
                                sample_rate, stamps[number] + _offset(part * length, sample_rate),
                                _where(files[number], part, length, per_file))

    times = tuple(stamp + _offset(part * length, sample_rate) for stamp in stamps for part in range(per_file))
    return Recording(path, "ims", tuple(names[c - 1] for c in columns), columns, scale_for(0), sample_rate, length,
                     times, read)


def _offset(samples: int, rate: int) -> timedelta:
    return timedelta(microseconds=samples * 1_000_000 // rate)


def _where(path: Path, part: int, length: int, per_file: int) -> str:
    return str(path) if per_file == 1 else f"{path} (samples {part * length}..{(part + 1) * length - 1})"


def _open_femto(path: Path, channels: Sequence[str | int] | None, rate: int | None,
                snapshot_samples: int | None) -> Recording:
    if path.is_file():
        files = [path]
    else:
        files = sorted((p for p in path.iterdir() if _FEMTO_NAME.fullmatch(p.name)),
                       key=lambda p: int(_FEMTO_NAME.fullmatch(p.name).group(1)))  # type: ignore[union-attr]
        if not files:
            raise RecordingError(path, "no FEMTO acceleration files (acc_NNNNN.csv) in this folder")
    first = _femto_table(files[0])
    n_acc = first.shape[1] - _FEMTO_TIME_COLUMNS
    names = list(FEMTO_CHANNELS) if n_acc == 2 else [f"acc{c}" for c in range(1, n_acc + 1)]
    columns = select_channels(names, channels, files[0])
    length, per_file = _cut(files[0], len(first), snapshot_samples)
    sample_rate = rate or FEMTO_SAMPLE_RATE
    times = _femto_times(files, first)
    picked = [_FEMTO_TIME_COLUMNS + c - 1 for c in columns]

    def table_of(number: int) -> np.ndarray:
        table = first if number == 0 else _femto_table(files[number], first.shape[1])
        if len(table) != len(first):
            raise RecordingError(files[number], f"expected {len(first)} rows (as in {files[0].name}), found {len(table)}")
        return table

    return _file_per_snapshots(path, "femto", files, table_of, tuple(names[c - 1] for c in columns), columns, picked,
                               sample_rate, length, per_file, times)


def _file_per_snapshots(path: Path, kind: str, files: list[Path], table_of: Callable[[int], np.ndarray],
                        names: tuple[str, ...], columns: tuple[int, ...], picked: list[int], rate: int, length: int,
                        per_file: int, stamps: list[datetime]) -> Recording:
    """A recording of files each holding `per_file` snapshots of `length` rows (FEMTO, CSV/NPY folders).

    The scale is chosen over every file first (one scale per recording); reading then parses each file once
    for all its snapshots, since snapshots are read in order.
    """
    k = scale_exponent(max(peak(table_of(n)[: per_file * length, picked]) for n in range(len(files))))
    parsed = functools.lru_cache(maxsize=1)(table_of)

    def read(index: int) -> RecordedSnapshot:
        number, part = divmod(index, per_file)
        counts, scale = quantize(parsed(number)[part * length:(part + 1) * length, picked], k)
        stamp = stamps[number] + _offset(part * length, rate)
        return RecordedSnapshot(counts, scale, rate, stamp, _where(files[number], part, length, per_file))

    times = tuple(t + _offset(part * length, rate) for t in stamps for part in range(per_file))
    return Recording(path, kind, names, columns, scale_for(k), rate, length, times, read)


def _femto_table(path: Path, columns: int | None = None) -> np.ndarray:
    table = read_table(path, delimiters=b",;", header_allowed=False, expected_columns=columns)
    if table.values.shape[1] <= _FEMTO_TIME_COLUMNS:
        raise RecordingError(path, f"expected hour, minute, second, microsecond and acceleration columns, "
                                   f"found {table.values.shape[1]} columns", 1)
    return table.values


def _femto_times(files: list[Path], first: np.ndarray) -> list[datetime]:
    """Capture time of each file from its first row's time of day; days advance when the clock wraps.

    Only each file's first line is read here (the files are read in full when their snapshot is).
    """
    times: list[datetime] = []
    day = FEMTO_DATE
    previous: timedelta | None = None
    for path in files:
        row = first[0] if path == files[0] else _femto_first_row(path)
        hour, minute, second, micro = row[:4]
        if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61 and 0 <= micro < 1e6):
            raise RecordingError(path, f"columns 1-4: expected a time of day (hour, minute, second, microsecond), "
                                       f"got {[float(v) for v in row[:4]]}", 1)
        of_day = timedelta(hours=int(hour), minutes=int(minute), seconds=int(second), microseconds=int(micro))
        if previous is not None and of_day < previous:
            day += timedelta(days=1)
        previous = of_day
        times.append(day + of_day)
    return times


def _femto_first_row(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        line = stream.readline().strip()
    separator = _delimiter(line, b",;") or ord(",")
    try:
        return np.array([float(cell) for cell in line.split(bytes([separator]))])
    except ValueError:
        read_table(path, delimiters=b",;", header_allowed=False)  # names the bad cell
        raise RecordingError(path, "cannot read the first row", 1) from None


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    try:
        from scipy import io as scipy_io  # optional: only .mat recordings need it
    except ImportError:
        raise RecordingError(path, "reading .mat files needs scipy: install the trainer extra "
                                   "(pip install 'condition-monitor[trainer]')") from None
    try:
        data = scipy_io.loadmat(str(path))
    except (ValueError, TypeError, OSError, NotImplementedError) as error:
        raise RecordingError(path, f"not a readable MATLAB file: {error}") from None
    records = {}
    for name, value in data.items():
        if name.startswith("__") or not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            continue
        if value.ndim == 2 and 1 in value.shape and value.size > 1:
            records[name] = value.ravel().astype(np.float64)
    if not records:
        raise RecordingError(path, "no channel variable: expected (n, 1) numeric arrays such as X097_DE_time")
    return records


def _mat_names(records: dict[str, np.ndarray]) -> dict[str, str]:
    """Channel name -> variable: CWRU variables by their suffix (X097_DE_time -> DE), others by their name."""
    cwru = {m.group(1): name for name in records if (m := _CWRU_VARIABLE.fullmatch(name))}
    return cwru if cwru else {name: name for name in records}


def _open_mat(path: Path, channels: Sequence[str | int] | None, rate: int | None,
              snapshot_samples: int | None) -> Recording:
    if rate is None:
        raise RecordingError(path, "--sample-rate is required for .mat recordings (a .mat file does not record it)")
    files = _snapshot_files(path, lambda p: p.suffix.lower() == ".mat", ".mat files")
    first = _load_mat(files[0])
    name_map = _mat_names(first)
    names = sorted(name_map)
    columns = select_channels(names, channels, files[0])
    selected = tuple(names[c - 1] for c in columns)
    plan: list[tuple[Path, int, int]] = []  # (file, start sample, length) of each snapshot
    length = 0
    largest = 0.0
    cache: dict[Path, np.ndarray] = {}
    for number, file in enumerate(files):
        records = first if number == 0 else _load_mat(file)
        mapping = _mat_names(records)
        missing = [n for n in selected if n not in mapping]
        if missing:
            raise RecordingError(file, f"no channel {missing[0]!r}: it has {', '.join(sorted(mapping))}")
        arrays = [records[mapping[n]] for n in selected]
        rows = min(len(a) for a in arrays)
        if any(len(a) != rows for a in arrays):
            sizes = {n: len(a) for n, a in zip(selected, arrays)}
            raise RecordingError(file, f"channels of different lengths {sizes}: expected one record per channel")
        length = length or (snapshot_samples or rows)
        if length > rows:
            raise RecordingError(file, f"--snapshot-samples {length} is longer than the record ({rows} samples)")
        if len(files) == 1:
            cache[file] = np.column_stack(arrays)
        usable = rows // length * length  # samples that make whole snapshots
        largest = max([largest] + [peak(a[:usable]) for a in arrays])
        plan += [(file, start, length) for start in range(0, rows - length + 1, length)]
    # No timestamps in a .mat file: snapshots follow each other from 1970, file after file in name order.
    times = [_EPOCH + _offset(i * length, rate) for i in range(len(plan))]
    k = scale_exponent(largest)

    def read(index: int) -> RecordedSnapshot:
        file, start, size = plan[index]
        if file not in cache:
            records = _load_mat(file)
            mapping = _mat_names(records)
            cache.clear()
            cache[file] = np.column_stack([records[mapping[n]] for n in selected])
        counts, scale = quantize(cache[file][start:start + size], k)
        return RecordedSnapshot(counts, scale, rate, times[index], f"{file} (samples {start}..{start + size - 1})")

    return Recording(path, "mat", selected, columns, scale_for(k), rate, length, tuple(times), read)


def _open_csv(path: Path, channels: Sequence[str | int] | None, rate: int | None,
              snapshot_samples: int | None) -> Recording:
    if rate is None:
        raise RecordingError(path, "--sample-rate is required for csv recordings (the files do not record it)")
    files = _snapshot_files(path, lambda p: p.suffix.lower() in _SNAPSHOT_SUFFIXES and not p.name.startswith("README"),
                            "snapshot files (.csv, .tsv, .txt, .npy)")
    values, header = _snapshot_values(files[0])
    names = list(header) if header else [f"ch{c}" for c in range(1, values.shape[1] + 1)]
    columns = select_channels(names, channels, files[0])
    length, per_file = _cut(files[0], len(values), snapshot_samples)
    picked = [c - 1 for c in columns]
    stamps = _csv_times(files, len(values), rate)

    def table_of(number: int) -> np.ndarray:
        table, _ = (values, header) if number == 0 else _snapshot_values(files[number])
        if table.shape != values.shape:
            raise RecordingError(files[number], f"expected {values.shape[0]} rows of {values.shape[1]} columns "
                                                f"(as {files[0].name}), found {table.shape[0]} of {table.shape[1]}")
        return table

    return _file_per_snapshots(path, "csv", files, table_of, tuple(names[c - 1] for c in columns), columns, picked,
                               rate, length, per_file, stamps)


def _snapshot_values(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if path.suffix.lower() == ".npy":
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
        return array, None
    table = read_table(path)
    return table.values, table.header


def _csv_times(files: list[Path], rows: int, rate: int) -> list[datetime]:
    """From the file names when they are IMS-style times, else one snapshot after the other from 1970."""
    try:
        return [ims.parse_timestamp(f.stem) for f in files]
    except ims.ImsFormatError:
        step = _offset(rows, rate)
        return [_EPOCH + i * step for i in range(len(files))]

