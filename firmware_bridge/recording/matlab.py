"""mat: a MATLAB file (or a folder of them) holding one long record per channel variable, at a declared
--sample-rate, cut into --snapshot-samples. CWRU names (X097_DE_time) are selected by their suffix (DE).

Needs scipy (the `trainer` extra), imported only when a .mat file is read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.recording.scale import peak, quantize, scale_exponent, scale_for
from firmware_bridge.recording.snapshots import EPOCH, RecordedSnapshot, Recording, offset, snapshot_files
from firmware_bridge.recording.spec import RecordingError, RecordingSpec, select_channels

FORMAT = "mat"
SUFFIX = ".mat"
_CWRU_VARIABLE = re.compile(r"X\d+_([A-Za-z]+)_time")


def claims(name: str) -> bool:
    return name.lower().endswith(SUFFIX)


@dataclass(frozen=True)
class _Plan:
    """Where each snapshot is, (file, start sample), and the largest magnitude the snapshots hold."""

    snapshots: list[tuple[Path, int]]
    length: int
    largest: float


def open_mat(path: Path, spec: RecordingSpec) -> Recording:
    rate = spec.sample_rate_hz
    if rate is None:
        raise RecordingError(path, "--sample-rate is required for .mat recordings (a .mat file does not record it)")
    files = snapshot_files(path, lambda p: claims(p.name), ".mat files")
    first = _load(files[0])
    selection = select_channels(sorted(_names(first)), spec.channels, files[0])
    plan = _plan(files, first, selection.names, spec.snapshot_samples)
    # No timestamps in a .mat file: snapshots follow each other from 1970, file after file in name order.
    times = tuple(EPOCH + offset(i * plan.length, rate) for i in range(len(plan.snapshots)))
    k = scale_exponent(plan.largest)
    cache: dict[Path, np.ndarray] = {files[0]: _stack(first, selection.names)} if len(files) == 1 else {}

    def read(index: int) -> RecordedSnapshot:
        file, start = plan.snapshots[index]
        if file not in cache:
            cache.clear()  # one file's records in memory at a time: snapshots are read in order
            cache[file] = _stack(_load(file), selection.names)
        counts, scale = quantize(cache[file][start:start + plan.length], k)
        return RecordedSnapshot(counts, scale, rate, times[index],
                                f"{file} (samples {start}..{start + plan.length - 1})")

    return Recording(path, FORMAT, selection.names, selection.columns, scale_for(k), rate, plan.length, times, read)


def _plan(files: list[Path], first: dict[str, np.ndarray], selected: tuple[str, ...],
          snapshot_samples: int | None) -> _Plan:
    """Each file's records cut into snapshots (all of the first file's length), and their largest magnitude."""
    snapshots: list[tuple[Path, int]] = []
    length = 0
    largest = 0.0
    for number, file in enumerate(files):
        arrays = _selected(file, first if number == 0 else _load(file), selected)
        rows = len(arrays[0])
        length = length or (snapshot_samples or rows)
        if length > rows:
            raise RecordingError(file, f"--snapshot-samples {length} is longer than the record ({rows} samples)")
        usable = rows // length * length  # samples that make whole snapshots
        largest = max([largest] + [peak(a[:usable]) for a in arrays])
        snapshots += [(file, start) for start in range(0, rows - length + 1, length)]
    return _Plan(snapshots, length, largest)


def _selected(file: Path, records: dict[str, np.ndarray], selected: tuple[str, ...]) -> list[np.ndarray]:
    """The selected channels' records of one file, checked to exist and to be of one length."""
    mapping = _names(records)
    missing = [n for n in selected if n not in mapping]
    if missing:
        raise RecordingError(file, f"no channel {missing[0]!r}: it has {', '.join(sorted(mapping))}")
    arrays = [records[mapping[n]] for n in selected]
    if any(len(a) != len(arrays[0]) for a in arrays):
        sizes = {n: len(a) for n, a in zip(selected, arrays)}
        raise RecordingError(file, f"channels of different lengths {sizes}: expected one record per channel")
    return arrays


def _stack(records: dict[str, np.ndarray], selected: tuple[str, ...]) -> np.ndarray:
    mapping = _names(records)
    return np.column_stack([records[mapping[n]] for n in selected])


def _load(path: Path) -> dict[str, np.ndarray]:
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


def _names(records: dict[str, np.ndarray]) -> dict[str, str]:
    """Channel name -> variable: CWRU variables by their suffix (X097_DE_time -> DE), others by their name."""
    cwru = {m.group(1): name for name in records if (m := _CWRU_VARIABLE.fullmatch(name))}
    return cwru if cwru else {name: name for name in records}
