"""Small trained bundles for tests: a synthetic run to failure and a bundle fitted on its healthy part.

Used by the trainer's tests and the agent's. Training goes through the same function as `cm-train fit`
(trainer.train.fit), with few epochs so a bundle takes seconds. `shared_run()` and `shared_bundle()`
build one run and one bundle per test process and reuse them.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from firmware_bridge.synth import generate

RUN_FILES = 140
FAIL_BEARING = 3
FAST_FIT = {"epochs": 40, "patience": 8, "train_fraction": 0.5, "seed": 0, "verbose": 0}


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


@functools.cache
def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="cm-trained-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def shared_run() -> Path:
    """One synthetic run to failure (bearing 3) per test process."""
    return make_synthetic_run(_scratch() / "run")


@functools.cache
def shared_bundle() -> Path:
    """One bundle fitted on the healthy first half of `shared_run()` per test process."""
    return make_bundle(shared_run(), _scratch() / "bundle")
