"""The fleet at scale: N simulated devices (`cm-fleet simulate`) on one Debian Mosquitto, `cm-fleet serve` storing
into the historian; one entry per run appended to bench/fleet_results.json. Numbers, never asserted.

    make bench-fleet                                       # N = 1,000 / 5,000 / 10,000, telemetry every second
    .venv/bin/python bench/bench_fleet.py --devices 1000 --duration 30 --faults

Per run: connections held, telemetry per second sent / delivered and stored, alerts sent / stored / lost / stored
twice (from the historian, against the simulator's ledger), alert latency from the device to the historian (p50,
p99), CPU and memory of the broker, of cm-fleet and of the simulator (psutil, sampled every second), historian
growth per device per day. --faults then restarts the broker (persistence on), SIGKILLs and restarts cm-fleet,
and reports the time until every device was back and the alerts' audit after all of it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's Mosquitto, cm-fleet service, simulation and PostgreSQL

from broker import Mosquitto  # noqa: E402
from fleet_helpers import FleetService  # noqa: E402
from simulation import Simulation, audit, stored_alerts  # noqa: E402
from waiting import eventually  # noqa: E402

RESULTS = REPO / "bench" / "fleet_results.json"
# The fleet's session may hold a long backlog (the broker's default is 1,000 messages); 10,000 connections.
BROKER_LIMITS = "max_connections -1\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"


class Sampler:
    """CPU (% of one core) and resident memory of named processes, once a second, in a thread."""

    def __init__(self) -> None:
        self.processes: dict[str, psutil.Process] = {}
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self.cpu_seconds: dict[str, dict[int, float]] = {}  # by name, by pid (a fault restarts a process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        process = psutil.Process(pid)
        process.cpu_percent()  # the first call only starts the count
        self.processes[name] = process
        self.samples.setdefault(name, [])
        self.cpu_seconds.setdefault(name, {})

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        report = {}
        for name, samples in self.samples.items():
            if samples:
                cpu = [c for c, _ in samples]
                report[name] = {"cpu_percent_mean": round(statistics.fmean(cpu), 1), "cpu_percent_max": round(max(cpu), 1),
                                "rss_mb_max": round(max(m for _, m in samples), 1),
                                "cpu_seconds": round(sum(self.cpu_seconds[name].values()), 1)}
        return report

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, process in list(self.processes.items()):
                try:
                    self.samples[name].append((process.cpu_percent(), process.memory_info().rss / 1e6))
                    times = process.cpu_times()
                    self.cpu_seconds[name][process.pid] = times.user + times.system
                except psutil.NoSuchProcess:  # restarted by a fault: watch() names the new one
                    pass


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1) if len(values) > 1 else values[0]


def _telemetry_rows(url: str) -> int:
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite://")) as db:
        return int(db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0])


def _settled_rows(url: str) -> int:
    """The telemetry count once it stops growing: cm-fleet has stored the broker's backlog."""
    rows = -1
    while (now := _telemetry_rows(url)) != rows:  # 10 s without a new row (a WAL checkpoint can pause it for seconds)
        rows = now
        time.sleep(10)
    return rows


def _sent_per_s(log: str) -> float | None:
    """The simulator's telemetry rate between its first and last progress report (every 10 s): its steady rate."""
    reports = [(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(sent)) for stamp, sent in
               re.findall(r"^(\S+ \S+) INFO fleet.simulate: \d+/\d+ connected; .* telemetry sent (\d+)", log, re.M)]
    if len(reports) < 2:
        return None
    (t0, n0), (t1, n1) = reports[0], reports[-1]
    return round((n1 - n0) / (t1 - t0), 1)


def _fleet_counts(log: str) -> dict[str, int]:
    """What cm-fleet took in, by kind, from its last words on SIGTERM ("stopped: stored {...}")."""
    found = re.findall(r"stopped: stored (\{[^}]*\})", log)
    return ast.literal_eval(found[-1]) if found else {}


def _database_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))  # the WAL too


