"""ims: a folder of IMS files (or one file), 20 kHz; the file format is firmware_bridge.ims."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from firmware_bridge import ims
from firmware_bridge.recording.scale import scale_for
from firmware_bridge.recording.snapshots import RecordedSnapshot, Recording, SnapshotFiles, cut, offset
from firmware_bridge.recording.spec import RecordingError, RecordingSpec, select_channels

FORMAT = "ims"


def claims(name: str) -> bool:
    """Whether a file name is an IMS file's (its capture time)."""
    return ims._NAME.fullmatch(name) is not None


def open_ims(path: Path, spec: RecordingSpec) -> Recording:
    """IMS values have three decimals: read as counts of 0.001 g, exact, without a pass for the scale."""
    files = [path] if path.is_file() else [f.path for f in ims.list_ims_files(path)]
    if not files:
        raise RecordingError(path, "no IMS files (names like 2003.10.22.12.06.24)")
    first = ims.read_counts(files[0], expected_rows=None)
    selection = select_channels(ims.channel_names(first.shape[1]), spec.channels, files[0])
    length, per_file = cut(files[0], len(first), spec.snapshot_samples)
    layout = SnapshotFiles(files, [ims.parse_timestamp(f) for f in files], spec.sample_rate_hz or ims.IMS_SAMPLE_RATE,
                           length, per_file)
    zero_based = selection.offset(0)

    def read(index: int) -> RecordedSnapshot:
        number, start = layout.locate(index)
        counts = ims.read_counts(files[number], zero_based, expected_rows=len(first))
        return RecordedSnapshot(np.ascontiguousarray(counts[start:start + length]), scale_for(0), layout.rate,
                                layout.stamps[number] + offset(start, layout.rate), layout.where(number, start))

    return Recording(path, FORMAT, selection.names, selection.columns, scale_for(0), layout.rate, length,
                     layout.times(), read)
