"""What commissioning costs the fleet host, on a SQLite historian of agent-built `learning` telemetry:
- the worker's progress look at every learning machine (one grouped COUNT over the raw telemetry, every
  [commissioning] check_interval_s), for --machines machines of --snapshots snapshots each;
- one machine's baseline check (read its raw telemetry, the three checks) and its features table written, for a
  vibration-set baseline of --snapshots snapshots (14 days at the IMS cadence: 2016) of 4 channels x 10 features.
Printed: median / min / max over --runs; nothing asserted.

    .venv/bin/python bench/bench_commissioning.py [--machines 200] [--snapshots 2016] [--runs 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the suite's agent-built payloads

from commissioning_helpers import baseline_card, learning_messages, levels  # noqa: E402
from figures import figure, row  # noqa: E402
from fleet_helpers import T0_US  # noqa: E402

from edge.model.bearing import PRESETS  # noqa: E402
from edge.model.features import FEATURE_SETS, VIBRATION  # noqa: E402
from fleet.commissioning import assess, baseline_of, write_table  # noqa: E402
from fleet.config import CommissioningConfig, HistorianConfig  # noqa: E402
from fleet.historian import commissioning as book  # noqa: E402
from fleet.historian import open_historian  # noqa: E402

CHANNELS = ("bearing1", "bearing2", "bearing3", "bearing4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--snapshots", type=int, default=2016)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        card = baseline_card(root / "cards" / "vib", CHANNELS, VIBRATION, bearing=PRESETS["6205-2rs"], shaft_rpm=1800.0)
        historian = open_historian(HistorianConfig(url=f"sqlite://{root / 'historian.sqlite'}"))
        columns = len(CHANNELS) * len(FEATURE_SETS[VIBRATION])
        loaded = time.perf_counter()
        for machine in range(args.machines):
            rows = abs(levels(args.snapshots, channels=columns, seed=machine)) + 0.5
            historian.store(learning_messages(f"pump-{machine:05d}", card, rows, T0_US), [], T0_US)
        loaded = time.perf_counter() - loaded
        book.discover(historian)
        config = CommissioningConfig(baseline_cards=str(root / "cards"), signing_key="unused", min_days=13.0,
                                     min_snapshots=1000)
        record = book.record(historian, "pump-00000")
        assert record is not None
        progress, checks, tables = [], [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            book.baseline_extent(historian)
            progress.append(time.perf_counter() - start)
            start = time.perf_counter()
            verdict = assess(historian, record, config)
            checks.append(time.perf_counter() - start)
            _, baseline = baseline_of(historian, record, config)
            start = time.perf_counter()
            write_table(baseline, root / "baseline.csv")
            tables.append(time.perf_counter() - start)
        historian.close()
    print(f"{args.machines} machines x {args.snapshots} vibration snapshots ({columns} features) stored in {loaded:.1f} s; "
          f"the check says: {verdict.reason}")
    print(f"{'':<48} {'median':>12} {'min':>12} {'max':>12}")
    print(row(f"progress of {args.machines} learning machines", figure(progress, "s")))
    print(row("one machine's baseline checked", figure(checks, "s")))
    print(row("its features table written", figure(tables, "s")))


if __name__ == "__main__":
    main()
