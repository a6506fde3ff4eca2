"""Ingest rate of `cm-fleet serve`: alerts/s and telemetry/s from MQTT into SQLite and into PostgreSQL, through
Debian's Mosquitto and a real `cm-fleet serve` process, with payloads built by the agent's own code.

    .venv/bin/python bench/bench_fleet_ingest.py [--count 5000] [--repeats 3] [--backends sqlite,postgresql]

Three ways in, each repeated (median, min, max printed and appended to bench/fleet_results.json):
- live:    one paho client publishes `count` messages as fast as it can (alerts QoS 1, telemetry QoS 0, as the
           agent does) while the service runs; the rate is count / (first publish -> last stored).
- backlog: the alerts are published while the service is stopped (queued in its persistent session), then it
           starts; the rate is over first stored -> last stored, what an instance drains after an outage.
- parts:   the same payloads through fleet.payloads.Validator.check alone and through Historian.store alone
           (batches of the service's batch_size, no MQTT): what each stage could do by itself.
The CPU time cm-fleet and Mosquitto used over each live run (from /proc) says which process was busy: one
Python writer thread near 100% of a core means the service itself, not the broker or the database, bounds it.
PostgreSQL is the tests' private cluster (tests/postgres.py: a Unix socket, fsync off); SQLite runs as the
service opens it (WAL, synchronous=NORMAL).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's broker, PostgreSQL cluster and cm-fleet service helpers

import paho.mqtt.client as mqtt  # noqa: E402
from broker import Mosquitto  # noqa: E402
from figures import figure, row  # noqa: E402
from fleet_helpers import FleetService, contract_alert, contract_telemetry  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from postgres import PostgresCluster  # noqa: E402

from edge.mqtt.publisher import encode  # noqa: E402
from fleet.config import HistorianConfig, IngestConfig  # noqa: E402
from fleet.historian import open_historian  # noqa: E402
from fleet.historian.store import now_us  # noqa: E402
from fleet.payloads import Accepted, Validator  # noqa: E402

RESULTS = HERE / "fleet_results.json"
DEVICES = 50  # the messages come from this many machines, in turn
# As deploy/mosquitto/cm.conf: the broker queues a whole backlog (and a slow consumer's QoS 0 stream) instead of
# dropping it past Mosquitto's default of 1,000.
BROKER_CONFIG = "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_queued_bytes 0\n"
TABLES = {"alert": "alerts", "telemetry": "telemetry"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def messages(kind: str, count: int, offset: int) -> list[tuple[str, bytes]]:
    """`count` distinct payloads of `kind` (offset keeps repeats apart: alerts by id, telemetry by time)."""
    out = []
    for n in range(offset, offset + count):
        device = f"pump-{n % DEVICES}"
        payload = contract_alert(device, n) if kind == "alert" else contract_telemetry(device, n)
        out.append((f"cm/{device}/{kind}", encode(payload)))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class Counter:
    """Counts a table's rows on a connection of its own, as a dashboard would read while the service writes."""

    def __init__(self, url: str) -> None:
        self._db: Any
        if url.startswith("sqlite://"):
            self._db = sqlite3.connect(url.removeprefix("sqlite://"))
        else:
            import psycopg

            self._db = psycopg.connect(url, autocommit=True)

    def __call__(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def wait_count(count: Callable[[], int], target: int, timeout: float = 600.0) -> tuple[float, float]:
    """Poll until count() >= target: (monotonic time of the first row seen, of the target reached)."""
    first, deadline = None, time.monotonic() + timeout
    while True:
        now, seen = time.monotonic(), count()
        if first is None and seen > 0:
            first = now
        if seen >= target:
            return first or now, now
        if now > deadline:
            raise TimeoutError(f"{seen} of {target} stored after {timeout} s")
        time.sleep(0.005)


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)  # the agent's outbox sends one at a time; a bench client need not wait
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, batch: list[tuple[str, bytes]], qos: int) -> None:
    last = None
    for topic, data in batch:
        last = client.publish(topic, data, qos=qos)
    if last is not None and qos > 0:
        last.wait_for_publish(600)


@contextmanager
def service(directory: Path, broker: Mosquitto, url: str) -> Iterator[FleetService]:
    directory.mkdir(parents=True, exist_ok=True)
    fleet = FleetService(directory, broker.port, url, extra="[ingest]\nreject_log_interval_s = 3600\n")
    fleet.start(60)
    try:
        yield fleet
    finally:
        if fleet.running():
            fleet.stop()


