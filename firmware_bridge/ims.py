"""The IMS bearing file format: one ASCII snapshot per file, tab-separated g values, named by capture time.

Values carry exactly three decimals, so they are held as int16 counts of 0.001 g without loss. Parsing
is vectorised: a strict fast path reads "%.3f" cells as integers straight from the bytes (exact, no
float rounding); anything else (exponents, spaces, other decimals) goes through numpy's text parser;
and when either finds a problem, a slow line-by-line pass names the exact line and cell.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

IMS_SCALE = 0.001  # g per count: IMS values have exactly three decimals
IMS_SAMPLE_RATE = 20000
IMS_SNAPSHOT_SAMPLES = 20480

NAME_EXAMPLE = "2003.10.22.12.06.24"
_NAME = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})")
_NUMBER = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IGNORED_SUFFIXES = (".md", ".txt")
_INT16 = np.iinfo(np.int16)
# The longest cell the writer produces is "-32.768"; one more byte holds its separator.
_MAX_CELL = 7

_TAB, _NL, _MINUS, _DOT = 9, 10, 45, 46


class ImsFormatError(ValueError):
    """A malformed IMS file or name (and, as recording.RecordingError, a malformed file of any format); the
    message starts with "<path>:<line>: " (line when known)."""

    def __init__(self, path: str | os.PathLike[str], message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True)
class ImsFile:
    path: Path
    timestamp: datetime  # tz-aware UTC, from the file name


def parse_timestamp(name: str | os.PathLike[str]) -> datetime:
    """Capture time (UTC) from a file name YYYY.MM.DD.hh.mm.ss; a path is accepted too."""
    base = Path(name).name
    match = _NAME.fullmatch(base)
    expected = f"expected a name like {NAME_EXAMPLE} (YYYY.MM.DD.hh.mm.ss)"
    if match is None:
        raise ImsFormatError(name, expected)
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as error:
        raise ImsFormatError(name, f"{expected}: {error}") from None


def format_timestamp(timestamp: datetime) -> str:
    """The IMS file name for a capture time; a naive datetime is taken as UTC (IMS names carry no zone)."""
    if timestamp.tzinfo is not None:
        timestamp = timestamp.astimezone(UTC)
    return timestamp.strftime("%Y.%m.%d.%H.%M.%S")


def _is_ignored(path: Path) -> bool:
    name = path.name
    return (
        name.startswith(".")
        or name.startswith("README")
        or name == "SHA256SUMS"
        or name.lower().endswith(_IGNORED_SUFFIXES)
        or not path.is_file()
    )


def list_ims_files(directory: str | os.PathLike[str]) -> list[ImsFile]:
    """The snapshot files of a directory in time order; documentation files are skipped, other names raise."""
    root = Path(directory)
    if not root.is_dir():
        raise ImsFormatError(root, "expected a directory of IMS files")
    files = [ImsFile(p, parse_timestamp(p)) for p in root.iterdir() if not _is_ignored(p)]
    return sorted(files, key=lambda f: f.timestamp)


def parse_channels(text: str) -> tuple[int, ...]:
    """`--channels 1,3,5,7`: distinct 1-based column numbers, as the IMS README numbers the channels."""
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise ValueError(f"expected distinct 1-based column numbers like 1,3,5,7, got {text!r}")
    return numbers


def channel_names(n_columns: int) -> list[str]:
    """Column names as the IMS README numbers them: set 1 has x and y per bearing, sets 2 and 3 one each."""
    if n_columns == 8:
        return [f"bearing{b}_{axis}" for b in range(1, 5) for axis in ("x", "y")]
    if n_columns == 4:
        return [f"bearing{b}" for b in range(1, 5)]
    return [f"ch{c}" for c in range(1, n_columns + 1)]


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where a file's lines and cells are: row r spans data[starts[r]:ends[r]]; cells end at a tab or newline."""

    data: bytes
    raw: np.ndarray  # the same bytes as uint8
    cell_ends: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    columns: int

    def line(self, row: int) -> bytes:
        return self.data[self.starts[row] : self.ends[row]]


def _load(path: Path) -> bytes:
    data = path.read_bytes()
    if b"\r" in data:  # files copied through Windows tools
        data = data.replace(b"\r\n", b"\n")
    # A missing final newline or trailing blank lines are harmless; normalise to exactly one "\n".
    data = data.rstrip(b"\n") + b"\n"
    if data == b"\n":
        raise ImsFormatError(path, "the file is empty: expected rows of tab-separated values")
    return data


