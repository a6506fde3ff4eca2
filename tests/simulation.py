"""`cm-fleet simulate` as a subprocess, and the audit of its alerts against the historian: sent = stored, none
lost, none stored twice. Shared by the fleet's scale tests and bench/bench_fleet.py.

    from simulation import Simulation, audit
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


class Simulation:
    """N virtual devices against the broker on `port`, writing their summary and alert ledger in `directory`."""

    def __init__(self, directory: Path, port: int, devices: int, *options: str, name: str = "sim") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.summary_path = directory / f"{name}-summary.json"
        self.ledger_path = directory / f"{name}-ledger.jsonl"
        self.log_path = directory / f"{name}.log"
        self.command = [str(BIN / "cm-fleet"), "simulate", "--devices", str(devices), "--port", str(port),
                        "--id-prefix", name, "--summary", str(self.summary_path), "--ledger", str(self.ledger_path),
                        *options]
        self.process: subprocess.Popen | None = None

    def start(self) -> Simulation:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        """SIGTERM: stop making alerts, wait for the pending ones' PUBACKs, disconnect."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"cm-fleet simulate still running after {timeout} s:\n{self.read_log()[-3000:]}") from None
        assert code == 0, f"cm-fleet simulate exited {code}:\n{self.read_log()[-3000:]}"
        return json.loads(self.summary_path.read_text())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ledger(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ledger_path.read_text().splitlines()]


def stored_alerts(url: str) -> list[tuple[str, str, int, str, str, int]]:
    """(id, device_id, time_us, state, previous_state, received_us) of every alert in the historian at `url`."""
    query = "SELECT id, device_id, time_us, state, previous_state, received_us FROM alerts"
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as db:
            return list(db.execute(query))
    import psycopg

    with psycopg.connect(url) as db:
        return list(db.execute(query))


@dataclass(frozen=True)
class Audit:
    alerts_sent: int
    alerts_stored: int  # of those sent
    alerts_lost: int
    alerts_stored_twice: int  # rows beyond the first for one transition (device, time, states), or for one id
    latencies_ms: list[float]  # created on the device -> received by the historian, per alert stored

    def clean(self) -> bool:
        return self.alerts_lost == 0 and self.alerts_stored_twice == 0 and self.alerts_stored == self.alerts_sent


def audit(ledger: list[dict[str, Any]], rows: list[tuple[str, str, int, str, str, int]]) -> Audit:
    created = {entry["id"]: entry["created_us"] for entry in ledger}
    stored = {row[0]: row for row in rows}
    transitions = {row[1:5] for row in rows}
    found = [alert_id for alert_id in created if alert_id in stored]
    return Audit(alerts_sent=len(created), alerts_stored=len(found), alerts_lost=len(created) - len(found),
                 alerts_stored_twice=(len(rows) - len(stored)) + (len(stored) - len(transitions)),
                 latencies_ms=sorted((stored[a][5] - created[a]) / 1000 for a in found))
