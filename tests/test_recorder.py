"""The recorder keeps snapshots as IMS files that the trainer reads back exactly, within a disk quota."""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from edge.config import RecorderConfig
from edge.ingest.snapshot import Snapshot
from edge.recorder import Recorder
from firmware_bridge.ims import list_ims_files, read_counts

T0 = 1_076_582_000_000_000  # 2004-02-12 10:33:20 UTC, in µs
MINUTE = 60_000_000


def snapshot(index: int, capture_time_us: int, scale: float = 0.001) -> Snapshot:
    counts = np.random.default_rng(index).integers(-900, 900, size=(2048, 4), dtype=np.int16)
    return Snapshot(index, index * 2048, capture_time_us, 20_000, scale, counts)


def test_recorded_files_read_back_exactly_and_keep_the_capture_time(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=600))
    kept = [snapshot(i, T0 + i * 10 * MINUTE) for i in range(3)]
    for snap in kept:
        recorder.save(snap)
    files = list_ims_files(tmp_path)
    assert [int(f.timestamp.timestamp() * 1e6) for f in files] == [s.capture_time_us for s in kept]
    for ims, snap in zip(files, kept):
        np.testing.assert_array_equal(read_counts(ims.path, expected_rows=None), snap.counts)


def test_only_one_snapshot_per_interval_is_kept(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=600))
    for i in range(30):  # one snapshot a minute for half an hour
        recorder.save(snapshot(i, T0 + i * MINUTE))
    assert len(list_ims_files(tmp_path)) == 3


def test_the_oldest_recordings_go_when_the_quota_is_reached(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=0.5, interval_s=1))
    for i in range(20):
        recorder.save(snapshot(i, T0 + i * 10 * MINUTE))
    files = list_ims_files(tmp_path)
    assert sum(f.path.stat().st_size for f in files) <= 0.5 * 1024 * 1024
    assert files[-1].timestamp.timestamp() * 1e6 == T0 + 19 * 10 * MINUTE  # the newest survive
    # A restarted agent counts what is already on disk against the quota.
    again = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=0.25, interval_s=1))
    again.save(snapshot(20, T0 + 20 * 10 * MINUTE))
    assert sum(f.path.stat().st_size for f in list_ims_files(tmp_path)) <= 0.25 * 1024 * 1024


def test_other_scales_are_stored_in_thousandths_of_a_g(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=600))
    snap = snapshot(0, T0, scale=0.002)
    recorder.save(snap)
    (ims,) = list_ims_files(tmp_path)
    np.testing.assert_array_equal(read_counts(ims.path, expected_rows=None), snap.counts.astype(np.int32) * 2)


def test_recordings_are_readable_by_the_group_only(tmp_path: Path) -> None:
    recorder = Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=600))
    recorder.save(snapshot(0, T0))
    (ims,) = list_ims_files(tmp_path)
    assert stat.S_IMODE(ims.path.stat().st_mode) == 0o640


def test_a_repeated_capture_time_never_overwrites_a_recording(tmp_path: Path) -> None:
    # A sensor that restarted (or a restarted agent) can date a snapshot to a second already on disk.
    first = snapshot(0, T0)
    Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=0)).save(first)
    again = snapshot(1, T0 + 300_000)  # same second of the IMS name
    Recorder(RecorderConfig(enabled=True, directory=tmp_path, quota_mb=100, interval_s=0)).save(again)
    files = list_ims_files(tmp_path)
    assert len(files) == 2
    np.testing.assert_array_equal(read_counts(files[0].path, expected_rows=None), first.counts)
    np.testing.assert_array_equal(read_counts(files[1].path, expected_rows=None), again.counts)
    assert files[1].timestamp.timestamp() * 1e6 == T0 + 1_000_000  # moved on by one second


def test_a_recorder_directory_that_is_a_file_costs_recordings_not_the_agent(tmp_path: Path) -> None:
    from edge.mqtt.health import Health

    blocker = tmp_path / "recordings"
    blocker.write_text("not a directory\n")
    health = Health("pump-7")
    recorder = Recorder(RecorderConfig(enabled=True, directory=blocker, quota_mb=100, interval_s=0), health)
    recorder.save(snapshot(0, T0))  # reported, not raised
    assert "cannot" in health.faults()["storage"].message and str(blocker) in health.faults()["storage"].message
    assert blocker.read_text() == "not a directory\n"
