"""Helpers for the fleet tests: payloads built by the agent's own code (edge.mqtt.payloads), a historian on
SQLite or on a private PostgreSQL cluster, and `cm-fleet serve` as a subprocess.

    from fleet_helpers import FleetService, contract_alert, contract_state, contract_telemetry
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from postgres import PostgresCluster
from waiting import eventually

from edge.mqtt.payloads import ModelRef, alert, state, telemetry
from edge.scoring.detector import State, Transition
from edge.scoring.reading import Reading
from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian

BIN = Path(sys.executable).parent
CHANNELS = ("bearing1", "bearing2")
MODEL = ModelRef("test-model", "ab" * 32)
T0_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
STATES = (State.NORMAL, State.WARNING, State.ALARM)


def reading(i: int, time_us: int | None = None, state_: State = State.NORMAL) -> Reading:
    score = 0.01 * (i % 50)
    return Reading(capture_time_us=T0_US + i * 1_000_000 if time_us is None else time_us, snapshot=i,
                   features=np.array([0.1 + i * 0.001, 0.2]), score=score,
                   channel_errors=np.array([score, score / 2]), state=state_, reason=None)


def contract_alert(device_id: str, i: int) -> dict[str, Any]:
    """The i-th alert of a device, as the agent builds it: state transitions in turn, one second apart."""
    current, previous = STATES[(i + 1) % 3], STATES[i % 3]
    return alert(device_id, Transition(current, previous, None), reading(i, state_=current), CHANNELS, (0.2, 0.4), MODEL)


def contract_state(device_id: str, i: int, since_i: int = 0) -> dict[str, Any]:
    return state(device_id, reading(i, state_=STATES[i % 3]), T0_US + since_i * 1_000_000, CHANNELS, MODEL)


def contract_telemetry(device_id: str, i: int, time_us: int | None = None) -> dict[str, Any]:
    counters = dict.fromkeys(("frames", "crc_errors", "malformed", "resyncs", "sequence_gaps", "bytes_dropped",
                              "snapshots", "snapshots_discarded", "alerts_pending", "telemetry_dropped"), 0)
    return telemetry(device_id, reading(i, time_us), CHANNELS, counters)


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as cluster:
        yield cluster


def historian_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A fresh, empty database of `backend`; the PostgreSQL cluster is started once per module, when asked for."""
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'historian.sqlite'}"
    return request.getfixturevalue("postgres_cluster").create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def historian(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Historian]:
    """The same tests on both backends: an empty historian, migrated to the current schema."""
    opened = open_historian(HistorianConfig(url=historian_url(request, request.param, tmp_path)))
    yield opened
    opened.close()


class FleetService:
    """`cm-fleet serve` in a subprocess, its log in `directory`; stoppable (SIGTERM) or killable (SIGKILL).
    `mqtt` adds lines to its [mqtt] table (a username, a password file), `extra` adds tables after it."""

    def __init__(self, directory: Path, broker_port: int, historian_url: str, extra: str = "", mqtt: str = "") -> None:
        self.directory = directory
        self.log = directory / "fleet.log"
        self.config = directory / "fleet.toml"
        self.config.write_text(f"""[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "cm-fleet-test"
reconnect_min = 0.2
reconnect_max = 1.0
{mqtt}[historian]
url = "{historian_url}"
{extra}""")
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> FleetService:
        with self.log.open("ab") as log:
            # README.md's command line, run in the directory that holds this service's fleet.toml.
            command = ["cm-fleet", "serve", "--config", "fleet.toml"]
            self.process = subprocess.Popen([BIN / command[0], *command[1:]], cwd=self.config.parent, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.starts += 1
        process = self.process
        # Connected: its session and subscriptions are in place.
        assert eventually(lambda: self.read_log().count("connected to ") >= self.starts or process.poll() is not None,
                          timeout), f"cm-fleet not connected after {timeout} s:\n{self.read_log()}"
        assert process.poll() is None, f"cm-fleet exited ({process.returncode}):\n{self.read_log()}"
        return self

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        self.process.wait(30)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_fleet(request: pytest.FixtureRequest, directory: Path, broker_port: int, historian_url: str,
                extra: str = "", mqtt: str = "") -> FleetService:
    """`cm-fleet serve` started for this test and killed at its teardown, whether it passed or not."""
    service = FleetService(directory, broker_port, historian_url, extra, mqtt)
    request.addfinalizer(lambda: service.kill() if service.running() else None)
    return service.start()
