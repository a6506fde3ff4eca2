"""The synthetic run to failure: deterministic, healthy-then-failing on one bearing, readable as IMS files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge.model.features import snapshot_features
from firmware_bridge.ims import IMS_SCALE, IMS_SNAPSHOT_SAMPLES, list_ims_files, read_counts
from firmware_bridge.synth import generate, plan_run, snapshot

RUN_FILES = 120
FAIL_BEARING = 3  # 1-based; its neighbours are bearings 2 and 4


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Mean absolute value per file and bearing of a run read back from its IMS files."""
    out = tmp_path_factory.mktemp("run")
    paths = generate(out, files=RUN_FILES, fail_bearing=FAIL_BEARING, seed=11, dropout_at_end=True)
    assert [f.path for f in list_ims_files(out)] == paths
    return np.array([snapshot_features(read_counts(p), IMS_SCALE) for p in paths])


def _healthy(features: np.ndarray) -> np.ndarray:
    return np.median(features[: RUN_FILES // 2], axis=0)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        paths = generate(tmp_path / name, files=6, fail_bearing=1, seed=seed)
        runs[name] = [p.read_bytes() for p in paths]
    assert runs["a"] == runs["b"]
    assert all(x != y for x, y in zip(runs["a"], runs["c"]))


def test_any_snapshot_can_be_generated_on_its_own(tmp_path: Path) -> None:
    paths = generate(tmp_path, files=8, fail_bearing=2, seed=4)
    plan = plan_run(8, 2, 4)
    np.testing.assert_array_equal(snapshot(plan, 6), read_counts(paths[6]))


def test_files_are_ims_shaped_and_spaced_by_the_interval(tmp_path: Path) -> None:
    start = "2004.02.12.10.32.39"
    paths = generate(tmp_path, files=3, fail_bearing=4, seed=1, interval_minutes=5, start=start)
    stamps = [f.timestamp for f in list_ims_files(tmp_path)]
    assert stamps[0] == datetime(2004, 2, 12, 10, 32, 39, tzinfo=UTC)
    assert np.diff(stamps).tolist() == [timedelta(minutes=5)] * 2
    counts = read_counts(paths[0])
    assert counts.shape == (IMS_SNAPSHOT_SAMPLES, 4)
    assert 0.05 < snapshot_features(counts, IMS_SCALE).min() < snapshot_features(counts, IMS_SCALE).max() < 0.12


def test_failing_bearing_is_flat_while_healthy_and_rises_late(failing_run: np.ndarray) -> None:
    failing = failing_run[:, FAIL_BEARING - 1]
    healthy = _healthy(failing_run)[FAIL_BEARING - 1]
    first_half = failing[: RUN_FILES // 2]
    assert first_half.max() < 1.1 * healthy and first_half.min() > 0.9 * healthy
    before_dropout = failing[:-3]
    assert before_dropout[-1] > 4 * healthy
    # Growth is late: nothing visible before 60 % of the run, clearly visible in the last tenth.
    assert failing[: int(0.6 * RUN_FILES)].max() < 1.15 * healthy
    assert (before_dropout[-9:] > 1.5 * healthy).all()


def test_other_bearings_stay_flat_and_the_failing_one_dominates(failing_run: np.ndarray) -> None:
    ratio = failing_run / _healthy(failing_run)
    far = ratio[:, 0]  # bearing 1 is not next to bearing 3
    assert far.max() < 1.12 and far.min() > 0.88
    neighbours = ratio[:, [1, 3]]
    assert neighbours[: int(0.8 * RUN_FILES)].max() < 1.15  # cross-talk only once the defect is severe
    rise = ratio[:-3] - 1
    assert (rise[-1, FAIL_BEARING - 1] > 4 * rise[-1, [0, 1, 3]]).all()


def test_dropout_files_are_near_zero_on_the_failing_channel(failing_run: np.ndarray) -> None:
    dropped = failing_run[-3:, FAIL_BEARING - 1]
    assert (dropped < 0.01).all() and (dropped > 0).all()
    assert failing_run[-4, FAIL_BEARING - 1] > 0.2
    assert (failing_run[-3:, [0, 1, 3]] > 0.05).all()  # the other sensors still work


def test_cli_writes_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "firmware_bridge.synth", str(out), "--files", "4", "--fail-bearing", "2",
               "--seed", "9", "--interval-minutes", "10", "--dropout-at-end", "--start", "2004.02.12.10.32.39"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [f.path.name for f in list_ims_files(out)] == [
        "2004.02.12.10.32.39", "2004.02.12.10.42.39", "2004.02.12.10.52.39", "2004.02.12.11.02.39",
    ]
    library = generate(tmp_path / "lib", files=4, fail_bearing=2, seed=9, dropout_at_end=True)
    assert [p.read_bytes() for p in sorted(out.iterdir())] == [p.read_bytes() for p in library]


def test_cli_entry_point_rejects_a_bad_start_with_a_clear_message(tmp_path: Path) -> None:
    script = shutil.which("cm-synth", path=str(Path(sys.executable).parent))
    assert script is not None, "cm-synth is declared in pyproject.toml and installed with the package"
    command = [script, str(tmp_path), "--files", "4", "--fail-bearing", "1", "--seed", "1", "--start", "yesterday"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "yesterday: expected a name like 2003.10.22.12.06.24" in done.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"files": 1, "fail_bearing": 1}, "files"), ({"files": 10, "fail_bearing": 5}, "fail_bearing")],
)
def test_bad_parameters_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, seed=1, **kwargs)
