"""Delimited numeric text (FEMTO's CSV files, generic CSV/TSV snapshots), parsed vectorised; any bad cell
raises naming the file, line and column."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.recording.spec import RecordingError


@dataclass(frozen=True)
class Table:
    values: np.ndarray  # (rows, columns) float64, finite
    header: tuple[str, ...] | None
    first_line: int  # 1-based file line of values[0]


def delimiter(line: bytes, allowed: bytes) -> int | None:
    for byte in allowed:
        if byte in line:
            return byte
    return None


def read_table(path: Path, delimiters: bytes = b"\t;,", header_allowed: bool = True,
               expected_columns: int | None = None) -> Table:
    """A delimited numeric text file, parsed vectorised; any bad cell raises naming line and column."""
    data = _normalised(path)
    first, rest = data.split(b"\n", 1)
    separator = delimiter(first, delimiters)
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
        separator = delimiter(rest.split(b"\n", 1)[0], delimiters) or delimiters[-1]
    rows, columns = _shape(path, data, separator, line_offset, expected_columns)
    values = _parse(path, data, separator, line_offset, header, rows * columns).reshape(rows, columns)
    bad = np.flatnonzero(~np.isfinite(values).ravel())
    if bad.size:
        row, column = divmod(int(bad[0]), columns)
        raise RecordingError(path, f"{_column_name(column, header)}: {float(values[row, column])!r} is not a finite number",
                             row + line_offset)
    return Table(values, header, line_offset)


def _normalised(path: Path) -> bytes:
    """The file's bytes with \\n line ends and exactly one final newline; an empty file raises."""
    data = path.read_bytes()
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.strip(b"\n") + b"\n"
    if data == b"\n":
        raise RecordingError(path, "the file is empty: expected rows of numbers")
    return data


def _shape(path: Path, data: bytes, separator: int, line_offset: int, expected_columns: int | None) -> tuple[int, int]:
    """(rows, columns), with every line holding as many cells as the first."""
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
    return len(ends), columns


def _parse(path: Path, data: bytes, separator: int, line_offset: int, header: Sequence[str] | None,
           count: int) -> np.ndarray:
    values: np.ndarray | None
    try:
        values = np.fromstring(data.replace(bytes([separator]), b" "), sep=" ")  # type: ignore[call-overload]
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != count:
        _diagnose(path, data, separator, line_offset, header)
        raise RecordingError(path, f"expected {count} numbers, could not parse the file")
    return values


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
