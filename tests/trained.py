"""Small trained bundles for tests: a synthetic run to failure and a bundle fitted on its healthy part.

Used by the trainer's tests and the agent's. Training goes through the same function as `cm-train fit`
(trainer.train.fit), with few epochs so a bundle takes seconds. `shared_run()`, `shared_bundle()` and the
other helpers below make each run and bundle once per pytest run: conftest.py points `share_in()` at a
directory every xdist worker of the run sees; the first worker to ask makes it under a file lock, the others
wait for it and reuse it. A new pytest run makes them afresh, so a trainer change always reaches the tests.

On a device without the trainer (`make pi-check`), CM_TEST_BUNDLES names a directory where these were made
beforehand on the workstation (`python tests/trained.py DIR`): the helpers then hand those out instead of
training.
"""
from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np

from edge.model.features import snapshot_features
from firmware_bridge.ims import IMS_SCALE, list_ims_files, read_counts, write_ims_file
from firmware_bridge.synth import generate

RUN_FILES = 140
FAIL_BEARING = 3
FAST_FIT = {"epochs": 40, "patience": 8, "train_fraction": 0.5, "seed": 0, "verbose": 0}
# (channels, window) of the table bundles the runtimes are compared on: 22 columns stand for a vibration-sized
# row (C channels x F features); windows 1, 2 and 4 as `cm-train fit --window` allows.
TABLE_SHAPES = ((1, 1), (2, 2), (4, 4), (8, 1), (22, 2))
HANDED_IN = "CM_TEST_BUNDLES"


def _handed_in(name: str) -> Path | None:
    """A bundle or run made beforehand (see the module docstring), or None to make it here."""
    root = os.environ.get(HANDED_IN)
    if not root:
        return None
    path = Path(root) / name
    if not path.exists():
        raise FileNotFoundError(f"{HANDED_IN}={root}: {name} is missing: make it with `python tests/trained.py {root}`")
    return path


def make_synthetic_run(directory: str | Path, files: int = RUN_FILES, seed: int = 0, fail_bearing: int = FAIL_BEARING,
                       dropout_at_end: bool = False) -> Path:
    """IMS-format files of a run to failure from cm-synth's generator; returns the directory."""
    directory = Path(directory)
    generate(directory, files=files, fail_bearing=fail_bearing, seed=seed, dropout_at_end=dropout_at_end)
    return directory


def make_bundle(run_dir: str | Path, out_dir: str | Path, **options: object) -> Path:
    """Fit a small bundle on `run_dir` as `cm-train fit` does; options are trainer.train.FitOptions fields."""
    from trainer.train import FitOptions, fit  # TensorFlow loads only for tests that train

    return fit(run_dir, FitOptions(out=Path(out_dir), **{**FAST_FIT, **options}))


_shared_root: Path | None = None


def share_in(directory: Path) -> None:
    """Make and find the runs and bundles in `directory`, shared by every process of one pytest run."""
    global _shared_root
    _shared_root = directory / "trained"
    _shared_root.mkdir(parents=True, exist_ok=True)