def live(broker: Mosquitto, fleet: FleetService, counter: Counter, kind: str, count: int, offset: int) -> dict:
    batch = messages(kind, count, offset)
    before = counter(TABLES[kind])
    assert fleet.process is not None
    fleet_cpu, broker_cpu = cpu_seconds(fleet.process.pid), cpu_seconds(broker.process.pid)
    client = publisher(broker.port)
    started = time.monotonic()
    publish_all(client, batch, 1 if kind == "alert" else 0)
    published = time.monotonic()
    _, done = wait_count(lambda: counter(TABLES[kind]) - before, count)
    client.loop_stop()
    client.disconnect()
    wall, fleet_used = done - started, cpu_seconds(fleet.process.pid) - fleet_cpu
    return {"rate": count / wall, "publish_rate": count / (published - started),
            "rate_per_fleet_cpu_s": count / fleet_used,  # what one whole core would do, however busy the machine
            "fleet_cpu": fleet_used / wall, "broker_cpu": (cpu_seconds(broker.process.pid) - broker_cpu) / wall}


def backlog(broker: Mosquitto, fleet: FleetService, counter: Counter, count: int, offset: int) -> float:
    batch = messages("alert", count, offset)
    before = counter("alerts")
    fleet.stop()
    client = publisher(broker.port)
    publish_all(client, batch, 1)  # the broker has them all, queued in the stopped service's session
    client.loop_stop()
    client.disconnect()
    fleet.start(60)
    first, done = wait_count(lambda: counter("alerts") - before, count)
    return count / (done - first) if done > first else float("nan")


def parts(url: str, kind: str, count: int, offset: int) -> dict:
    """The validator alone and the historian alone, on the same payloads, in the service's batches: messages per
    CPU second of this process (the database server's own time, for PostgreSQL, is not in it)."""
    batch = messages(kind, count, offset)
    validator = Validator("cm", IngestConfig.max_payload_bytes)
    started = time.process_time()
    accepted = [validator.check(topic, data) for topic, data in batch]
    checked = time.process_time() - started
    assert all(isinstance(a, Accepted) for a in accepted)
    historian = open_historian(HistorianConfig(url=url))
    size = IngestConfig.batch_size
    started = time.process_time()
    for start in range(0, len(accepted), size):
        historian.store(accepted[start:start + size], [], now_us())  # type: ignore[arg-type]
    stored = time.process_time() - started
    historian.close()
    return {"validate_rate_per_cpu_s": count / checked, "store_rate_per_cpu_s": count / stored}


def run(count: int, repeats: int, backends: list[str]) -> dict:
    results: dict = {}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
        broker = stack.enter_context(Mosquitto(work / "broker", config=BROKER_CONFIG))
        cluster = stack.enter_context(PostgresCluster()) if "postgresql" in backends else None
        for backend in backends:
            print(f"{backend} ...", file=sys.stderr, flush=True)
            url = (f"sqlite://{work / backend / 'historian.sqlite'}" if backend == "sqlite"
                   else cluster.create_database(f"bench_{backend}"))  # type: ignore[union-attr]
            parts_url = (f"sqlite://{work / backend / 'parts.sqlite'}" if backend == "sqlite"
                         else cluster.create_database("bench_parts"))  # type: ignore[union-attr]
            samples: dict[str, list[float]] = {}
            with service(work / backend, broker, url) as fleet:
                counter = Counter(url)
                offset = 0
                for _ in range(repeats):
                    for kind in ("alert", "telemetry"):
                        for name, value in live(broker, fleet, counter, kind, count, offset).items():
                            samples.setdefault(f"{kind}.live_{name}", []).append(value)
                        for name, value in parts(parts_url, kind, count, offset).items():
                            samples.setdefault(f"{kind}.{name}", []).append(value)
                        offset += count
                    samples.setdefault("alert.backlog_rate", []).append(backlog(broker, fleet, counter, count, offset))
                    offset += count
                counter.close()
            units = {"cpu": "cores", "rate": "msg/s", "cpu_s": "msg/CPU s"}
            results[backend] = {name: figure(values, next(u for k, u in units.items() if name.endswith(k)))
                                for name, values in sorted(samples.items())}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000, help="messages per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS, help="runs are appended to this JSON list")
    args = parser.parse_args()
    results = run(args.count, args.repeats, args.backends.split(","))
    print(f"\n{'cm-fleet ingest, ' + str(args.count) + ' messages x ' + str(args.repeats):<48} {'median':>12} "
          f"{'min':>12} {'max':>12}")
    for backend, figures in results.items():
        for name, value in figures.items():
            print(row(f"{backend}.{name}", value))
    record = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "python": platform.python_version(), "count": args.count, "repeats": args.repeats,
              "fleet_ingest": results}
    previous = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*previous, record], indent=1) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
