"""Recordings in: FEMTO, MATLAB and generic snapshot folders read into the same int16 snapshots as IMS,
with the documented scale rule, and bad files named by file, line and column."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.recording import (
    RecordingError,
    RecordingSpec,
    detect_format,
    open_recording,
    quantize,
    scale_exponent,
)
from trainer.dataset import DatasetError, DatasetSpec, load_dataset


def write_femto(directory: Path, snapshots: list[np.ndarray], start_s: float = 8 * 3600, delimiter: str = ",",
                step_s: float = 10.0) -> Path:
    """FEMTO layout: acc_NNNNN.csv with hour, minute, second, microsecond, then the g values (3 decimals)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, values in enumerate(snapshots, start=1):
        at = start_s + (number - 1) * step_s
        hour, rest = divmod(at % 86400, 3600)
        minute, second = divmod(rest, 60)
        lines = [delimiter.join([f"{int(hour)}", f"{int(minute)}", f"{int(second)}", f"{1.9691e5 + 39 * i:.4e}",
                                 *(f"{v:.3f}" for v in row)]) for i, row in enumerate(values)]
        (directory / f"acc_{number:05d}.csv").write_text("\n".join(lines) + "\n")
    (directory / "temp_00001.csv").write_text("08;48;05;7;57.181\n")
    return directory


def three_decimals(rng: np.random.Generator, rows: int, channels: int, amplitude: float = 1.0) -> np.ndarray:
    return np.round(rng.normal(0, amplitude, (rows, channels)), 3)


# --- the scale rule ----------------------------------------------------------------------------------


def test_values_that_fit_stay_at_a_milli_g_per_count_exactly() -> None:
    values = np.array([[0.001, -32.767], [1.234, 0.0]])
    counts, scale = quantize(values)
    assert scale == float(np.float32(0.001)) and counts.dtype == np.int16
    assert counts.tolist() == [[1, -32767], [1234, 0]]


def test_values_beyond_int16_take_the_smallest_power_of_two_scale_that_holds_them() -> None:
    assert [scale_exponent(g) for g in (32.767, 32.768, 41.3, 65.534, 65.536, 200.0)] == [0, 1, 1, 1, 2, 3]
    values = np.array([[41.3], [-0.003], [20.001]])
    counts, scale = quantize(values)
    assert scale == float(np.float32(0.002))
    assert counts[:, 0].tolist() == [20650, -2, 10000]  # round(value / 0.002 g), halves to even
    assert np.abs(counts * 0.002 - values).max() <= 0.001 + 1e-12  # half a count at most


# --- FEMTO -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_femto_folder_reads_in_number_order_with_time_of_day(tmp_path: Path, delimiter: str) -> None:
    rng = np.random.default_rng(1)
    snapshots = [three_decimals(rng, 256, 2) for _ in range(11)]
    snapshots[-1][5, 1] = -41.3  # the end of a run: beyond +-32.767 g
    run = write_femto(tmp_path / "run", snapshots, start_s=86400 - 50, delimiter=delimiter)  # passes midnight
    assert detect_format(run) == "femto"
    recording = open_recording(run)
    assert recording.channels == ("horizontal", "vertical") and recording.sample_rate_hz == 25600
    assert len(recording) == 11 and recording.snapshot_samples == 256
    read = list(recording.snapshots())
    # One scale for the whole recording: its last snapshot exceeds 32.767 g, so 0.002 g per count throughout.
    assert recording.scale == float(np.float32(0.002)) and {s.scale for s in read} == {recording.scale}
    for expected, snapshot in zip(snapshots, read):  # acc_00010 after acc_00009, temp_ ignored
        np.testing.assert_array_equal(snapshot.counts, np.rint(expected * 500))
    assert read[-1].counts[5, 1] == -20650
    fitting = open_recording(run, RecordingSpec(channels=["horizontal"]))
    assert fitting.scale == float(np.float32(0.001))  # the channel that fits stays exact
    np.testing.assert_array_equal(fitting.snapshot(3).counts[:, 0], np.rint(snapshots[3][:, 0] * 1000))
    stamps = [t.timestamp() for t in recording.times]
    assert np.allclose(np.diff(stamps), 10.0)  # midnight: the next day, not 24 h back
    assert recording.times[0].hour == 23 and recording.times[-1].day == recording.times[0].day + 1


