"""Recordings in: IMS, FEMTO/PRONOSTIA, MATLAB and generic snapshot folders become the same snapshots.

Every reader yields `RecordedSnapshot`s: int16 counts, the scale (g per count, by the scale rule of
`scale.py`), the sample rate and the capture time. The trainer computes features from them and the replay
harness sends them as frames, so both see the same counts and scale whatever the source format.

One module per format, as pyserial has one per URL scheme; `open_recording` picks the reader by `--format`,
or from the names when they say it unambiguously:
- ims (`ims.py`): a folder of IMS files (firmware_bridge.ims), 20 kHz.
- femto (`femto.py`): a FEMTO/PRONOSTIA run folder of acc_NNNNN.csv files, 25.6 kHz.
- mat (`matlab.py`): a MATLAB file (or a folder of them), one long record per channel, at a declared
  --sample-rate, cut into --snapshot-samples.
- csv (`folder.py`): a folder of CSV/TSV/NPY files (or one file), one snapshot each, at a declared
  --sample-rate.
How to read one (format, channels, sample rate, snapshot length) is a `RecordingSpec` (`spec.py`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from firmware_bridge import ims as ims_file
from firmware_bridge.recording import femto, folder, ims, matlab
from firmware_bridge.recording.femto import FEMTO_CHANNELS, FEMTO_DATE, FEMTO_SAMPLE_RATE
from firmware_bridge.recording.scale import BASE_SCALE, peak, quantize, scale_exponent, scale_for
from firmware_bridge.recording.snapshots import RecordedSnapshot, Recording
from firmware_bridge.recording.spec import (
    RecordingError,
    RecordingSpec,
    Selection,
    parse_channel_list,
    select_channels,
)
from firmware_bridge.recording.table import Table, read_table

__all__ = [
    "BASE_SCALE", "FEMTO_CHANNELS", "FEMTO_DATE", "FEMTO_SAMPLE_RATE", "FORMATS", "RecordedSnapshot", "Recording",
    "RecordingError", "RecordingSpec", "Selection", "Table", "detect_format", "open_recording", "parse_channel_list",
    "peak", "quantize", "read_table", "scale_exponent", "scale_for", "select_channels",
]

READERS: dict[str, Callable[[Path, RecordingSpec], Recording]] = {
    ims.FORMAT: ims.open_ims,
    femto.FORMAT: femto.open_femto,
    matlab.FORMAT: matlab.open_mat,
    folder.FORMAT: folder.open_folder,
}
FORMATS = tuple(READERS)  # ("ims", "femto", "mat", "csv"): --format's choices
_GIVE_FORMAT = f"give --format {'|'.join(FORMATS)}"


def open_recording(path: str | os.PathLike[str], spec: RecordingSpec = RecordingSpec()) -> Recording:
    """Open a file or folder as a Recording, read as `spec` says (by default: all of it, as its names say)."""
    path = Path(path)
    if not path.exists():
        raise RecordingError(path, "no such file or directory")
    kind = spec.format or detect_format(path)
    spec.check(path, FORMATS)
    return READERS[kind](path, spec)


def detect_format(path: Path) -> str:
    """The format of a file or folder when the names say it unambiguously; otherwise an error naming --format."""
    if path.is_file():
        return _file_format(path)
    if not path.is_dir():
        raise RecordingError(path, "no such file or directory")
    names = [p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    found = {reader.FORMAT for reader in (femto, matlab, ims) if any(reader.claims(n) for n in names)}
    if not found and any(folder.claims(n) for n in names):
        found.add(folder.FORMAT)  # the catch-all: only when no format with its own names is there
    if len(found) == 1:
        return found.pop()
    what = "several formats (" + ", ".join(sorted(found)) + ")" if found else "no known recording files"
    raise RecordingError(path, f"holds {what}: {_GIVE_FORMAT}")


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == matlab.SUFFIX:
        return matlab.FORMAT
    if suffix in folder.SUFFIXES:
        return folder.FORMAT
    try:
        ims_file.parse_timestamp(path.name)
    except ims_file.ImsFormatError:
        raise RecordingError(path, f"cannot tell the format from the name: {_GIVE_FORMAT}") from None
    return ims.FORMAT
