"""cm-fleet simulate against a real Mosquitto and a real `cm-fleet serve`: every alert the virtual devices send is
stored exactly once, also when the broker restarts, when cm-fleet is SIGKILLed and when every device reconnects
at once. The full-size runs (1,000 to 10,000 devices) are bench/bench_fleet.py's; these are their small versions.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from broker import Mosquitto, write_password_file
from fleet_helpers import FleetService, start_fleet
from simulation import Simulation, audit, stored_alerts
from waiting import eventually

from fleet.simulate import SimulationError, read_credentials

pytestmark = pytest.mark.waits


def _historian(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'historian.sqlite'}"


def _start_unshared_fleet(request, directory: Path, port: int, url: str) -> FleetService:
    """cm-fleet with a plain subscription (group ""): Debian's Mosquitto 2.0.11 does not restore a persistent
    session's shared subscription after its restart, so what the devices publish before cm-fleet subscribes again
    would be acknowledged with "no matching subscribers" and dropped (deploy/plant-group.md)."""
    return start_fleet(request, directory, port, url, mqtt='group = ""\n')


def _assert_stored_once(simulation: Simulation, url: str, timeout: float = 30.0) -> None:
    assert eventually(lambda: audit(simulation.ledger(), stored_alerts(url)).clean(), timeout), \
        audit(simulation.ledger(), stored_alerts(url))


def test_every_simulated_alert_is_stored_once_and_every_payload_passes(tmp_path, request):
    with Mosquitto(tmp_path / "broker") as broker:
        url = _historian(tmp_path)
        start_fleet(request, tmp_path, broker.port, url)
        simulation = Simulation(tmp_path, broker.port, 50, "--duration", "5", "--alert-interval", "2").start()
        summary = simulation.wait(60)
        tally = summary["tally"]
        assert summary["all_connected_s"] is not None and summary["alerts_pending"] == 0
        assert tally["alerts_sent"] >= 50 and tally["alerts_acked"] == tally["alerts_sent"]
        assert tally["alert_publishes"] == tally["alerts_sent"]  # no outage: each sent once
        _assert_stored_once(simulation, url)
        db = sqlite3.connect(url.removeprefix("sqlite://"))
        assert eventually(lambda: db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0] == tally["telemetry_sent"])
        assert db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0  # every payload met the schemas
        machines = db.execute("SELECT COUNT(*), SUM(status = 'offline'), SUM(state_json IS NOT NULL), "
                              "SUM(health_json IS NOT NULL) FROM machines").fetchone()
        assert machines == (50, 50, 50, 50)  # stopped cleanly: offline; each sent its state and health


@pytest.mark.parametrize("fault", ["broker_restart", "fleet_sigkill", "reconnect_storm"])
def test_faults_lose_no_alert_and_store_none_twice(tmp_path, request, fault):
    devices, options = 50, ["--alert-interval", "2", "--reconnect-min", "0.2", "--reconnect-max", "1.5"]
    if fault == "reconnect_storm":  # many devices, a narrow jitter window: they all come back at once
        devices, options = 300, ["--alert-interval", "10", "--reconnect-min", "0", "--reconnect-max", "0.3"]
    # 300 devices coming back send 900 retained messages at once: more than Mosquitto's default queue (1,000) for
    # cm-fleet's session holds while it too reconnects; a fleet's broker raises it (deploy/plant-group.md).
    with Mosquitto(tmp_path / "broker", persistence=True, extra="max_queued_messages 100000\n") as broker:
        url = _historian(tmp_path)
        start = start_fleet if fault == "fleet_sigkill" else _start_unshared_fleet
        fleet = start(request, tmp_path, broker.port, url)
        simulation = Simulation(tmp_path, broker.port, devices, "--duration", "6", *options).start()
        request.addfinalizer(simulation.kill)
        assert eventually(lambda: len(stored_alerts(url)) >= 10, 30), simulation.read_log()
        if fault == "fleet_sigkill":
            fleet.kill()  # mid-batch, unacknowledged: the broker keeps its session's messages
            time.sleep(2)  # alerts go on arriving at the broker meanwhile
            fleet.start()
        else:
            broker.stop()  # persistence on: the fleet's session and its queued alerts are saved
            time.sleep(0 if fault == "reconnect_storm" else 2)
            broker.start()
        summary = simulation.wait(90)
        assert summary["alerts_pending"] == 0
        if fault != "fleet_sigkill":
            assert len(summary["outages"]) == 1, summary
            assert summary["outages"][0]["devices_lost"] == devices
            assert summary["outages"][0]["all_back_s"] is not None  # every device back
        _assert_stored_once(simulation, url)


def test_credentials_are_read_per_device_and_used(tmp_path, request):
    plain = tmp_path / "devices.txt"
    plain.write_text("".join(f"creds-{i:05d}:secret-{i}\n" for i in range(3)))
    assert read_credentials(str(plain))["creds-00002"] == "secret-2"
    (tmp_path / "broken.txt").write_text("creds-00000 secret\n")
    with pytest.raises(SimulationError, match="line 1: expected device_id:password") as raised:
        read_credentials(str(tmp_path / "broken.txt"))
    assert "secret" not in str(raised.value)
    passwords = write_password_file(tmp_path / "passwd", dict(line.split(":") for line in plain.read_text().split()))
    config = "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file " + str(passwords) + "\n"
    with Mosquitto(tmp_path / "broker", config=config) as broker:
        simulation = Simulation(tmp_path, broker.port, 3, "--duration", "1", "--credentials", str(plain), name="creds")
        assert simulation.start().wait(30)["all_connected_s"] is not None
