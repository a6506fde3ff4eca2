"""The IMS file format: real files read exactly, written files read back bit for bit, bad files named precisely."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.ims import (
    IMS_SCALE,
    IMS_SNAPSHOT_SAMPLES,
    ImsFormatError,
    channel_names,
    list_ims_files,
    parse_timestamp,
    read_counts,
    read_values,
    write_ims_file,
)

FIRST_REAL = "2003.10.22.12.06.24"


def _reference_counts(path: Path) -> np.ndarray:
    """An independent reading of the file: Python's own float parser, line by line."""
    rows = [[round(float(cell) * 1000) for cell in line.split("\t")] for line in path.read_text().splitlines()]
    return np.array(rows, dtype=np.int64)


def test_real_files_are_listed_in_time_order_with_utc_timestamps(ims_dir: Path) -> None:
    files = list_ims_files(ims_dir)
    assert len(files) == 12
    assert files[0].path.name == FIRST_REAL
    assert files[0].timestamp == datetime(2003, 10, 22, 12, 6, 24, tzinfo=UTC)
    stamps = [f.timestamp for f in files]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(f.timestamp.utcoffset() == timedelta(0) for f in files)


def test_real_file_reads_as_exact_int16_counts(ims_dir: Path) -> None:
    path = ims_dir / FIRST_REAL
    counts = read_counts(path)
    assert counts.shape == (IMS_SNAPSHOT_SAMPLES, 8)
    assert counts.dtype == np.int16
    np.testing.assert_array_equal(counts, _reference_counts(path))
    assert counts[0].tolist() == [-22, -39, -183, -54, -105, -134, -129, -142]  # the file's first line
    np.testing.assert_allclose(read_values(path), counts * IMS_SCALE, rtol=0, atol=1e-12)


def test_channel_selection_is_zero_based_and_named_as_the_readme(ims_dir: Path) -> None:
    path = ims_dir / FIRST_REAL
    everything = read_counts(path)
    selected = read_counts(path, columns=[0, 2, 4, 6])
    np.testing.assert_array_equal(selected, everything[:, [0, 2, 4, 6]])
    assert selected.flags.c_contiguous
    names = channel_names(8)
    assert [names[c] for c in (0, 2, 4, 6)] == ["bearing1_x", "bearing2_x", "bearing3_x", "bearing4_x"]
    assert channel_names(4) == ["bearing1", "bearing2", "bearing3", "bearing4"]
    assert channel_names(2) == ["ch1", "ch2"]
    with pytest.raises(ImsFormatError, match="0..7"):
        read_counts(path, columns=[8])


def test_writing_a_real_file_back_reproduces_it_byte_for_byte(ims_dir: Path, tmp_path: Path) -> None:
    original = ims_dir / FIRST_REAL
    written = write_ims_file(tmp_path, parse_timestamp(original.name), read_counts(original))
    assert written.name == original.name
    assert written.read_bytes() == original.read_bytes()


def test_write_read_round_trip_is_exact_over_the_whole_int16_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(-32768, 32768, size=(IMS_SNAPSHOT_SAMPLES, 4), dtype=np.int16)
    counts[:4] = [[-32768, 32767, 0, -1], [1, -999, 1000, -1000], [9, -10, 10000, -10000], [0, 0, 0, 0]]
    when = datetime(2004, 2, 12, 10, 32, 39, tzinfo=UTC)
    path = write_ims_file(tmp_path, when, counts)
    assert path.name == "2004.02.12.10.32.39"
    assert path.read_bytes().startswith(b"-32.768\t32.767\t0.000\t-0.001\n0.001\t-0.999\t1.000\t-1.000\n")
    np.testing.assert_array_equal(read_counts(path), counts)
    assert [f.path for f in list_ims_files(tmp_path)] == [path]  # no temporary file left behind


def test_files_with_a_different_layout_are_read_too(tmp_path: Path) -> None:
    # Exponents, signs, padding and CRLF line ends are not what IMS writes, but they are numbers.
    path = tmp_path / "2004.02.12.10.32.39"
    path.write_bytes(b"1e-3\t +0.2\r\n-.5\t12\r\n\n")
    assert read_counts(path, expected_rows=2).tolist() == [[1, 200], [-500, 12000]]


