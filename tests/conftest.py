"""Shared fixtures: where the real IMS sample lives, and a scratch directory per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ims_root() -> Path | None:
    candidates = [os.environ.get("CM_IMS_DATA"), REPO.parent / "shared" / "data" / "ims"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def ims_dir() -> Path:
    """The directory of real IMS files (test 1): from CM_IMS_DATA or ../shared/data/ims.

    Skips when neither exists on a developer's machine; fails in CI, where the data must be there.
    """
    root = _ims_root()
    if root is None:
        message = "real IMS data not found: set CM_IMS_DATA or provide ../shared/data/ims"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    # The shared folder holds 1st_test/ beside a README; CM_IMS_DATA may point at the files directly.
    return root / "1st_test" if (root / "1st_test").is_dir() else root


def _shared(name: str) -> Path:
    """A folder of ../shared/data (FEMTO, CWRU): skips on a developer's machine without it, fails in CI."""
    root = REPO.parent / "shared" / "data" / name
    if not root.is_dir():
        message = f"real {name} data not found: provide ../shared/data/{name}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def femto_dir() -> Path:
    """The real FEMTO/PRONOSTIA runs (Bearing1_2, Bearing3_1) in ../shared/data/femto."""
    return _shared("femto")


@pytest.fixture(scope="session")
def cwru_dir() -> Path:
    """The real CWRU recordings (.mat, 48 kHz) in ../shared/data/cwru."""
    return _shared("cwru")