def _layout(path: Path, data: bytes) -> _Layout:
    """Check every line has as many tab-separated columns as line 1 (vectorised: cells between newlines)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    cell_ends = np.flatnonzero((raw == _TAB) | (raw == _NL))
    line_cells = np.flatnonzero(raw[cell_ends] == _NL)  # index, among cell ends, of each line's last cell
    ends = cell_ends[line_cells]
    starts = np.concatenate(([0], ends[:-1] + 1))
    empty = np.flatnonzero(ends == starts)
    if empty.size:
        raise ImsFormatError(path, "empty line: expected tab-separated values", int(empty[0]) + 1)
    cells = np.diff(line_cells, prepend=-1)
    columns = int(cells[0])
    wrong = np.flatnonzero(cells != columns)
    if wrong.size:
        row = int(wrong[0])
        raise ImsFormatError(path, f"expected {columns} columns (as on line 1), found {cells[row]}", row + 1)
    return _Layout(data, raw, cell_ends, starts, ends, columns)


def _strict_counts(layout: _Layout) -> np.ndarray | None:
    """Counts straight from "%.3f" text (the IMS writer's format), or None if any cell is not of that shape.

    A cell is [-]d[d[d]].ddd: its digits without the dot are the count, so no float is involved at all.
    Only separators, digits, one leading minus and one dot 4 bytes before the cell's end are allowed,
    so every other byte of a cell is a digit and can be gathered by position.
    """
    raw, cell_ends = layout.raw, layout.cell_ends
    # Bytes 45..57 are "-", ".", "/" and the digits; with the separators they must be the whole file.
    text_bytes = np.count_nonzero((raw - np.uint8(_MINUS)) <= np.uint8(57 - _MINUS))
    if text_bytes + cell_ends.size != raw.size or np.count_nonzero(raw == ord("/")):
        return None
    dots = cell_ends - 4
    if dots.min() < 0 or not (raw[dots] == _DOT).all() or np.count_nonzero(raw == _DOT) != dots.size:
        return None
    cell_starts = np.concatenate(([0], cell_ends[:-1] + 1))
    negative = raw[cell_starts] == _MINUS
    if np.count_nonzero(raw == _MINUS) != np.count_nonzero(negative):
        return None  # a minus somewhere other than a cell's first byte
    int_digits = dots - cell_starts - negative
    if (int_digits < 1).any() or (int_digits > 3).any():
        return None

    def digit(at: np.ndarray) -> np.ndarray:
        return raw[at].astype(np.int32) - 48

    counts = 1000 * digit(dots - 1) + 100 * digit(dots + 1) + 10 * digit(dots + 2) + digit(dots + 3)
    for place in (2, 3):  # tens and hundreds of g: rare, and beyond int16 when present at all
        has = int_digits >= place
        if has.any():
            counts[has] += 10 ** (place + 2) * digit(dots[has] - place)
    return np.where(negative, -counts, counts)


def _general_counts(path: Path, layout: _Layout) -> np.ndarray:
    """Counts from any numeric text numpy can parse; problems are pinned to a line by the slow pass."""
    try:
        values = np.fromstring(layout.data, sep=" ")  # whitespace-separated: tabs and newlines alike
    except ValueError:
        values = None
    n_cells = len(layout.ends) * layout.columns
    if values is None or values.size != n_cells:
        _diagnose(path, layout)
        raise ImsFormatError(path, f"expected {n_cells} numeric values, could not parse the file")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        _raise_cell(path, layout, int(bad[0]), "is not a finite number")
    scaled = values * 1000.0
    counts = np.rint(scaled)
    # Float parsing leaves ~1e-12 of error on a three-decimal value; anything beyond 1e-6 is a real fourth decimal.
    bad = np.flatnonzero(np.abs(scaled - counts) > 1e-6)
    if bad.size:
        _raise_cell(path, layout, int(bad[0]), "has more than three decimals: not a whole number of 0.001 g")
    return counts.astype(np.int64)


def _raise_cell(path: Path, layout: _Layout, index: int, problem: str) -> None:
    row, column = divmod(index, layout.columns)
    cell = layout.line(row).split(b"\t")[column].decode("ascii", "replace").strip()
    name = channel_names(layout.columns)[column]
    raise ImsFormatError(path, f"column {column + 1} ({name}): value {cell!r} {problem}", row + 1)


def _diagnose(path: Path, layout: _Layout) -> None:
    """Slow pass over the lines to name the first cell the fast paths could not read."""
    names = channel_names(layout.columns)
    for row in range(len(layout.ends)):
        for column, cell in enumerate(layout.line(row).split(b"\t")):
            if _NUMBER.fullmatch(cell.strip()) is None:
                text = cell.decode("ascii", "replace")
                raise ImsFormatError(
                    path, f"column {column + 1} ({names[column]}): {text!r} is not a number", row + 1
                )


def _check_range(path: Path, layout: _Layout, counts: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero((counts < _INT16.min) | (counts > _INT16.max))
    if bad.size:
        _raise_cell(path, layout, int(bad[0]), "is outside the int16 range of counts (-32.768 to 32.767 g)")
    return counts.astype(np.int16)


def _select(path: Path, counts: np.ndarray, columns: Sequence[int] | None) -> np.ndarray:
    if columns is None:
        return counts
    width = counts.shape[1]
    chosen = [int(c) for c in columns]
    outside = [c for c in chosen if not 0 <= c < width]
    if outside or not chosen:
        raise ImsFormatError(
            path, f"columns {chosen} (0-based) do not select from the file's {width} columns (0..{width - 1})"
        )
    return np.ascontiguousarray(counts[:, chosen])


def read_counts(
    path: str | os.PathLike[str],
    columns: Sequence[int] | None = None,
    expected_rows: int | None = IMS_SNAPSHOT_SAMPLES,
) -> np.ndarray:
    """(rows, n_selected) int16 counts of 0.001 g, exact; `columns` are 0-based."""
    path = Path(path)
    data = _load(path)
    layout = _layout(path, data)
    rows = len(layout.ends)
    if expected_rows is not None and rows != expected_rows:
        raise ImsFormatError(path, f"expected {expected_rows} rows, found {rows}")
    counts = _strict_counts(layout)
    if counts is None:
        counts = _general_counts(path, layout)
    counts = _check_range(path, layout, counts).reshape(rows, layout.columns)
    return _select(path, counts, columns)


def read_values(
    path: str | os.PathLike[str],
    columns: Sequence[int] | None = None,
    expected_rows: int | None = IMS_SNAPSHOT_SAMPLES,
) -> np.ndarray:
    """(rows, n_selected) float64 values in g (= counts * 0.001)."""
    return read_counts(path, columns, expected_rows).astype(np.float64) * IMS_SCALE


# --- writing -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _cell_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text of every int16 count as "%.3f" plus a separator byte slot, padded to 8 bytes, and its length."""
    values = np.arange(_INT16.min, _INT16.max + 1)
    texts = [f"{'-' if v < 0 else ''}{abs(v) // 1000}.{abs(v) % 1000:03d}".encode() for v in values.tolist()]
    table = np.zeros((len(texts), _MAX_CELL + 1), dtype=np.uint8)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    for i, text in enumerate(texts):  # once per process, 65,536 entries: not on the data path
        table[i, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    with_tab, with_nl = table.copy(), table.copy()
    with_tab[np.arange(len(texts)), lengths] = _TAB
    with_nl[np.arange(len(texts)), lengths] = _NL
    return with_tab, with_nl, lengths + 1


def format_counts(counts: np.ndarray) -> bytes:
    """IMS text for (rows, columns) int16 counts: "%.3f" cells, tab-separated, newline-terminated rows."""
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"expected a non-empty (rows, columns) array of counts, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"expected integer counts of 0.001 g, got dtype {counts.dtype}")
    if counts.size and (counts.min() < _INT16.min or counts.max() > _INT16.max):
        raise ValueError("counts outside the int16 range (-32768..32767) cannot be written")
    with_tab, with_nl, lengths = _cell_table()
    index = counts.astype(np.int64) - _INT16.min
    cells = with_tab[index]  # (rows, columns, 8)
    cells[:, -1] = with_nl[index[:, -1]]
    width = lengths[index]
    keep = np.arange(cells.shape[-1]) < width[..., None]
    return cells[keep].tobytes()


def write_ims_file(directory: str | os.PathLike[str], timestamp: datetime, counts: np.ndarray) -> Path:
    """Write one snapshot as an IMS file named by its capture time; returns its path.

    The text goes to a hidden temporary file that is renamed into place, so a reader polling the
    directory sees either no file or the whole file (list_ims_files skips dotfiles).
    """
    root = Path(directory)
    target = root / format_timestamp(timestamp)
    text = format_counts(np.asarray(counts))
    handle, temporary = tempfile.mkstemp(dir=root, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would surprise a reader running as another user
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
