"""Throughput of the IMS reader and the synthetic generator: `python bench/bench_ims.py [repeats]`."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from figures import figure

from firmware_bridge.ims import list_ims_files, read_counts
from firmware_bridge.synth import generate

REPO = Path(__file__).resolve().parents[1]
SYNTH_FILES = 20


def _real_files() -> list[Path]:
    """The real IMS files, from CM_IMS_DATA or ../shared/data/ims (the same lookup as the tests)."""
    for candidate in (os.environ.get("CM_IMS_DATA"), REPO.parent / "shared" / "data" / "ims"):
        if candidate and Path(candidate).is_dir():
            root = Path(candidate)
            root = root / "1st_test" if (root / "1st_test").is_dir() else root
            return [f.path for f in list_ims_files(root)]
    return []



def _rate(repeats: int, count: int, action: Callable[[int], None]) -> list[float]:
    """Items per second of `action(repeat)` handling `count` items, once per repeat."""
    rates = []
    for repeat in range(repeats):
        started = time.perf_counter()
        action(repeat)
        rates.append(count / (time.perf_counter() - started))
    return rates


def run(repeats: int = 5) -> dict:
    """{"ims_parse": .., "synth_generate": ..}, each {"median","min","max","unit"}, plus where the data came from."""
    with tempfile.TemporaryDirectory(prefix="bench-ims-") as scratch:
        files = _real_files()
        source = "real IMS set 1 (8 columns)"
        if not files:
            files = generate(Path(scratch) / "fallback", files=12, fail_bearing=1, seed=0)
            source = "synthetic (4 columns)"

        def parse(_: int) -> None:
            for path in files:
                read_counts(path)

        def synthesise(repeat: int) -> None:
            generate(Path(scratch) / f"run{repeat}", files=SYNTH_FILES, fail_bearing=1, seed=repeat)

        return {
            "ims_parse": figure(_rate(repeats, len(files), parse), "files/s"),
            "synth_generate": figure(_rate(repeats, SYNTH_FILES, synthesise), "files/s"),
            "parse_source": source,
        }


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results = run(repeats)
    print(f"IMS parse source: {results['parse_source']}; {repeats} repeats")
    print(f"{'figure':<16}{'median':>10}{'min':>10}{'max':>10}  unit")
    for name in ("ims_parse", "synth_generate"):
        figure = results[name]
        print(f"{name:<16}{figure['median']:>10.1f}{figure['min']:>10.1f}{figure['max']:>10.1f}  {figure['unit']}")


if __name__ == "__main__":
    main()