def run(devices: int, duration: float, alert_interval: float, faults: bool, directory: Path,
        telemetry_interval: float = 1.0) -> dict[str, Any]:
    database = directory / "historian.sqlite"
    url = f"sqlite://{database}"
    broker = Mosquitto(directory / "broker", persistence=True, extra=BROKER_LIMITS, log_types="error warning")
    broker.start()
    sampler = Sampler().start()
    # One instance: a plain subscription survives the broker restart below (fleet/config.py: mqtt.group).
    fleet = FleetService(directory, broker.port, url, mqtt='group = ""\n')
    simulation: Simulation | None = None
    try:
        fleet.start()
        sampler.watch("broker", broker.process.pid)
        sampler.watch("cm_fleet", fleet.process.pid)
        total = duration + (40 if faults else 0)
        simulation = Simulation(directory, broker.port, devices, "--duration", str(total), "--alert-interval",
                                str(alert_interval), "--telemetry-interval", str(telemetry_interval),
                                "--drain-timeout", "120").start()
        sampler.watch("simulator", simulation.process.pid)
        assert eventually(lambda: "devices connected after" in simulation.read_log(), 300), simulation.read_log()[-2000:]
        connected_at = time.monotonic()
        rows0, bytes0 = _telemetry_rows(url), _database_bytes(database)
        time.sleep(duration)
        rows1, bytes1 = _telemetry_rows(url), _database_bytes(database)
        per_row = (bytes1 - bytes0) / max(1, rows1 - rows0)  # a raw telemetry record, its index and its WAL share
        steady = {"telemetry_stored_per_s": round((rows1 - rows0) / duration, 1),
                  "historian_bytes_per_telemetry_row": round(per_row),
                  # what a device sending every second adds per day, raw (the compactor folds it after the retention)
                  "historian_bytes_per_device_per_day": round(per_row * 86400 / telemetry_interval)}
        fault_log: list[dict[str, Any]] = []
        if faults:
            fault_log = _faults(broker, fleet, sampler, simulation)
        summary = simulation.wait(total + 600)
        steady["telemetry_sent_per_s"] = _sent_per_s(simulation.read_log())
        ended = time.monotonic()
        drained = eventually(lambda: audit(simulation.ledger(), stored_alerts(url)).clean(), 600)
        rows_final = _settled_rows(url)
        drain_s = round(time.monotonic() - ended, 1)
        result = audit(simulation.ledger(), stored_alerts(url))
        time.sleep(1.5)  # a last CPU sample of cm-fleet with its whole backlog stored
        fleet.stop()
        delivered = _fleet_counts(fleet.read_log())
    finally:
        resources = sampler.stop()
        if simulation is not None:
            simulation.kill()
        if fleet.running():
            fleet.kill()
        broker.stop()
    return {
        "devices": devices, "duration_s": duration, "telemetry_offered_per_s": round(devices / telemetry_interval, 1),
        "alert_interval_s": alert_interval, "faults": faults,
        "all_connected_s": summary["all_connected_s"], "connected_for_s": round(time.monotonic() - connected_at, 1),
        "alerts_sent": result.alerts_sent, "alerts_stored": result.alerts_stored, "alerts_lost": result.alerts_lost,
        "alerts_stored_twice": result.alerts_stored_twice, "alerts_drained": drained,
        "alert_latency_ms_p50": _percentile(result.latencies_ms, 50),
        "alert_latency_ms_p99": _percentile(result.latencies_ms, 99),
        "telemetry_sent": summary["tally"]["telemetry_sent"], "telemetry_stored": rows_final,
        "telemetry_delivered_to_cm_fleet": delivered.get("telemetry") if not faults else None,  # a SIGKILL loses its count
        "telemetry_dropped_by_devices": summary["tally"]["telemetry_dropped"],
        "backlog_drained_after_end_s": drain_s, **steady,
        "cm_fleet_cpu_us_per_message": _per_message(resources, "cm_fleet", rows_final + result.alerts_stored),
        "outages": summary["outages"], "fault_log": fault_log, "resources": resources,
        "fd_limit": summary["fd_limit"],
    }


def _faults(broker: Mosquitto, fleet: FleetService, sampler: Sampler, simulation: Simulation) -> list[dict[str, Any]]:
    """The broker restarted (persistence on), then cm-fleet SIGKILLed and restarted: each after the fleet is back."""
    log: list[dict[str, Any]] = []
    start = time.monotonic()
    broker.stop()
    broker.start()
    sampler.watch("broker", broker.process.pid)
    returned = time.monotonic()
    log.append({"fault": "broker_restart", "down_s": round(returned - start, 2)})
    eventually(lambda: "devices back" in simulation.read_log(), 300)
    log[-1]["all_devices_back_after_return_s"] = round(time.monotonic() - returned, 2)
    time.sleep(5)
    start = time.monotonic()
    connects = fleet.read_log().count("connected to ")
    fleet.kill()
    fleet.start(timeout=120)
    sampler.watch("cm_fleet", fleet.process.pid)
    eventually(lambda: fleet.read_log().count("connected to ") > connects, 120)  # its session resumed
    log.append({"fault": "fleet_sigkill", "back_after_s": round(time.monotonic() - start, 2)})
    return log


def _per_message(resources: dict[str, Any], name: str, messages: int) -> float | None:
    """CPU time per message stored: what one core can take, whatever else the machine was doing."""
    seconds = resources.get(name, {}).get("cpu_seconds")
    return round(seconds / messages * 1e6, 1) if seconds and messages else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000,5000,10000", help="comma-separated N, one run each")
    parser.add_argument("--duration", type=float, default=60.0, help="steady seconds measured per run")
    parser.add_argument("--alert-interval", type=float, default=60.0, help="each device's mean seconds between alerts")
    parser.add_argument("--telemetry-interval", type=float, default=1.0, help="each device's seconds between records")
    parser.add_argument("--faults", action="store_true", help="then restart the broker and SIGKILL cm-fleet")
    args = parser.parse_args()
    entries = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for devices in (int(n) for n in args.devices.split(",")):
        load = round(os.getloadavg()[0], 2)
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            entry = run(devices, args.duration, args.alert_interval, args.faults, Path(tmp), args.telemetry_interval)
        entry |= {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
                  "cpus": os.cpu_count(), "load_1min_before": load}
        print(json.dumps(entry), flush=True)
        entries.append(entry)
        RESULTS.write_text(json.dumps(entries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