@functools.cache
def _private_scratch() -> Path:
    """Outside pytest (`python tests/trained.py DIR`): a directory of this process, removed at its exit."""
    path = Path(tempfile.mkdtemp(prefix="cm-trained-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _scratch() -> Path:
    return _shared_root or _private_scratch()


def _made_once(name: str, make: Callable[[Path], object]) -> Path:
    """`_scratch() / name`, made by `make(path)` unless a process of this run made it already.

    flock, not a marker file alone: a worker that asks while another is still training waits for it rather
    than training too, and a worker that died halfway releases the lock and leaves no marker, so the next
    one starts over instead of using half a bundle.
    """
    root = _scratch()
    path, done = root / name, root / f"{name}.done"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            done.touch()
    return path


@functools.cache
def shared_run() -> Path:
    """One synthetic run to failure (bearing 3) per pytest run."""
    return _handed_in("run") or _made_once("run", make_synthetic_run)


@functools.cache
def shared_bundle() -> Path:
    """One bundle fitted on the healthy first half of `shared_run()` per pytest run."""
    return _handed_in("bundle") or _made_once("bundle", lambda path: make_bundle(shared_run(), path))


def as_version_1(card: dict) -> dict:
    """A card's JSON as trainers wrote it before schema_version 2: the thresholds at the top level and in detector."""
    card.update(schema_version=1, warning_threshold=card["detector"]["warning_threshold"],
                alarm_threshold=card["detector"]["alarm_threshold"])
    return card


@functools.cache
def shared_dropout_run() -> Path:
    """`shared_run()` with bearing 3's sensor dropping out in its last three files (cm-synth --dropout-at-end);
    the files before are the same. Read-only: a test that changes a file links the others into its own folder."""
    return _made_once("dropout-run", lambda path: make_synthetic_run(path, dropout_at_end=True))


def first_files(run_dir: Path, count: int, directory: Path) -> Path:
    """A folder of links to the first `count` files of a recorded run: its healthy start, replayed or fitted on."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in list_ims_files(run_dir)[:count]:
        (directory / file.path.name).symlink_to(file.path)
    return directory


def dropout_cycles(directory: Path, cycles: int = 1) -> Path:
    """IMS files ten minutes apart: (healthy x3, bearing 3's sensor dropped out x3) `cycles` times, then healthy x3.
    Each cycle raises two alerts (-> sensor_fault, and back). Made from `shared_dropout_run()`'s first and last file."""
    files = list_ims_files(shared_dropout_run())
    healthy, dropout = read_counts(files[0].path), read_counts(files[-1].path)
    directory.mkdir(parents=True)
    moment = files[0].timestamp
    for counts in ([healthy] * 3 + [dropout] * 3) * cycles + [healthy] * 3:
        write_ims_file(directory, moment, counts)
        moment += timedelta(minutes=10)
    return directory


def run_features(run_dir: Path) -> np.ndarray:
    """(files, channels) features of an IMS run as the agent computes them (equal to the trainer's, see
    test_feature_parity), without the trainer's pandas and TensorFlow."""
    return np.array([snapshot_features(read_counts(f.path), IMS_SCALE) for f in list_ims_files(run_dir)])


def write_feature_table(path: Path, channels: int, rows: int = 48, seed: int = 0) -> Path:
    """A features table (seconds, then one column per channel) of slowly drifting positive levels."""
    rng = np.random.default_rng(seed)
    levels = 0.05 * np.exp(np.cumsum(rng.normal(0, 0.01, (rows, channels)), axis=0)) * (1 + rng.normal(0, 0.02, (rows, channels)))
    lines = ["seconds," + ",".join(f"ch{c + 1}" for c in range(channels))]
    lines += [f"{600 * row}," + ",".join(f"{value:.6f}" for value in levels[row]) for row in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@functools.cache
def table_bundle(channels: int, window: int) -> Path:
    """A bundle of `channels` input columns and window `window`, fitted (few epochs) on a features table."""
    name = f"table-c{channels}-w{window}"

    def make(path: Path) -> None:
        table = write_feature_table(_scratch() / f"{name}.csv", channels, seed=channels * 10 + window)
        make_bundle(table, path, epochs=3, train_fraction=0.6)

    return _handed_in(name) or _made_once(name, make)


@functools.cache
def vibration_bundle() -> Path:
    """A bundle with the `vibration` feature set (4 channels x 10 features = 40 model columns), on a short run."""
    from edge.model.bearing import PRESETS

    def make(path: Path) -> None:
        run = _made_once("vibration-run", lambda run: make_synthetic_run(run, files=40))
        make_bundle(run, path, feature_set="vibration", bearing=PRESETS["6205-2rs"], shaft_rpm=2000.0, epochs=3)

    return _handed_in("vibration") or _made_once("vibration", make)


def hand_out(directory: Path) -> None:
    """Make every run and bundle the helpers give into `directory`, for a device without the trainer."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in [("run", shared_run()), ("bundle", shared_bundle()), ("vibration", vibration_bundle())] + [
        (f"table-c{c}-w{w}", table_bundle(c, w)) for c, w in TABLE_SHAPES
    ]:
        shutil.rmtree(directory / name, ignore_errors=True)
        shutil.copytree(source, directory / name)


if __name__ == "__main__":
    hand_out(Path(sys.argv[1]))
