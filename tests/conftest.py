"""Shared fixtures: where the real IMS sample lives, and where tests/trained.py keeps what it trains."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest -n the workers already keep every core busy: TensorFlow's and OpenBLAS's own thread pools
    # on top would only spin against the other workers. Set before numpy or TensorFlow loads (both read these
    # once), and passed on to the agents and trainers the tests start.
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whole modules in turn: those with slow tests first, then those that mostly wait, then the others, larger
    ones first. `make test` hands each module to one xdist worker in this order (--dist loadscope
    --no-loadscope-reorder): the long runs start at once, the waiting overlaps other modules' computing, small
    modules fill the cores at the end, and a module's fixtures are set up once."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def order(tests: list[pytest.Item]) -> tuple[int, int]:
        marks = {mark.name for test in tests for mark in test.iter_markers()}
        return (0, 0) if "slow" in marks else (1, 0) if "waits" in marks else (2, -len(tests))

    items[:] = [item for tests in sorted(modules.values(), key=order) for item in tests]


@pytest.fixture(scope="session", autouse=True)
def _trained_once_per_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """tests/trained.py trains each of its bundles once for the whole run: under pytest-xdist every worker's
    base temp directory sits in the run's own (the parent), which they all share; a new run starts empty."""
    import trained  # here, not at the top: numpy must load after the thread settings above

    base = tmp_path_factory.getbasetemp()
    trained.share_in(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


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