def test_femto_channel_selection_by_name_or_number(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    snapshots = [three_decimals(rng, 64, 2) for _ in range(2)]
    run = write_femto(tmp_path / "run", snapshots)
    for selection in (["vertical"], ["2"], [2], ["Vertical"]):
        recording = open_recording(run, RecordingSpec(channels=selection))
        assert recording.channels == ("vertical",) and recording.columns == (2,)
        np.testing.assert_array_equal(recording.snapshot(1).counts[:, 0], np.rint(snapshots[1][:, 1] * 1000))
    with pytest.raises(RecordingError, match="no channel named 'axial'; channels are horizontal, vertical"):
        open_recording(run, RecordingSpec(channels=["axial"]))


def test_real_femto_run_reads_and_its_end_exceeds_int16_at_a_milli_g(femto_dir: Path) -> None:
    recording = open_recording(femto_dir / "Bearing1_2")
    assert len(recording) == 871 and recording.snapshot_samples == 2560
    assert recording.channels == ("horizontal", "vertical")
    first_line = (femto_dir / "Bearing1_2" / "acc_00001.csv").read_text().split("\n", 1)[0].split(",")
    first = recording.snapshot(0)
    # The run reaches 41.3 g: 0.002 g per count for the whole run, counts rounded half to even.
    assert first.counts[0].tolist() == np.rint([float(first_line[4]) * 500, float(first_line[5]) * 500]).tolist()
    assert recording.scale == float(np.float32(0.002))
    end = max(int(np.abs(recording.snapshot(i).counts).max()) for i in range(850, 871))
    assert 32.767 < end * recording.scale <= 65.534
    assert recording.times[0].strftime("%H:%M:%S") == "08:47:05"
    assert (recording.times[-1] - recording.times[0]).total_seconds() == pytest.approx(870 * 10, abs=1)


def restamp(path: Path, hours: int) -> None:
    """Move every row of a FEMTO file `hours` along the clock (its hour column), as a glitching clock would."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("".join(",".join([str((int(r[0]) + hours) % 24), *r[1:]]) + "\n" for r in rows))


def test_a_real_run_with_one_stamp_six_hours_early_stays_on_its_day(
        femto_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A copy of the start of a real run with one file stamped six hours before its neighbours (as in a real
    FEMTO run): not a midnight crossing. Every other snapshot keeps its own stamp and day; the doubted one is
    dated between its neighbours and named."""
    run = tmp_path / "Bearing3_1"
    run.mkdir()
    for number in range(1, 13):
        name = f"acc_{number:05d}.csv"
        (run / name).write_bytes((femto_dir / "Bearing3_1" / name).read_bytes())
    honest = open_recording(run).times
    restamp(run / "acc_00006.csv", -6)
    with caplog.at_level("WARNING"):
        recording = open_recording(run)
    assert recording.times[:5] == honest[:5] and recording.times[6:] == honest[6:]  # no day lost or gained
    assert honest[4] < recording.times[5] < honest[6]
    assert abs((recording.times[5] - honest[5]).total_seconds()) < 1
    assert len(recording.doubted) == 1 and "acc_00006.csv: stamped 03:11:29" in recording.doubted[0]
    assert "acc_00006.csv (stamped 03:11:29)" in caplog.text
    assert open_recording(run).snapshot(5).time == recording.times[5]


@pytest.mark.parametrize("bad", [0, 4, 9])  # the first, one inside, the last
def test_a_bad_stamp_across_midnight_is_doubted_and_midnight_still_moves_to_the_next_day(tmp_path: Path, bad: int) -> None:
    rng = np.random.default_rng(3)
    run = write_femto(tmp_path / "run", [three_decimals(rng, 32, 2) for _ in range(10)], start_s=86400 - 40)
    honest = open_recording(run).times
    assert honest[-1].day == honest[0].day + 1 and open_recording(run).doubted == ()
    for hours in (-6, 5):
        restamp(run / f"acc_{bad + 1:05d}.csv", hours)
        recording = open_recording(run)
        assert [t for i, t in enumerate(recording.times) if i != bad] == [t for i, t in enumerate(honest) if i != bad]
        assert recording.times[bad] == honest[bad] and len(recording.doubted) == 1  # the cadence is exact here
        assert f"acc_{bad + 1:05d}.csv" in recording.doubted[0]
        restamp(run / f"acc_{bad + 1:05d}.csv", -hours)


@pytest.mark.slow
def test_cm_train_fit_and_evaluate_name_the_doubted_stamp(femto_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainer.cli import main

    run = tmp_path / "run"
    run.mkdir()
    for number in range(1, 61):
        name = f"acc_{number:05d}.csv"
        (run / name).write_bytes((femto_dir / "Bearing3_1" / name).read_bytes())
    restamp(run / "acc_00040.csv", -6)
    bundle, report = tmp_path / "bundle", tmp_path / "report"
    assert main(["fit", str(run), "--out", str(bundle), "--epochs", "2", "--quiet"]) == 0
    assert "warning: doubted time stamp: " in capsys.readouterr().err
    warnings = json.loads((bundle / "model_card.json").read_text())["provenance"]["training_warnings"]
    assert [w for w in warnings if "acc_00040.csv: stamped 03:17:09" in w]
    assert main(["evaluate", str(bundle), str(run), "--out", str(report)]) == 0
    assert "acc_00040.csv" in capsys.readouterr().err
    doubted = json.loads((report / "report.json").read_text())["doubted_time_stamps"]
    assert len(doubted) == 1 and "acc_00040.csv" in doubted[0]


def test_a_pause_in_the_recording_is_a_gap_not_a_bad_stamp(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    first = write_femto(tmp_path / "a", [three_decimals(rng, 32, 2) for _ in range(6)], start_s=8 * 3600)
    write_femto(tmp_path / "b", [three_decimals(rng, 32, 2) for _ in range(6)], start_s=11 * 3600)
    for number in range(1, 7):  # three hours later, the run goes on
        (tmp_path / "b" / f"acc_{number:05d}.csv").rename(first / f"acc_{number + 6:05d}.csv")
    recording = open_recording(first)
    assert recording.doubted == ()
    assert (recording.times[6] - recording.times[5]).total_seconds() == 3 * 3600 - 50


@pytest.mark.parametrize("text,message", [
    ("8,47,5,1.9e5,0.1,0.2\n8,47,5,1.9e5,0.1\n", r"acc_00001.csv:2: expected 6 columns \(as on line 1\), found 5"),
    ("8,47,5,1.9e5,0.1,0.2\n8,47,5,1.9e5,0.1,abc\n", r"acc_00001.csv:2: column 6: 'abc' is not a number"),
    ("8,47,5,1.9e5,0.1,0.2\n8,47,5,1.9e5,,0.2\n", r"acc_00001.csv:2: column 5: '' is not a number"),
    ("8,47,5,1.9e5,nan,0.2\n", r"acc_00001.csv:1: column 5: '?nan'? is not a finite number"),
    ("", r"acc_00001.csv: the file is empty"),
    ("hour,minute\n1,2\n", r"acc_00001.csv:1: expected numbers, found 'hour,minute'"),
    ("8,47,5,1.9e5\n", r"acc_00001.csv:1: expected hour, minute, second, microsecond and acceleration columns"),
    ("25,47,5,1.9e5,0.1,0.2\n", r"acc_00001.csv:1: columns 1-4: expected a time of day"),
])
def test_bad_femto_files_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "acc_00001.csv").write_text(text)
    with pytest.raises(RecordingError, match=message):
        list(open_recording(run, RecordingSpec(format="femto")).snapshots())


def test_a_femto_file_of_another_length_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    run = write_femto(tmp_path / "run", [three_decimals(rng, 64, 2), three_decimals(rng, 60, 2)])
    with pytest.raises(RecordingError, match=r"acc_00002.csv: expected 64 rows \(as in acc_00001.csv\), found 60"):
        list(open_recording(run).snapshots())


# --- MATLAB ------------------------------------------------------------------------------------------


def write_mat(path: Path, channels: dict[str, np.ndarray], rpm: int = 1796) -> Path:
    from scipy import io as scipy_io

    scipy_io.savemat(path, {**{name: values[:, None] for name, values in channels.items()}, "X097RPM": np.array([[rpm]])})
    return path


def test_mat_record_is_cut_into_snapshots_by_channel_suffix(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    de, fe = rng.normal(0, 0.2, 10_000), rng.normal(0, 0.1, 10_000)
    path = write_mat(tmp_path / "normal.mat", {"X097_DE_time": de, "X097_FE_time": fe})
    assert detect_format(path) == "mat"
    recording = open_recording(path, RecordingSpec(sample_rate_hz=48_000, snapshot_samples=4096, channels=["FE", "DE"]))
    assert recording.channels == ("FE", "DE") and len(recording) == 2  # the last 1,808 samples make no snapshot
    second = recording.snapshot(1)
    np.testing.assert_array_equal(second.counts, np.rint(np.column_stack([fe, de])[4096:8192] * 1000))
    assert (recording.times[1] - recording.times[0]).total_seconds() == pytest.approx(4096 / 48_000, abs=1e-6)
    assert open_recording(path, RecordingSpec(sample_rate_hz=48_000, snapshot_samples=4096, channels=["2"])).channels == ("FE",)


def test_real_cwru_file_reads_both_channels(cwru_dir: Path) -> None:
    recording = open_recording(cwru_dir / "normal_0_97.mat",
                               RecordingSpec(sample_rate_hz=48_000, snapshot_samples=16_384, channels=["DE", "FE"]))
    assert recording.channels == ("DE", "FE") and len(recording) == 243_938 // 16_384
    from scipy import io as scipy_io

    raw = scipy_io.loadmat(str(cwru_dir / "normal_0_97.mat"))["X097_DE_time"][:16_384, 0]
    np.testing.assert_array_equal(recording.snapshot(0).counts[:, 0], np.rint(raw * 1000))


def test_mat_needs_a_declared_rate_and_real_matlab_content(tmp_path: Path) -> None:
    path = write_mat(tmp_path / "x.mat", {"X1_DE_time": np.zeros(100)})
    with pytest.raises(RecordingError, match=r"x.mat: --sample-rate is required for .mat recordings"):
        open_recording(path)
    with pytest.raises(RecordingError, match=r"x.mat: --snapshot-samples 200 is longer than the record \(100 samples\)"):
        open_recording(path, RecordingSpec(sample_rate_hz=1000, snapshot_samples=200))
    with pytest.raises(RecordingError, match=r"x.mat: --channels: no channel named 'FE'; channels are DE"):
        open_recording(path, RecordingSpec(sample_rate_hz=1000, channels=["FE"]))
    bogus = tmp_path / "bogus.mat"
    bogus.write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(RecordingError, match="bogus.mat: not a readable MATLAB file"):
        open_recording(bogus, RecordingSpec(sample_rate_hz=1000))
    from scipy import io as scipy_io

    scipy_io.savemat(tmp_path / "text.mat", {"note": "hello"})
    with pytest.raises(RecordingError, match=r"text.mat: no channel variable"):
        open_recording(tmp_path / "text.mat", RecordingSpec(sample_rate_hz=1000))


def test_mat_without_scipy_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_mat(tmp_path / "x.mat", {"X1_DE_time": np.zeros(100)})
    monkeypatch.setitem(sys.modules, "scipy", None)  # as on a Pi with only the edge extra
    with pytest.raises(RecordingError, match=r"x.mat: reading .mat files needs scipy: install the trainer extra"):
        open_recording(path, RecordingSpec(sample_rate_hz=1000))


# --- generic CSV/TSV/NPY snapshots -------------------------------------------------------------------


def test_csv_folder_with_header_names_the_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "daq"
    folder.mkdir()
    snapshots = [three_decimals(rng, 100, 3) for _ in range(3)]
    for i, values in enumerate(snapshots):
        rows = ["x,y,z"] + [",".join(f"{v:.3f}" for v in row) for row in values]
        (folder / f"snap_{i:03d}.csv").write_text("\n".join(rows) + "\n")
    (folder / "README.md").write_text("not a snapshot")
    assert detect_format(folder) == "csv"
    recording = open_recording(folder, RecordingSpec(sample_rate_hz=1000, channels=["z", "x"]))
    assert recording.channels == ("z", "x") and len(recording) == 3 and recording.sample_rate_hz == 1000
    np.testing.assert_array_equal(recording.snapshot(2).counts, np.rint(snapshots[2][:, [2, 0]] * 1000))
    assert (recording.times[1] - recording.times[0]).total_seconds() == pytest.approx(0.1)


def test_tsv_and_npy_snapshots_without_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = three_decimals(rng, 50, 2, amplitude=30.0)  # some beyond 32.767 g
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.tsv").write_text("\n".join("\t".join(f"{v:.3f}" for v in row) for row in values) + "\n")
    np.save(folder / "b.npy", values)
    recording = open_recording(folder, RecordingSpec(format="csv", sample_rate_hz=500))
    assert recording.channels == ("ch1", "ch2")
    a, b = recording.snapshots()
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.scale == b.scale == recording.scale == float(np.float32(0.001 * 2 ** scale_exponent(np.abs(values).max())))


@pytest.mark.parametrize("name,content,message", [
    ("s.csv", "a,b\n1,2\n3\n", r"s.csv:3: expected 2 columns \(as on line 2\), found 1"),
    ("s.csv", "a,b\n1,2\n3,x4\n", r"s.csv:3: column 2 \(b\): 'x4' is not a number"),
    ("s.tsv", "1\t2\n3\tinf\n", r"s.tsv:2: column 2: inf is not a finite number"),
    ("s.csv", "a,b\n", r"s.csv: a header row but no data rows"),
])
def test_bad_csv_snapshots_name_file_line_and_column(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(RecordingError, match=message):
        list(open_recording(tmp_path, RecordingSpec(format="csv", sample_rate_hz=100)).snapshots())


def test_bad_npy_and_missing_rate_are_named(tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(RecordingError, match=r"cube.npy: expected a \(samples, channels\) numeric array"):
        open_recording(tmp_path, RecordingSpec(format="csv", sample_rate_hz=100))
    with pytest.raises(RecordingError, match="--sample-rate is required for csv recordings"):
        open_recording(tmp_path, RecordingSpec(format="csv"))


def test_ambiguous_or_empty_folders_ask_for_format(tmp_path: Path) -> None:
    (tmp_path / "acc_00001.csv").write_text("1,2,3,4,5,6\n")
    (tmp_path / "x.mat").write_bytes(b"")
    with pytest.raises(RecordingError, match=r"holds several formats \(femto, mat\): give --format"):
        detect_format(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordingError, match="holds no known recording files: give --format"):
        detect_format(empty)


def test_trainer_reads_recordings_and_keeps_tables_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    run = write_femto(tmp_path / "run", [three_decimals(rng, 128, 2) for _ in range(4)])
    data = load_dataset(run, DatasetSpec(channels=["vertical"]))
    assert data.kind == "femto" and data.channels == ("vertical",) and data.columns == (2,)
    assert data.sample_rate_hz == 25600 and data.snapshot_samples == 128 and data.scales == (float(np.float32(0.001)),)
    assert data.scales == (open_recording(run, RecordingSpec(channels=["vertical"])).scale,)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "acc_00001.csv").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"acc_00001.csv:1: expected hour, minute, second, microsecond"):
        load_dataset(bad)
    table = tmp_path / "table.csv"
    table.write_text("time,a\n0,1\n1,2\n")
    assert load_dataset(table).kind == "table"


def test_cm_train_names_the_bad_file_and_the_missing_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    rng = np.random.default_rng(8)
    run = write_femto(tmp_path / "run", [three_decimals(rng, 64, 2) for _ in range(3)])
    (run / "acc_00002.csv").write_text("8,47,5,1.9e5,0.1,0.2\n8,47,5,1.9e5,0.1,oops\n")
    assert main(["fit", str(run), "--out", str(tmp_path / "b")]) == 1
    assert "acc_00002.csv:2: column 6: 'oops' is not a number" in capsys.readouterr().err
    assert main(["fit", str(run), "--format", "csv", "--out", str(tmp_path / "b")]) == 1
    assert "--sample-rate is required for csv recordings" in capsys.readouterr().err