def test_listing_skips_documentation_and_rejects_foreign_names(tmp_path: Path) -> None:
    for name in ("README.md", "README", "SHA256SUMS", "notes.txt", ".partial", "2004.02.12.10.42.39"):
        (tmp_path / name).write_text("0.000\n")
    (tmp_path / "2004.02.12.10.32.39").write_text("0.000\n")
    assert [f.path.name for f in list_ims_files(tmp_path)] == ["2004.02.12.10.32.39", "2004.02.12.10.42.39"]
    (tmp_path / "data.csv").write_text("0.000\n")
    with pytest.raises(ImsFormatError, match=r"data\.csv: expected a name like 2003\.10\.22\.12\.06\.24"):
        list_ims_files(tmp_path)


@pytest.mark.parametrize("name", ["2003.10.22.12.06", "2003-10-22 12:06:24", "2003.13.22.12.06.24"])
def test_unparsable_file_name_is_named(name: str) -> None:
    with pytest.raises(ImsFormatError, match=r"expected a name like 2003\.10\.22\.12\.06\.24") as caught:
        parse_timestamp(f"/data/{name}")
    assert str(caught.value).startswith(f"/data/{name}: ")


def _bad_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "2004.02.12.10.32.39"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD_LINE = "0.001\t-0.002\t0.003\t-0.004"


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE, GOOD_LINE, "0.001\t-0.002\t0.003", GOOD_LINE])
    with pytest.raises(ImsFormatError) as caught:
        read_counts(path, expected_rows=None)
    assert str(caught.value) == f"{path}:3: expected 4 columns (as on line 1), found 3"
    assert caught.value.line == 3


def test_non_numeric_cell_names_file_line_and_column(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE] * 5 + ["0.001\t-0.002\tx.3\t-0.004"])
    with pytest.raises(ImsFormatError) as caught:
        read_counts(path, expected_rows=None)
    assert str(caught.value) == f"{path}:6: column 3 (bearing3): 'x.3' is not a number"


def test_empty_cell_is_not_a_number(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE, "0.001\t\t0.003\t-0.004"])
    with pytest.raises(ImsFormatError, match=r":2: column 2 \(bearing2\): '' is not a number"):
        read_counts(path, expected_rows=None)


def test_wrong_row_count_names_the_file(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE] * 7)
    with pytest.raises(ImsFormatError) as caught:
        read_counts(path)
    assert str(caught.value) == f"{path}: expected {IMS_SNAPSHOT_SAMPLES} rows, found 7"


def test_value_with_a_fourth_decimal_is_refused(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE, "0.001\t-0.0025\t0.003\t-0.004"])
    with pytest.raises(ImsFormatError, match=r":2: column 2 \(bearing2\): value '-0.0025' has more than three"):
        read_counts(path, expected_rows=None)


def test_value_beyond_int16_counts_is_refused(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE, "0.001\t-0.002\t0.003\t-40.000"])
    with pytest.raises(ImsFormatError, match=r":2: column 4 \(bearing4\): value '-40.000' is outside the int16"):
        read_counts(path, expected_rows=None)


def test_empty_line_and_empty_file_are_refused(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, [GOOD_LINE, "", GOOD_LINE])
    with pytest.raises(ImsFormatError, match=r":2: empty line"):
        read_counts(path, expected_rows=None)
    path.write_bytes(b"")
    with pytest.raises(ImsFormatError, match="empty"):
        read_counts(path)


def test_truncated_file_reports_its_broken_last_line(tmp_path: Path) -> None:
    # A copy cut off mid-line: the last line is short, which is the first thing a user needs to know.
    path = tmp_path / "2004.02.12.10.32.39"
    path.write_text(GOOD_LINE + "\n" + GOOD_LINE[:9])
    with pytest.raises(ImsFormatError, match=r":2: expected 4 columns \(as on line 1\), found 2"):
        read_counts(path)


def test_mixed_number_styles_read_exactly(tmp_path: Path) -> None:
    # Each line defeats the strict "%.3f" reader in a different way; every value must still come out exact.
    lines = ["0.0010\t-1.5\t12.345", "1.000e-3\t+2.000\t-0.000", "5/\t1\t2"]
    path = _bad_file(tmp_path, lines[:2])
    assert read_counts(path, expected_rows=None).tolist() == [[1, -1500, 12345], [1, 2000, 0]]
    path = _bad_file(tmp_path, lines)
    with pytest.raises(ImsFormatError, match=r":3: column 1 \(ch1\): '5/' is not a number"):
        read_counts(path, expected_rows=None)
